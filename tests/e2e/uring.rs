//! The `uring` strategy's own cases (the mode table runs every common case
//! against it): where io_uring is not permitted it refuses to start, exit 1,
//! with one line that names the cause and the way out (seccomp, as a
//! container runtime installs it, is the case made here: `no_uring` denies
//! io_uring_setup(2) with each errno the kernel or a filter gives); and a
//! coroutine handler, which it cannot drive, is a usage error.

use crate::support::modes::{Mode, EVENT, PREFORK_URING, URING};
use crate::support::net::roundtrip;
use crate::support::server::Launch;

/// Each errno with a word its line must name.
const CAUSES: [(i32, &str); 3] =
    [(libc::EPERM, "seccomp"), (libc::ENOSYS, "no io_uring"), (libc::ENOMEM, "RLIMIT_MEMLOCK")];

fn refuses_to_start(mode: &Mode) {
    for (errno, cause) in CAUSES {
        let done = Launch::new(mode, &[]).deny_io_uring(errno).run_to_exit();
        let lines: Vec<&str> = done.stderr.lines().filter(|l| !l.contains("running as root")).collect();
        assert_eq!(done.status.code(), Some(1), "{} with io_uring_setup failing ({errno}): {}", mode.name, done.stderr);
        assert!(
            lines.len() == 1
                && lines[0].contains("io_uring unavailable")
                && lines[0].contains(cause)
                && lines[0].contains("--mode event"),
            "{} with io_uring_setup failing ({errno}): want one line naming {cause:?} and --mode event, got:\n{}",
            mode.name,
            done.stderr
        );
        assert!(!done.stdout.contains("listening"), "{}: reported listening: {}", mode.name, done.stdout);
    }
}

#[test]
fn uring_without_io_uring_exits_1_naming_the_cause() {
    refuses_to_start(&URING);
}

/// The master probes once, before any worker: no worker boots to fail.
#[test]
fn prefork_uring_without_io_uring_exits_1_naming_the_cause() {
    refuses_to_start(&PREFORK_URING);
}

/// The filter denies io_uring only: the same wrapper runs an event server,
/// which serves (so the refusals above are uring's, not the wrapper's).
#[test]
fn the_filter_leaves_the_event_loop_serving() {
    let server = Launch::new(&EVENT, &[]).deny_io_uring(libc::EPERM).start();
    let mut s = server.connect();
    roundtrip(&mut s, b"served without io_uring").unwrap();
}

#[test]
fn a_coroutine_handler_is_a_usage_error() {
    for mode in [URING, PREFORK_URING] {
        let done = Launch::new(&mode, &["--handler", "async"]).run_to_exit();
        assert_eq!(done.status.code(), Some(2), "{} --handler async: {}", mode.name, done.stderr);
        assert!(
            done.stderr.contains("--handler async is not supported with --mode uring"),
            "{} --handler async: {}",
            mode.name,
            done.stderr
        );
    }
}
