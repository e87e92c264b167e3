//! The modes the server runs in, defined once.
//!
//! [`every_mode!`] is the table of modes that every test of the `modes`
//! topic runs against; the consts of the same names are the table's rows,
//! and every other topic takes its modes from them (a variant, such as a
//! prefork master with three serial workers, is a row with other `args`:
//! `Mode { args: &[...], ..PREFORK_SERIAL }`).
//!
//! A row is `module / CONST: Mode { name, concurrent, forks, args }`:
//!
//! - `name`: the `--mode` value (also checked in the start-up line);
//! - `concurrent`: serves clients at once; `true` adds the tests that need
//!   it (200 simultaneous clients, an idle client that blocks nobody);
//! - `forks`: has child processes; `true` adds the kill -9 test (children
//!   must die with the server);
//! - `args`: extra flags for every server of the mode.
//!
//! `concurrent` and `forks` must be the literals `true` or `false`: they
//! choose at compile time which tests exist for a mode (a test that cannot
//! apply to a mode is absent, not silently passing). Adding a mode is one
//! row here.

/// One concurrency strategy of the server, as the tests run it.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Value of `--mode`, also expected in the start-up line.
    pub name: &'static str,
    /// Serves several clients at once (everything but serial and
    /// prefork with serial workers).
    pub concurrent: bool,
    /// Extra flags for every server of this mode.
    pub args: &'static [&'static str],
}

/// Calls `$each! { module, CONST, name, concurrent, forks, args }` once per
/// row of the table of modes (the one place that reads a row).
macro_rules! every_mode {
    ($each:ident) => {
        $crate::support::modes::every_mode! { @rows $each
            serial / SERIAL: Mode { name: "serial", concurrent: false, forks: false, args: &[] },
            fork / FORK: Mode { name: "fork", concurrent: true, forks: true, args: &[] },
            thread / THREAD: Mode { name: "thread", concurrent: true, forks: false, args: &[] },
            pool / POOL: Mode { name: "pool", concurrent: true, forks: false, args: &[] },
            event / EVENT: Mode { name: "event", concurrent: true, forks: false, args: &[] },
            reactor / REACTOR: Mode { name: "reactor", concurrent: true, forks: false, args: &["--threads", "2"] },
            uring / URING: Mode { name: "uring", concurrent: true, forks: false, args: &[] },
            // Two rings on two threads, each with its own SO_REUSEPORT listener.
            uring_rings / URING_RINGS: Mode { name: "uring", concurrent: true, forks: false, args: &["--threads", "2"] },
            prefork_event / PREFORK_EVENT: Mode {
                name: "prefork", concurrent: true, forks: true, args: &["--workers", "2", "--worker", "event"]
            },
            // Serial workers serve one client each: at most --workers at once.
            prefork_serial / PREFORK_SERIAL: Mode {
                name: "prefork", concurrent: false, forks: true, args: &["--workers", "6", "--worker", "serial"]
            },
            prefork_thread / PREFORK_THREAD: Mode {
                name: "prefork", concurrent: true, forks: true, args: &["--workers", "2", "--worker", "thread"]
            },
            prefork_pool / PREFORK_POOL: Mode {
                name: "prefork", concurrent: true, forks: true, args: &["--workers", "2", "--worker", "pool"]
            },
            prefork_uring / PREFORK_URING: Mode {
                name: "prefork", concurrent: true, forks: true, args: &["--workers", "2", "--worker", "uring"]
            },
            prefork_reuseport / PREFORK_REUSEPORT: Mode {
                name: "prefork",
                concurrent: true,
                forks: true,
                args: &["--workers", "2", "--worker", "event", "--reuseport"]
            },
            // The same table with the echo written as a coroutine
            // (`--handler async`): every case again, every strategy.
            serial_async / SERIAL_ASYNC: Mode {
                name: "serial", concurrent: false, forks: false, args: &["--handler", "async"]
            },
            fork_async / FORK_ASYNC: Mode { name: "fork", concurrent: true, forks: true, args: &["--handler", "async"] },
            thread_async / THREAD_ASYNC: Mode {
                name: "thread", concurrent: true, forks: false, args: &["--handler", "async"]
            },
            pool_async / POOL_ASYNC: Mode { name: "pool", concurrent: true, forks: false, args: &["--handler", "async"] },
            event_async / EVENT_ASYNC: Mode {
                name: "event", concurrent: true, forks: false, args: &["--handler", "async"]
            },
            reactor_async / REACTOR_ASYNC: Mode {
                name: "reactor", concurrent: true, forks: false, args: &["--threads", "2", "--handler", "async"]
            },
            prefork_event_async / PREFORK_EVENT_ASYNC: Mode {
                name: "prefork",
                concurrent: true,
                forks: true,
                args: &["--workers", "2", "--worker", "event", "--handler", "async"]
            },
            prefork_serial_async / PREFORK_SERIAL_ASYNC: Mode {
                name: "prefork",
                concurrent: false,
                forks: true,
                args: &["--workers", "6", "--worker", "serial", "--handler", "async"]
            },
            prefork_thread_async / PREFORK_THREAD_ASYNC: Mode {
                name: "prefork",
                concurrent: true,
                forks: true,
                args: &["--workers", "2", "--worker", "thread", "--handler", "async"]
            },
            prefork_pool_async / PREFORK_POOL_ASYNC: Mode {
                name: "prefork",
                concurrent: true,
                forks: true,
                args: &["--workers", "2", "--worker", "pool", "--handler", "async"]
            },
            prefork_reuseport_async / PREFORK_REUSEPORT_ASYNC: Mode {
                name: "prefork",
                concurrent: true,
                forks: true,
                args: &["--workers", "2", "--worker", "event", "--reuseport", "--handler", "async"]
            },
        }
    };
    (@rows $each:ident $(
        $id:ident / $konst:ident : Mode {
            name: $name:literal,
            concurrent: $concurrent:tt,
            forks: $forks:tt,
            args: $args:expr $(,)?
        }
    ),* $(,)?) => {
        $( $each! { $id, $konst, $name, $concurrent, $forks, $args } )*
    };
}
pub(crate) use every_mode;

