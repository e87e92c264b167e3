//! The child supervisor, written once for fork mode (a child per
//! connection) and prefork (a worker per position): the live children with
//! what the parent keeps beside each, reaping (a `waitpid(-1, WNOHANG)`
//! loop on SIGCHLD: signals coalesce, so one SIGCHLD may stand for many
//! exits), exit statuses decoded once ([`Ended`]), and per-child deadlines
//! after which a child told to stop is killed.
//!
//! The child's side is [`die_with_parent`].

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;

/// How long a child told to quit (SIGQUIT) has before it is killed.
pub(crate) const QUIT_GRACE: Duration = Duration::from_secs(1);

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed(Signal),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Killed(nix::sys::signal::Signal::SIGKILL) => {
                f.write_str("killed by SIGKILL (the kernel OOM killer does this; check dmesg)")
            }
            Ended::Killed(sig) => write!(f, "killed by {sig}"),
        }
    }
}

/// A child that was reaped.
#[derive(Debug)]
pub(crate) struct Exit<T> {
    /// Its pid.
    pub(crate) pid: Pid,
    /// What the parent kept beside it.
    pub(crate) info: T,
    /// How it ended.
    pub(crate) ended: Ended,
    /// Whether the parent had told it to stop.
    pub(crate) told: bool,
}

/// A live child.
#[derive(Debug)]
pub(crate) struct Child<T> {
    /// Its pid.
    pub(crate) pid: Pid,
    /// What the parent keeps beside it.
    pub(crate) info: T,
    /// When it is killed, once it was told to stop.
    kill_at: Option<Instant>,
    killed: bool,
}

impl<T> Child<T> {
    /// Sends `sig` and makes sure it is killed by `kill_at`.
    pub(crate) fn stop(&mut self, sig: Signal, kill_at: Instant) {
        let _ = kill(self.pid, sig);
        self.kill_at = Some(self.kill_at.map_or(kill_at, |t| t.min(kill_at)));
    }

    /// Whether it was told to stop.
    pub(crate) fn told(&self) -> bool {
        self.kill_at.is_some()
    }
}

/// The live children of one parent, in the order they were started.
#[derive(Debug)]
pub(crate) struct Children<T> {
    live: Vec<Child<T>>,
}

impl<T> Default for Children<T> {
    fn default() -> Self {
        Children { live: Vec::new() }
    }
}

impl<T> Children<T> {
    /// No children.
    pub(crate) fn new() -> Children<T> {
        Children::default()
    }

    /// How many are alive (not yet reaped).
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is.
    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The live children, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Child<T>> {
        self.live.iter()
    }

    /// The live children, oldest first, to stop some.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Child<T>> {
        self.live.iter_mut()
    }

    /// Records a new child.
    pub(crate) fn add(&mut self, pid: Pid, info: T) {
        self.live.push(Child { pid, info, kill_at: None, killed: false });
    }

    /// Reaps one child that has exited, if any has: call until `None`, and
    /// zombies never linger. (One at a time, so that reaping allocates
    /// nothing: in fork mode each heap page the parent writes while a child
    /// shares it is a copy-on-write fault.)
    pub(crate) fn reap(&mut self) -> Option<Exit<T>> {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return None,
                Ok(s) => s,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => {
                    // No child is left at all: whatever is still listed was
                    // reaped elsewhere.
                    self.live.clear();
                    return None;
                }
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return None;
                }
            };
            let (pid, ended) = match status {
                WaitStatus::Exited(pid, code) => (pid, Ended::Exited(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, Ended::Killed(sig)),
                // Stopped or continued (not asked for with these flags).
                _ => continue,
            };
            if let Some(i) = self.live.iter().position(|c| c.pid == pid) {
                let c = self.live.remove(i);
                return Some(Exit { pid, info: c.info, ended, told: c.kill_at.is_some() });
            }
        }
    }

    /// Tells every child to stop with `sig`, and kills it by `kill_at`.
    pub(crate) fn stop_all(&mut self, sig: Signal, kill_at: Instant) {
        for c in &mut self.live {
            c.stop(sig, kill_at);
        }
    }

    /// Sends `sig` to every child, asking nothing more of it (a forwarded
    /// SIGUSR1).
    pub(crate) fn signal_all(&self, sig: Signal) {
        for c in &self.live {
            let _ = kill(c.pid, sig);
        }
    }

    /// Tells every child to quit now (SIGQUIT); kills it [`QUIT_GRACE`]
    /// later.
    pub(crate) fn quit_all(&mut self, now: Instant) {
        self.stop_all(Signal::SIGQUIT, now + QUIT_GRACE);
    }

    /// Kills (SIGKILL) the children whose deadline has passed; returns how
    /// many.
    pub(crate) fn kill_overdue(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for c in &mut self.live {
            if !c.killed && c.kill_at.is_some_and(|t| now >= t) {
                let _ = kill(c.pid, Signal::SIGKILL);
                c.killed = true;
                n += 1;
            }
        }
        n
    }

    /// The next kill deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.live.iter().filter(|c| !c.killed).filter_map(|c| c.kill_at).min()
    }
}

/// In a new child of `parent`: asks the kernel to SIGKILL this process when
/// the parent dies, then closes the race where the parent died before that
/// call (exits at once if the parent is already gone). The child then takes
/// over signal handling for its role (`Signals::reinstall_in_child`).
pub(crate) fn die_with_parent(parent: Pid) {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        log::warn!("prctl(PR_SET_PDEATHSIG): {e}");
    }
    if nix::unistd::getppid() != parent {
        sys::exit_now(0);
    }
}
