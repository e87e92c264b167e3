//! Processes and waiting: bounded polls of a condition (never a sleep as
//! synchronisation), bounded runs of a command, signals by pid, the fd
//! limit of this test process.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::procfs::{still_alive, ProcStat};

/// Pause between two looks at a polled condition.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long a finished process's pipes may stay open after it exited.
const PIPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
/// Returns whether it held.
pub fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(POLL_INTERVAL, timeout, cond)
}

/// [`poll_until`] with a chosen pause between looks (for conditions that
/// cost something to check, such as a connection attempt).
pub fn poll_every(interval: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(interval);
    }
}

/// The most open files the tests raise themselves to: the hard limit of a
/// CI machine.
const NOFILE_WANTED: u64 = 65_536;

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (at most
/// 65,536; once), so thousands of simultaneous clients fit, and servers
/// spawned afterwards inherit the higher limit.
pub fn raise_nofile() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
        let want = hard.min(NOFILE_WANTED);
        if soft < want {
            setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit(RLIMIT_NOFILE)");
        }
    });
}

/// Whether this test process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The signal that ended a process, if one did.
pub fn exit_signal(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// Sends `sig` to `pid`, which the test started; an error if it is gone.
pub fn signal_pid(pid: i32, sig: Signal) -> nix::Result<()> {
    kill(Pid::from_raw(pid), sig)
}

/// How a command run to its end ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Runs `cmd` (stdin empty, stdout and stderr collected) and waits at most
/// `timeout` for it to exit. If it is still running then, it is SIGKILLed
/// by its pid, reaped, and the error says so, with its stderr so far.
pub fn run_bounded(cmd: Command, timeout: Duration) -> Result<Finished, String> {
    run_bounded_with_input(cmd, None, timeout)
}

/// [`run_bounded`] with `input` written to the command's stdin (then
/// closed) by a thread of its own, so a command that does not read it all
/// cannot block the wait.
pub fn run_bounded_with_input(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Finished, String> {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    spawn_collect(child.stdout.take().expect("stdout piped"), out.clone(), done_tx.clone());
    spawn_collect(child.stderr.take().expect("stderr piped"), err.clone(), done_tx);
    let text =
        |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let mut status = None;
    poll_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{cmd:?} still running after {timeout:?}; stderr:\n{}", text(&err)));
    };
    // The pipes reach EOF now that the process is gone (bounded anyway, in
    // case something it started still holds them).
    for _ in 0..2 {
        if done_rx.recv_timeout(PIPE_TIMEOUT).is_err() {
            return Err(format!("{cmd:?} exited ({status}) but its stdout/stderr stayed open"));
        }
    }
    Ok(Finished { status, stdout: text(&out), stderr: text(&err) })
}

/// Copies a pipe into `into` until EOF, then reports on `done`.
fn spawn_collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>, done: mpsc::Sender<()>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            into.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
        }
        let _ = done.send(());
    });
}

/// SIGKILLs, when dropped, every process of the list still alive: children
/// that outlive their parent (prefork workers of a killed master, fork
/// children) can no longer be found through it.
pub struct KillOnDrop(pub Vec<ProcStat>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in self.0.iter().filter(|p| still_alive(p)) {
            let _ = signal_pid(p.pid, Signal::SIGKILL);
        }
    }
}
