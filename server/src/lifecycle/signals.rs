//! The signal table, written once: for every signal an operator, a
//! terminal or the kernel commonly sends, what it means in each process
//! role. README's signal table is rendered from [`TABLE`] (a unit test keeps
//! them equal). No signal in the table kills or stops a server: each one
//! either has a meaning or is handled and logged.
//!
//! Mechanics: [`Signals::install`] sets every disposition the role's column
//! asks for (a counting handler, in `sys::signal`, for anything handled),
//! and opens a self-pipe that the handler writes a byte to. The one loop
//! per process that polls the pipe calls [`Signals::dispatch`], which takes
//! the counts and applies them: stops move the [`Shutdown`] phase, the
//! supervisor's signals come back as [`Notices`], SIGUSR1 calls the
//! program's [`ReopenHook`] (its log file; logrotate's convention), and
//! the rest are logged (rate-limited) with what they mean here. Other
//! threads run with every signal masked ([`spawn_masked`]), so signals
//! always reach the polling thread and never interrupt a worker.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::fcntl::OFlag;
pub(crate) use nix::sys::signal::Signal;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

use super::shutdown::Shutdown;
use crate::sys::signal::{self as raw, Disposition};
use crate::sys::BlockedSignals;

/// Which process of a server this is; a column of [`TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The one process of serial, thread, pool, event and reactor mode.
    Single,
    /// The fork-per-connection parent.
    ForkParent,
    /// A child serving one connection (fork mode).
    ForkChild,
    /// The prefork master.
    Master,
    /// A prefork worker.
    Worker,
}

#[cfg(test)]
impl Role {
    const ALL: [Role; 5] = [Role::Single, Role::ForkParent, Role::ForkChild, Role::Master, Role::Worker];

    /// The column heading in README's table.
    pub(crate) fn heading(self) -> &'static str {
        match self {
            Role::Single => "serial, thread, pool, event, reactor, uring",
            Role::ForkParent => "fork: parent",
            Role::ForkChild => "fork: child",
            Role::Master => "prefork: master",
            Role::Worker => "prefork: worker",
        }
    }
}

impl Role {
    fn column(self) -> usize {
        self as usize
    }
}

/// What a signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meaning {
    /// Graceful stop: stop accepting, drain until `--grace`.
    Stop,
    /// The first is a graceful stop, the second an immediate one.
    Interrupt,
    /// Immediate stop.
    StopNow,
    /// Reap exited children.
    Reap,
    /// Rolling restart of the workers.
    Reload,
    /// One worker more.
    MoreWorkers,
    /// One worker fewer.
    FewerWorkers,
    /// A binary upgrade: start the new binary, hand it the listeners, drain
    /// once it serves.
    Upgrade,
    /// Call the program's [`ReopenHook`] (it reopens its log file).
    Reopen,
    /// [`Reopen`](Meaning::Reopen) here, and forward the signal to every
    /// child, so that one signal to a supervisor reaches every process.
    ReopenForward,
    /// Handled, logged at info with this text (`{mode}` is replaced by the
    /// mode's name), and otherwise ignored.
    Noted(&'static str),
    /// Ignored by the kernel (`SIG_IGN`), not logged.
    Ignored,
    /// Not handled: the default action (which for these is to ignore).
    Default,
}

use Meaning::*;

