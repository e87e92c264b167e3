//! A server under test, in its own process group: started on port 0, ready
//! when it prints `listening on ADDR ... pid=P` (or, for the servers of
//! other projects, on a free port picked for it, ready when it accepts), and
//! SIGKILLed with its whole process group (fork and prefork children
//! included) when dropped, also when the harness panics.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server.
pub struct Server {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The pid it printed (the master process).
    pub pid: u32,
}

impl Server {
    /// Starts `program args...` with stderr appended to `log`, and waits for its start-up line.
    pub fn start(program: &Path, args: &[String], log: &Path) -> io::Result<Server> {
        let mut child = spawn(program, args, log, Stdio::piped())?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {} // keep the pipe drained
        });
        let mut server = Server { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), pid: 0 };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => return Err(io::Error::other(format!("{} exited before listening", program.display()))),
            Err(_) => return Err(io::Error::other(format!("{} did not start within 10 s", program.display()))),
        };
        let bad = || io::Error::other(format!("unexpected start-up line: {line}"));
        let addr = line.strip_prefix("listening on ").and_then(|r| r.split_whitespace().next()).ok_or_else(bad)?;
        server.addr = addr.parse().map_err(|_| bad())?;
        let pid = line.rsplit("pid=").next().ok_or_else(bad)?;
        server.pid = pid.trim().parse().map_err(|_| bad())?;
        Ok(server)
    }

    /// Starts a server of another project (nginx, redis-server) that was
    /// told to listen on `addr`, with stdout and stderr appended to `log`;
    /// ready once `addr` accepts a connection.
    pub fn start_external(program: &Path, args: &[String], addr: SocketAddr, log: &Path) -> io::Result<Server> {
        let child = spawn(program, args, log, Stdio::from(File::options().create(true).append(true).open(log)?))?;
        let pid = child.id();
        let mut server = Server { child, addr, pid };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if !server.alive() || std::time::Instant::now() >= deadline {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail = &tail[tail.len().saturating_sub(2000)..];
                return Err(io::Error::other(format!("{} did not listen on {addr}: {tail}", program.display())));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Whether the server is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A handle that kills the server's process group (for watchdogs).
    pub fn killer(&self) -> Killer {
        Killer { pgid: self.child.id(), disarmed: Arc::new(AtomicBool::new(false)) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Spawns `program args...` in its own process group, dying with the
/// harness, with stderr appended to `log`.
fn spawn(program: &Path, args: &[String], log: &Path, stdout: Stdio) -> io::Result<Child> {
    let log = File::options().create(true).append(true).open(log)?;
    let mut cmd = Command::new(program);
    cmd.args(args).env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(stdout).stderr(log).process_group(0);
    // SAFETY: prctl is async-signal-safe. The server dies with the harness's main thread (which
    // starts every server), also when the harness is killed or interrupted: its own process group
    // does not get the terminal's SIGINT.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", program.display())))
}

/// Kills a server's process group from another thread unless disarmed first.
#[derive(Clone)]
pub struct Killer {
    pgid: u32,
    disarmed: Arc<AtomicBool>,
}

impl Killer {
    /// Kills the group after `after` unless the returned guard is dropped (or [`Killer::disarm`] called) before.
    pub fn arm(&self, after: Duration) -> Armed {
        let k = self.clone();
        thread::spawn(move || {
            let step = Duration::from_millis(50);
            let mut waited = Duration::ZERO;
            while waited < after {
                if k.disarmed.load(Ordering::Relaxed) {
                    return;
                }
                thread::sleep(step);
                waited += step;
            }
            if !k.disarmed.load(Ordering::Relaxed) {
                eprintln!("watchdog: run overran by far; killing the server (pgid {})", k.pgid);
                let _ = killpg(Pid::from_raw(k.pgid as i32), Signal::SIGKILL);
            }
        });
        Armed(self.clone())
    }

    /// Stops the watchdog.
    pub fn disarm(&self) {
        self.disarmed.store(true, Ordering::Relaxed);
    }
}

/// Disarms its watchdog when dropped, so an early return never leaves one armed.
pub struct Armed(Killer);

impl Drop for Armed {
    fn drop(&mut self) {
        self.0.disarm();
    }
}
