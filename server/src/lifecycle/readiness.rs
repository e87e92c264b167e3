//! Telling the outside where the server is: the service manager
//! (`sd_notify`: `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=`,
//! `WATCHDOG=1`, `MAINPID=`), and, after a binary upgrade, the process this
//! one replaces (a pipe it waits on: the first line written there says this
//! process serves).
//!
//! Only the server's main process speaks (the one that called
//! `Server::bind`; fork children and prefork workers are other pids, and
//! their calls here do nothing). Without `NOTIFY_SOCKET` the notifications
//! are no-ops; `WATCHDOG_USEC` (with `WATCHDOG_PID`, if set, naming this
//! process) asks for a `WATCHDOG=1` every half of it, which the loop that
//! owns the process's signals sends while the owner says the server is
//! healthy.
//!
//! The notification socket is connected once, in [`init`], before the
//! server drops its privileges: a server that started as root and runs as
//! `--user` keeps speaking to a manager's socket only root may write to.

use std::fs::File;
use std::io::Write;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The environment variable that names the pipe to the replaced process.
pub(crate) const UPGRADE_READY_FD: &str = "SWITCHYARD_UPGRADE_READY_FD";

static MAIN_PID: AtomicU32 = AtomicU32::new(0);
static READY: AtomicBool = AtomicBool::new(false);
static STOPPING: AtomicBool = AtomicBool::new(false);
static HEALTHY: AtomicBool = AtomicBool::new(true);
/// A service manager listens (`NOTIFY_SOCKET` connected): the loops that
/// call [`status`] and [`watchdog`] on every wake-up skip the lock without one.
static MANAGED: AtomicBool = AtomicBool::new(false);

struct State {
    /// The write end of the replaced process's readiness pipe.
    upgrade_pipe: Option<File>,
    /// `NOTIFY_SOCKET`, connected.
    manager: Option<UnixDatagram>,
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    last_status: Option<(Instant, String)>,
}

static STATE: Mutex<State> =
    Mutex::new(State { upgrade_pipe: None, manager: None, watchdog: None, next_watchdog: None, last_status: None });

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_main() -> bool {
    MAIN_PID.load(Ordering::Relaxed) == crate::sys::pid()
}

/// Sends `states` to the service manager, if there is one. Callers hold
/// no lock of this module.
fn notify(states: &[NotifyState<'_>]) {
    let s = lock();
    let Some(manager) = &s.manager else { return };
    let msg: String = states.iter().map(|st| format!("{st}\n")).collect();
    if let Err(e) = manager.send(msg.as_bytes()) {
        log::debug!("sd_notify: {e}");
    }
}

/// The service manager's socket (`NOTIFY_SOCKET`: a path, or `@name` in the
/// abstract namespace), connected; `None` when unset or unreachable.
fn connect_manager() -> Option<UnixDatagram> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let sock = UnixDatagram::unbound().ok()?;
    let bytes = path.as_encoded_bytes();
    let connected = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.connect_addr(&a)),
        None => sock.connect(&path),
    };
    match connected {
        Ok(()) => Some(sock),
        Err(e) => {
            log::warn!("NOTIFY_SOCKET {}: {e}; the service manager will not hear from this server", path.display());
            None
        }
    }
}

/// This process is the server's main one: `upgrade_pipe` (from the process
/// it replaces, if any) is told when it serves; the watchdog interval is
/// read from the environment.
pub(crate) fn init(upgrade_pipe: Option<File>) {
    MAIN_PID.store(crate::sys::pid(), Ordering::Relaxed);
    let manager = connect_manager();
    let mut s = lock();
    s.upgrade_pipe = upgrade_pipe;
    MANAGED.store(manager.is_some(), Ordering::Relaxed);
    s.manager = manager;
    s.watchdog = sd_notify::watchdog_enabled();
    s.next_watchdog = s.watchdog.map(|w| Instant::now() + w / 2);
}

/// The server serves: `READY=1` with `status`, and the replaced process (if
/// any) is told. Once; only in the main process.
pub(crate) fn ready(status: &str) {
    if !is_main() || READY.swap(true, Ordering::SeqCst) {
        return;
    }
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    if let Some(mut pipe) = lock().upgrade_pipe.take() {
        if let Err(e) = writeln!(pipe, "ready {}", std::process::id()) {
            log::warn!("upgrade: cannot tell the replaced process that this one serves: {e}");
        }
    }
}

/// A reload (prefork's rolling restart) begins: `RELOADING=1` with the
/// monotonic time systemd wants beside it.
pub(crate) fn reloading() {
    if !is_main() {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// A reload ended (`READY=1` again) with `status`.
pub(crate) fn reloaded(status: &str) {
    if is_main() {
        notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

/// A graceful or immediate stop began: `STOPPING=1`. Once.
pub(crate) fn stopping() {
    if is_main() && !STOPPING.swap(true, Ordering::SeqCst) {
        notify(&[NotifyState::Stopping]);
    }
}

/// The process `pid` takes over (a binary upgrade that succeeded).
pub(crate) fn handed_over(pid: u32) {
    if is_main() {
        notify(&[NotifyState::MainPid(pid)]);
    }
}

/// Sends `STATUS=text` if a second passed since the last and it changed.
/// `text` is made only then: the loops call this on every wake-up.
pub(crate) fn status(text: impl FnOnce() -> String, now: Instant) {
    if !is_main() || !MANAGED.load(Ordering::Relaxed) {
        return;
    }
    let mut s = lock();
    if s.last_status.as_ref().is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(1)) {
        return;
    }
    let text = text();
    if s.last_status.as_ref().is_some_and(|(_, last)| *last == text) {
        return;
    }
    s.last_status = Some((now, text.clone()));
    drop(s);
    notify(&[NotifyState::Status(&text)]);
}

/// Whether the server is healthy enough to keep the watchdog quiet (the
/// prefork master says so only while its workers are).
pub(crate) fn set_healthy(healthy: bool) {
    HEALTHY.store(healthy, Ordering::Relaxed);
}

/// When the next `WATCHDOG=1` is due.
pub(crate) fn next_watchdog() -> Option<Instant> {
    if !is_main() {
        return None;
    }
    lock().next_watchdog
}

/// Sends `WATCHDOG=1` if it is due and the server is healthy.
pub(crate) fn watchdog(now: Instant) {
    if !is_main() || !MANAGED.load(Ordering::Relaxed) {
        return;
    }
    let mut s = lock();
    let (Some(every), Some(next)) = (s.watchdog, s.next_watchdog) else { return };
    if now < next {
        return;
    }
    s.next_watchdog = Some(now + every / 2);
    drop(s);
    if HEALTHY.load(Ordering::Relaxed) {
        notify(&[NotifyState::Watchdog]);
    }
}