/// Every signal handled, by role: `[Single, ForkParent, ForkChild, Master, Worker]`.
pub(crate) const TABLE: [(Signal, [Meaning; 5]); 12] = [
    (Signal::SIGTERM, [Stop, Stop, Stop, Stop, Stop]),
    (Signal::SIGINT, [Interrupt, Interrupt, Interrupt, Interrupt, Interrupt]),
    (Signal::SIGQUIT, [StopNow, StopNow, StopNow, StopNow, StopNow]),
    (
        Signal::SIGHUP,
        [
            Noted("nothing to reload in {mode} mode"),
            Noted("nothing to reload in fork mode"),
            Noted("ignored by a connection's process"),
            Reload,
            Noted("ignored by a worker (the master reloads)"),
        ],
    ),
    (
        Signal::SIGTTIN,
        [
            Noted("no workers to add in {mode} mode"),
            Noted("no workers to add in fork mode"),
            Noted("ignored by a connection's process"),
            MoreWorkers,
            Noted("ignored by a worker (the master adds workers)"),
        ],
    ),
    (
        Signal::SIGTTOU,
        [
            Noted("no workers to remove in {mode} mode"),
            Noted("no workers to remove in fork mode"),
            Noted("ignored by a connection's process"),
            FewerWorkers,
            Noted("ignored by a worker (the master removes workers)"),
        ],
    ),
    (Signal::SIGWINCH, [Noted("terminal resized: nothing to do"); 5]),
    (Signal::SIGUSR1, [Reopen, ReopenForward, Reopen, ReopenForward, Reopen]),
    (
        Signal::SIGUSR2,
        [
            Upgrade,
            Upgrade,
            Noted("ignored by a connection's process (the parent upgrades)"),
            Upgrade,
            Noted("ignored by a worker (the master upgrades)"),
        ],
    ),
    (Signal::SIGALRM, [Noted("no meaning in {mode} mode: ignored"); 5]),
    (Signal::SIGPIPE, [Ignored; 5]),
    (Signal::SIGCHLD, [Default, Reap, Default, Reap, Default]),
];

/// What [`Signals::dispatch`] found for a supervisor to act on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Notices {
    /// Rolling restarts asked for.
    pub(crate) reload: u32,
    /// Workers to add.
    pub(crate) more: u32,
    /// Workers to remove.
    pub(crate) fewer: u32,
    /// A child exited.
    pub(crate) reap: bool,
    /// Binary upgrades asked for.
    pub(crate) upgrade: u32,
    /// SIGUSR1 came: forward it to every child.
    pub(crate) reopen: bool,
}

/// What SIGUSR1 does in every process of a server: a function of the
/// program's (the `server` binary reopens its `--log-file`), called on the
/// thread that dispatches signals, between two polls.
#[derive(Clone)]
pub(crate) struct ReopenHook(pub(crate) Arc<dyn Fn() -> io::Result<()> + Send + Sync>);

impl std::fmt::Debug for ReopenHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReopenHook")
    }
}

/// How often one signal's note is logged at most.
const NOTE_INTERVAL: Duration = Duration::from_secs(1);

/// The process's signals: the read end of the self-pipe, the role, and the
/// rate limit of the notes. One per process.
#[derive(Debug)]
pub(crate) struct Signals {
    read: OwnedFd,
    role: Role,
    mode: &'static str,
    /// Per table row: when its note was last logged, and how many arrived since.
    noted: [(Option<Instant>, u64); TABLE.len()],
    /// The program's SIGUSR1 hook, if it registered one.
    reopen: Option<ReopenHook>,
}

