//! The signal table, in every mode, under load: every signal an operator or
//! a terminal commonly sends besides the stops (SIGHUP, SIGTTIN, SIGTTOU,
//! SIGWINCH, SIGPIPE, SIGUSR1, SIGALRM) goes to the server and to
//! each of its children while clients echo all along. None may kill or stop
//! a process or cost a client anything; each one the table has a meaning
//! or a note for is logged as the table says (a prefork master reloads and
//! resizes its workers, SIGUSR1 finds nothing to reopen without
//! `--log-file`, everyone else says what the signal means there).
//! The stops have their own tests (`modes`), and so has SIGUSR2, the binary
//! upgrade (`operations`: five in a row, and more sent while one is under
//! way or while the old server drains).

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::load::Load;
use crate::support::modes::{per_mode, Mode};
use crate::support::net::{close_cleanly, roundtrip, IO_TIMEOUT};
use crate::support::process::{exit_signal, signal_pid};
use crate::support::server::{Server, SETTLE_TIMEOUT};

/// The signals sent, and what the server process logs for each (`{mode}`
/// is the mode's name); `None`: ignored without a word (SIGPIPE).
fn expected(mode: &Mode, sig: Signal) -> Option<String> {
    let m = mode.name;
    let prefork = m == "prefork";
    let workers: usize =
        mode.args.windows(2).find(|w| w[0] == "--workers").map_or(0, |w| w[1].parse().expect("--workers N"));
    Some(match sig {
        Signal::SIGHUP if prefork => "SIGHUP: rolling restart of".to_string(),
        Signal::SIGHUP => format!("SIGHUP: nothing to reload in {m} mode"),
        Signal::SIGTTIN if prefork => format!("workers: target now {}", workers + 1),
        Signal::SIGTTIN => format!("SIGTTIN: no workers to add in {m} mode"),
        // With --reuseport a worker's socket cannot leave its group without
        // resetting its queued connections, so the master refuses (unless
        // the kernel migrates them).
        Signal::SIGTTOU if prefork && mode.args.contains(&"--reuseport") && !migrates() => {
            "SIGTTOU: ignored with --reuseport".to_string()
        }
        Signal::SIGTTOU if prefork => format!("workers: target now {workers}"),
        Signal::SIGTTOU => format!("SIGTTOU: no workers to remove in {m} mode"),
        Signal::SIGWINCH => "SIGWINCH: terminal resized: nothing to do".to_string(),
        // Without --log-file there is nothing to reopen (the `daemon` topic
        // reopens a log file).
        Signal::SIGUSR1 => "SIGUSR1: nothing to reopen".to_string(),
        Signal::SIGPIPE => return None,
        other => format!("{other}: no meaning in {m} mode: ignored"),
    })
}

/// Whether this kernel migrates a closing SO_REUSEPORT listener's queue.
fn migrates() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

const SENT: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGWINCH,
    Signal::SIGPIPE,
    Signal::SIGUSR1,
    Signal::SIGALRM,
];

fn common_signals_neither_kill_nor_freeze(mode: &Mode) {
    let mut server = Server::start(mode, &["--grace", "5"]);
    let load = Load::start(server.addr, 4, 20, Duration::ZERO, IO_TIMEOUT);
    assert!(load.progresses(50), "{}: no traffic before the signals\n{}", mode.name, server.log());
    for sig in SENT {
        server.signal(sig);
        if let Some(line) = expected(mode, sig) {
            assert!(
                server.wait_log_line(&line, SETTLE_TIMEOUT).is_some(),
                "{}: {sig} not handled as the table says (no {line:?} in the log)\n{}",
                mode.name,
                server.log()
            );
        }
        assert!(server.is_running(), "{}: {sig} ended the server\n{}", mode.name, server.log());
        assert!(load.progresses(20), "{}: no traffic after {sig}\n{}", mode.name, server.log());
    }
    // And to every child (fork children serving clients, prefork workers),
    // as a terminal's process group would get them.
    for child in server.live_children() {
        for sig in SENT {
            // A fork child may have finished its client meanwhile.
            let _ = signal_pid(child.pid, sig);
        }
    }
    assert!(load.progresses(50), "{}: no traffic after signalling the children\n{}", mode.name, server.log());
    let (trips, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{}: clients failed ({trips} round trips):\n{}\n{}",
        mode.name,
        errors.join("\n"),
        server.log()
    );
    assert!(server.is_running(), "{}: the server died\n{}", mode.name, server.log());
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}: exit after SIGTERM: {status:?} (signal {:?})\n{}",
        mode.name,
        status.as_ref().and_then(exit_signal),
        server.log()
    );
}

per_mode!(=> common_signals_neither_kill_nor_freeze);

/// A server started with signals blocked (a supervisor's mask is inherited
/// through exec; a binary upgrade starts its successor that way on purpose,
/// so that a signal sent before its handlers are in place waits for them)
/// lets the signals of its table in once it has handled them: SIGUSR1 is
/// handled, SIGTERM stops it gracefully.
#[test]
fn signals_blocked_by_whoever_started_the_server_are_let_in() {
    const BLOCK_THEN_EXEC: &str = "import os, signal, sys; \
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM}); \
        os.execv(sys.argv[1], sys.argv[1:])";
    let mode = &crate::support::modes::EVENT;
    let mut server =
        crate::support::server::Launch::new(mode, &[]).wrapped(&["python3", "-c", BLOCK_THEN_EXEC]).start();
    let mut c = server.connect();
    roundtrip(&mut c, b"before the signals").unwrap();
    server.signal(Signal::SIGUSR1);
    let line = expected(mode, Signal::SIGUSR1).unwrap();
    assert!(server.wait_log_line(&line, SETTLE_TIMEOUT).is_some(), "SIGUSR1 stayed blocked\n{}", server.log());
    server.signal(Signal::SIGHUP);
    let line = expected(mode, Signal::SIGHUP).unwrap();
    assert!(server.wait_log_line(&line, SETTLE_TIMEOUT).is_some(), "SIGHUP stayed blocked\n{}", server.log());
    roundtrip(&mut c, b"after them").unwrap();
    close_cleanly(&mut c).unwrap();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "after SIGTERM: {status:?}\n{}", server.log());
}