/// Tests of a topic, one per row of the table of modes, for the common
/// shapes (a topic with its own needs calls [`every_mode!`] itself):
///
/// - `per_mode!(case_a, case_b)`: `mod <row> { #[test] fn case_a() {
///   super::case_a(&ROW) } ... }` beside the cases, so
///   `cargo test --test e2e proxy::uring::case_a` runs one;
/// - `per_mode!(module => case)`: `mod module { #[test] fn <row>() {
///   super::case(&ROW) } ... }`, so `operations::upgrade::uring` runs one;
/// - `per_mode!(=> case)`: `#[test] fn <row>() { case(&ROW) }` right
///   there, so `signals::uring` runs one.
macro_rules! per_mode {
    (=> $case:ident) => {
        macro_rules! row {
            ($id:ident, $konst:ident, $name:literal, $concurrent:tt, $forks:tt, $args:expr) => {
                #[test]
                fn $id() {
                    $case(&crate::support::modes::$konst)
                }
            };
        }
        crate::support::modes::every_mode!(row);
    };
    ($module:ident => $case:ident) => {
        mod $module {
            macro_rules! row {
                ($id:ident, $konst:ident, $name:literal, $concurrent:tt, $forks:tt, $args:expr) => {
                    #[test]
                    fn $id() {
                        super::$case(&crate::support::modes::$konst)
                    }
                };
            }
            crate::support::modes::every_mode!(row);
        }
    };
    ($($case:ident),+ $(,)?) => {
        macro_rules! row {
            ($id:ident, $konst:ident, $name:literal, $concurrent:tt, $forks:tt, $args:expr) => {
                mod $id {
                    $(
                        #[test]
                        fn $case() {
                            super::$case(&crate::support::modes::$konst)
                        }
                    )+
                }
            };
        }
        crate::support::modes::every_mode!(row);
    };
}
pub(crate) use per_mode;

/// The `pub const` of one row.
macro_rules! mode_const {
    ($id:ident, $konst:ident, $name:literal, $concurrent:tt, $forks:tt, $args:expr) => {
        #[doc = concat!("The `", stringify!($id), "` row of [`every_mode!`].")]
        pub const $konst: Mode = Mode { name: $name, concurrent: $concurrent, args: $args };
    };
}
every_mode!(mode_const);

/// The prefork master with no flags of its own: each prefork test chooses
/// `--workers` and `--worker`.
pub const PREFORK: Mode = Mode { name: "prefork", concurrent: true, args: &[] };