impl Signals {
    /// Sets every signal's disposition for `role` and opens a new self-pipe,
    /// then lets the table's signals in: a process started with them
    /// blocked (a binary upgrade's successor is, see [`handled`]) gets the
    /// ones that came before, now that they have a meaning. `mode` names
    /// the mode in notes.
    pub(crate) fn install(role: Role, mode: &'static str) -> io::Result<Signals> {
        let installed = Signals::install_over(role, mode, None)?;
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled()), None).map_err(io::Error::from)?;
        Ok(installed)
    }

    /// [`Signals::install`] in a process whose dispositions are those of
    /// `inherited` (a forked child): only the signals whose disposition
    /// differs are set (a fork child would otherwise make a dozen
    /// sigaction calls to set what it inherited).
    fn install_over(role: Role, mode: &'static str, inherited: Option<Role>) -> io::Result<Signals> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        raw::set_pipe(write);
        let disposition = |meanings: &[Meaning; 5], role: Role| match meanings[role.column()] {
            Default => Disposition::Default,
            Ignored => Disposition::Ignore,
            _ => Disposition::Count,
        };
        for (sig, meanings) in &TABLE {
            let d = disposition(meanings, role);
            if inherited.is_some_and(|from| disposition(meanings, from) == d) {
                continue;
            }
            raw::set_disposition(*sig, d)?;
        }
        Ok(Signals { read, role, mode, noted: [(None, 0); TABLE.len()], reopen: None })
    }

    /// Registers what SIGUSR1 calls (kept in forked children).
    pub(crate) fn set_reopen(&mut self, reopen: ReopenHook) {
        self.reopen = Some(reopen);
    }

    /// In a freshly forked child (signals still blocked by `sys::fork`):
    /// drop the parent's pipe, forget signals counted before the fork, set
    /// the child's own dispositions and pipe, and only then let signals in.
    pub(crate) fn reinstall_in_child(self, role: Role, blocked: BlockedSignals) -> io::Result<Signals> {
        let (mode, reopen, inherited) = (self.mode, self.reopen.clone(), self.role);
        drop(self);
        raw::clear();
        let installed = Signals::install_over(role, mode, Some(inherited)).map(|mut s| {
            s.reopen = reopen;
            s
        });
        blocked.release();
        installed
    }

    /// Registers the read end in a poll.
    pub(crate) fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut SourceFd(&self.read.as_raw_fd()), token, Interest::READABLE)
    }

    /// The read end, to poll it directly.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Takes every signal that arrived since the last call and applies it:
    /// SIGTERM and a first SIGINT start a graceful stop of `shutdown`, a
    /// second SIGINT or a SIGQUIT an immediate one; the supervisor's signals
    /// are returned; notes are logged. Empties the pipe first, so a signal
    /// arriving meanwhile wakes the poll again.
    pub(crate) fn dispatch(&mut self, shutdown: &Shutdown) -> Notices {
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(&self.read, &mut buf) {
            if n < buf.len() {
                break;
            }
        }
        let mut notices = Notices::default();
        if !raw::pending(u32::MAX) {
            return notices;
        }
        // Immediate stops first, so that "SIGTERM then SIGQUIT" read in one
        // batch still ends immediately.
        for (row, (sig, meanings)) in TABLE.iter().enumerate() {
            let meaning = meanings[self.role.column()];
            if matches!(meaning, Default | Ignored) {
                continue;
            }
            let n = raw::take(*sig);
            if n == 0 {
                continue;
            }
            match meaning {
                Stop => {
                    shutdown.drain();
                }
                Interrupt => {
                    for _ in 0..n {
                        if !shutdown.drain() {
                            shutdown.stop_now();
                        }
                    }
                }
                StopNow => shutdown.stop_now(),
                Reap => notices.reap = true,
                Reload => notices.reload += n,
                MoreWorkers => notices.more += n,
                FewerWorkers => notices.fewer += n,
                Upgrade => notices.upgrade += n,
                Reopen | ReopenForward => {
                    self.reopen(row, *sig, n);
                    notices.reopen |= meaning == ReopenForward;
                }
                Noted(text) => self.note(row, *sig, text, n),
                Ignored | Default => {}
            }
        }
        notices
    }

    /// Calls the reopen hook once for `n` signals (they coalesce: one
    /// reopen serves them all); logs the outcome, successes rate-limited.
    fn reopen(&mut self, row: usize, sig: Signal, n: u32) {
        match self.reopen.as_ref().map(|r| (r.0)()) {
            None => self.note(row, sig, "nothing to reopen", n),
            Some(Ok(())) => self.note(row, sig, "log file reopened", n),
            Some(Err(e)) => log::warn!("{sig}: reopening the log file failed: {e}"),
        }
    }

    fn note(&mut self, row: usize, sig: Signal, text: &str, n: u32) {
        let (last, since) = &mut self.noted[row];
        *since += u64::from(n);
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= NOTE_INTERVAL) {
            let text = text.replace("{mode}", self.mode);
            let more = *since - 1;
            if more > 0 {
                log::info!("{sig}: {text} ({more} more since the last report)");
            } else {
                log::info!("{sig}: {text}");
            }
            *last = Some(now);
            *since = 0;
        }
    }
}

