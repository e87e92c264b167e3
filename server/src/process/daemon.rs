//! `--daemon`: the classic detach, as `daemon(3)` and nginx do it, with a
//! readiness report: fork (the caller waits), `setsid` (a new session, no
//! controlling terminal), fork again (the daemon is no session leader, so
//! it can never acquire a terminal), `chdir /` (no directory kept busy),
//! and standard input, output and error on `/dev/null`.
//!
//! The process that called [`daemonize`] does not exit at once: it waits on
//! a pipe until the daemon reports, through its [`Readiness`], that it is
//! listening (the line it would have printed) or why it could not start
//! (port in use, no permission for the pid file, ...). A daemon that ends
//! without a report closes the pipe, which says so too. No sleep, no
//! polling: the caller learns the outcome the moment there is one.
//!
//! It forks, so it must run before the process has a second thread (the
//! fork checks; a server starts its threads only in `Server::serve`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;

use crate::sys::{self, Forked};

/// What [`daemonize`] returns, in each of the two processes it leaves.
#[derive(Debug)]
pub enum Detached {
    /// In the process that called [`daemonize`], once the daemon reported:
    /// the line it sent when it was ready (`Ok`), or why it failed to start
    /// (`Err`). This process has nothing left to do but say so and exit.
    Parent(Result<String, String>),
    /// In the daemon: detached, in `/`, standard streams on `/dev/null`.
    /// Report through the [`Readiness`] once serving is certain (bound, pid
    /// file written) or start-up failed.
    Daemon(Readiness),
}

/// The daemon's end of the report pipe; reporting consumes it. Dropped
/// without a report, the parent learns that the daemon ended without one.
#[derive(Debug)]
pub struct Readiness(File);

/// The first byte of a report: ready, or failed.
const READY: u8 = b'R';
const FAILED: u8 = b'E';

impl Readiness {
    /// The daemon serves: `line` (its `listening on ...` line) goes to the
    /// parent, which prints it and exits 0.
    pub fn ready(self, line: &str) {
        self.report(READY, line);
    }

    /// The daemon could not start: `message` goes to the parent, which
    /// reports it as its own error.
    pub fn failed(self, message: &str) {
        self.report(FAILED, message);
    }

    fn report(mut self, kind: u8, text: &str) {
        let mut msg = Vec::with_capacity(text.len() + 1);
        msg.push(kind);
        msg.extend_from_slice(text.as_bytes());
        // Nobody to tell if the parent is gone.
        let _ = self.0.write_all(&msg);
    }
}

/// Detaches this process as a daemon (see the module docs). Returns twice:
/// [`Detached::Parent`] in the calling process once the daemon reported,
/// [`Detached::Daemon`] in the daemon. An `Err` means nothing was forked
/// (this process has more than one thread, or fork or pipe failed).
pub fn daemonize() -> io::Result<Detached> {
    // Before `chdir /`: a binary upgrade starts the successor where this
    // server was started, so relative paths in its arguments still hold.
    crate::process::upgrade::remember_how_started();
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    match sys::fork()? {
        Forked::Parent(first) => {
            drop(write);
            // The first child exits as soon as it has forked the daemon.
            while let Err(nix::errno::Errno::EINTR) = waitpid(first, None) {}
            Ok(Detached::Parent(read_report(File::from(read))))
        }
        Forked::Child(blocked) => {
            blocked.release();
            drop(read);
            let mut pipe = File::from(write);
            match detach() {
                Ok(()) => Ok(Detached::Daemon(Readiness(pipe))),
                Err(e) => {
                    let _ = write!(pipe, "{}daemonize: {e}", FAILED as char);
                    sys::exit_now(1)
                }
            }
        }
    }
}

/// In the first child: a new session, the second fork (this process exits,
/// the daemon returns), `/`, and `/dev/null`.
fn detach() -> io::Result<()> {
    nix::unistd::setsid().map_err(|e| io::Error::other(format!("setsid: {e}")))?;
    match sys::fork()? {
        Forked::Parent(_) => sys::exit_now(0),
        Forked::Child(blocked) => blocked.release(),
    }
    std::env::set_current_dir("/")?;
    let null: OwnedFd = File::options().read(true).write(true).open("/dev/null")?.into();
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// Reads the daemon's report to the end of the pipe (every write end is
/// closed once the daemon reported or ended).
fn read_report(mut pipe: File) -> Result<String, String> {
    let mut buf = Vec::new();
    if let Err(e) = pipe.read_to_end(&mut buf) {
        return Err(format!("reading the daemon's report: {e}"));
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match buf.split_first() {
        Some((&READY, line)) => Ok(text(line)),
        Some((&FAILED, message)) => Err(text(message)),
        _ => Err("the daemon ended before it reported that it serves (see its log)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(bytes: &[u8]) -> Result<String, String> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut w = File::from(write);
        w.write_all(bytes).unwrap();
        drop(w);
        read_report(File::from(read))
    }

    #[test]
    fn reports_read_back_as_sent() {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        Readiness(File::from(write)).ready("listening on 127.0.0.1:1 mode=event pid=2");
        assert_eq!(read_report(File::from(read)), Ok("listening on 127.0.0.1:1 mode=event pid=2".into()));
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        Readiness(File::from(write)).failed("127.0.0.1:1 is already in use");
        assert_eq!(read_report(File::from(read)), Err("127.0.0.1:1 is already in use".into()));
    }

    #[test]
    fn a_daemon_that_ends_without_a_report_is_a_failure() {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        drop(Readiness(File::from(write)));
        assert!(read_report(File::from(read)).unwrap_err().contains("ended before it reported"));
        assert!(report_of(b"?garbage").is_err());
    }

    #[test]
    fn refuses_to_fork_a_multi_threaded_process() {
        // A second thread for certain (whatever the harness runs tests on).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        let err = daemonize().expect_err("daemonize with several threads");
        assert!(err.to_string().contains("single-threaded"), "{err}");
        drop(tx);
        let _ = t.join();
    }
}
