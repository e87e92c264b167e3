//! The binary upgrade (SIGUSR2): the running server starts the binary at
//! the path it was started from (the file may have been replaced since)
//! with the same arguments, handing it its listening sockets under
//! systemd's socket activation convention, so the one code path that takes
//! systemd's sockets takes these; then it waits until the new process
//! reports that it serves (a line on a pipe, not a sleep). Only then does the
//! old server stop accepting and drain as on SIGTERM. If the new binary
//! fails to start, exits, or does not report within [`DEADLINE`], the old
//! one goes on serving and says why.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::Child;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::lifecycle::readiness::UPGRADE_READY_FD;
use crate::lifecycle::signals::handled;
use crate::sys;

/// How long a successor may take to report that it serves.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// How this process was started.
#[derive(Debug)]
struct StartedAs {
    /// The executable's path (`/proc/self/exe` no longer names the file
    /// once it is replaced on disk).
    exe: PathBuf,
    args: Vec<OsString>,
    /// The working directory then: relative paths among the arguments mean
    /// the same to the successor (a daemon has moved to `/` since).
    dir: Option<PathBuf>,
}

/// Recorded at start.
static STARTED_AS: OnceLock<StartedAs> = OnceLock::new();

/// Records how this process was started (the first call counts: `--daemon`
/// calls it before it leaves its directory).
pub(crate) fn remember_how_started() {
    STARTED_AS.get_or_init(|| {
        let mut args = std::env::args_os();
        let argv0 = args.next().map(PathBuf::from).unwrap_or_default();
        // The executable's path as it was when we started, resolved now.
        let exe = std::env::current_exe().unwrap_or(argv0);
        StartedAs { exe, args: args.collect(), dir: std::env::current_dir().ok() }
    });
}

/// Whether this process is a binary upgrade's successor (it was handed
/// its sockets and a pipe to report on by the server it replaces).
pub fn started_by_upgrade() -> bool {
    std::env::var_os(UPGRADE_READY_FD).is_some()
}

/// A successor being started.
#[derive(Debug)]
pub(crate) struct Successor {
    child: Child,
    ready: File,
    line: Vec<u8>,
    deadline: Instant,
}

/// Where a successor is.
#[derive(Debug)]
pub(crate) enum Progress {
    /// Not serving yet.
    Waiting,
    /// It serves; its pid.
    Ready(u32),
    /// It will not: why.
    Failed(String),
}

impl Successor {
    /// Starts the successor with `listeners` (this process keeps its own).
    pub(crate) fn start(listeners: &[BorrowedFd<'_>]) -> io::Result<Successor> {
        let started = STARTED_AS.get().ok_or_else(|| io::Error::other("how the server was started is unknown"))?;
        let exe = &started.exe;
        let (child, ready) =
            sys::spawn_successor(exe, &started.args, started.dir.as_deref(), listeners, UPGRADE_READY_FD, &handled())?;
        nix::fcntl::fcntl(&ready, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(io::Error::from)?;
        log::info!("upgrade: started {} as pid {}; waiting for it to serve", exe.display(), child.id());
        Ok(Successor { child, ready, line: Vec::new(), deadline: Instant::now() + DEADLINE })
    }

    /// The pipe to watch.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    /// When it must have reported.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Looks at the pipe (and the clock).
    pub(crate) fn progress(&mut self, now: Instant) -> Progress {
        let mut buf = [0u8; 64];
        loop {
            match self.ready.read(&mut buf) {
                Ok(0) => return Progress::Failed(self.ended()),
                Ok(n) => {
                    self.line.extend_from_slice(&buf[..n]);
                    if self.line.contains(&b'\n') {
                        return Progress::Ready(self.child.id());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(format!("reading its readiness pipe: {e}")),
            }
        }
        if now >= self.deadline {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Progress::Failed(format!("it did not report that it serves within {DEADLINE:?}; killed"));
        }
        Progress::Waiting
    }

    /// Why a successor that closed its pipe without a word is gone.
    fn ended(&mut self) -> String {
        // It closed the pipe: it exited, or is exiting (its fds close just
        // before it becomes reapable); look a few times, 200 ms at most.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.child.try_wait() {
                Ok(Some(status)) => return format!("it exited before serving ({status})"),
                Ok(None) if attempt < 20 => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "it closed its readiness pipe without serving; killed".to_string();
                }
                // Reaped elsewhere (a fork parent reaps every child).
                Err(_) => return "it exited before serving".to_string(),
            }
        }
    }
}