/// Every signal of the table: what a process about to be started as a
/// successor has blocked until its handlers are in place (its default
/// action for SIGHUP, SIGUSR1 or SIGTTIN would end or stop it in between).
pub(crate) fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for (sig, _) in &TABLE {
        set.add(*sig);
    }
    set
}

/// Records a stop as if `sig` had arrived (for a stop asked for from inside
/// the process: it takes exactly the path of the real signal).
pub(crate) fn raise(sig: Signal) {
    raw::deliver(sig);
}

/// Spawns a thread with every signal blocked, so signals always go to the
/// thread that polls for them and never interrupt a worker.
pub(crate) fn spawn_masked<F, T>(name: String, stack: usize, f: F) -> io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old)).map_err(io::Error::from)?;
    let spawned = std::thread::Builder::new().name(name).stack_size(stack).spawn(f);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).map_err(io::Error::from)?;
    spawned
}

/// README's signal table, rendered from [`TABLE`].
#[cfg(test)]
fn readme_table() -> String {
    let mut out = String::from("| signal |");
    for r in Role::ALL {
        out.push_str(&format!(" {} |", r.heading()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(Role::ALL.len()));
    out.push('\n');
    for (sig, meanings) in &TABLE {
        out.push_str(&format!("| {sig} |"));
        for r in Role::ALL {
            let text = match meanings[r.column()] {
                Stop => "graceful stop".to_string(),
                Interrupt => "graceful stop; a second one: immediate stop".to_string(),
                StopNow => "immediate stop".to_string(),
                Reap => "reap children".to_string(),
                Reload => "rolling restart of the workers".to_string(),
                MoreWorkers => "one worker more".to_string(),
                FewerWorkers => "one worker fewer (never below 1)".to_string(),
                Upgrade => "binary upgrade: start the new binary with the listeners, drain once it serves".to_string(),
                Reopen => "reopen the log file (`--log-file`)".to_string(),
                ReopenForward => "reopen the log file (`--log-file`), and forward to every child".to_string(),
                Noted(t) => format!("logged: \"{}\"", t.replace("{mode}", "<mode>")),
                Ignored => "ignored (`SIG_IGN`: writes to a closed peer fail with `EPIPE`)".to_string(),
                Default => "default (ignored)".to_string(),
            };
            out.push_str(&format!(" {text} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_shows_the_signal_table_of_the_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = readme_table();
        assert!(readme.contains(&table), "README.md must contain the signal table of the code:\n\n{table}");
    }

    #[test]
    fn every_role_stops_on_term_int_quit_and_nothing_else_stops() {
        for r in Role::ALL {
            for (sig, meanings) in &TABLE {
                let m = meanings[r.column()];
                let stops = matches!(m, Stop | Interrupt | StopNow);
                let expect = matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT);
                assert_eq!(stops, expect, "{sig} in {r:?}: {m:?}");
                // The default action of every signal left at Default is to ignore it.
                if m == Default {
                    assert_eq!(*sig, Signal::SIGCHLD, "{sig} in {r:?} would keep its default action");
                }
            }
        }
    }

    #[test]
    fn sigusr1_reopens_in_every_role_and_supervisors_forward_it() {
        let (_, meanings) = TABLE.iter().find(|(sig, _)| *sig == Signal::SIGUSR1).expect("SIGUSR1 row");
        for r in Role::ALL {
            let supervises = matches!(r, Role::ForkParent | Role::Master);
            let want = if supervises { ReopenForward } else { Reopen };
            assert_eq!(meanings[r.column()], want, "SIGUSR1 in {r:?}");
        }
    }
}
