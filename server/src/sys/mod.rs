//! Every `unsafe` block of the server lives in this folder, each with its
//! `SAFETY:` argument; the rest of the crate denies unsafe code. What needs
//! it: fork (and proving its precondition), `_exit`, reading into a
//! buffer's spare capacity, the shared memory of the scoreboard, one
//! `epoll_ctl` flag mio lacks, the signal handler ([`signal`]), and
//! io_uring with its provided buffers ([`uring`]).
//!
//! This module depends on nothing else in the crate.

pub(crate) mod signal;
pub(crate) mod uring;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::AtomicU64;

use bytes::BytesMut;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::unistd::Pid;

/// The result of [`fork`], as seen by each side.
#[derive(Debug)]
pub(crate) enum Forked {
    /// We are the parent; this is the child.
    Parent(Pid),
    /// We are the child; every signal is blocked until the child has set up
    /// its own handling and releases them.
    Child(BlockedSignals),
}

/// Signals held back in a new child (they stay pending, none is lost).
#[derive(Debug)]
#[must_use = "release the signals once the child handles them"]
pub(crate) struct BlockedSignals(SigSet);

impl BlockedSignals {
    /// Restores the signal mask: pending signals are delivered now.
    pub(crate) fn release(self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// This process's pid, cached (0: not read yet).
static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// This process's pid without a syscall (getpid(2) is one: glibc no longer
/// caches it, and loops asked once per wake-up whether they are the main
/// process). Forgotten in the child by [`fork`], through which every fork
/// of the server goes, and read again on the child's first ask.
pub(crate) fn pid() -> u32 {
    use std::sync::atomic::Ordering::Relaxed;
    match PID.load(Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Relaxed);
            pid
        }
        pid => pid,
    }
}

/// Number of threads in this process, from `/proc/self/stat`. It is read
/// before every fork, so it costs one `pread` into a stack buffer: the file
/// stays open (reopened in a process that inherited it, whose `self` was
/// another process), and nothing is allocated (a fork parent's heap pages
/// are shared with its children: every page it writes is copied).
fn thread_count() -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    static STAT: std::sync::Mutex<Option<(u32, std::fs::File)>> = std::sync::Mutex::new(None);
    let pid = pid();
    let mut stat = STAT.lock().unwrap_or_else(|e| e.into_inner());
    let file = match &*stat {
        Some((p, f)) if *p == pid => f,
        _ => &stat.insert((pid, std::fs::File::open("/proc/self/stat")?)).1,
    };
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0)?;
    let text = std::str::from_utf8(&buf[..n]).map_err(|_| io::Error::other("/proc/self/stat is not UTF-8"))?;
    // Fields after the command name (which may hold spaces, so split after
    // its closing parenthesis): state is field 3, num_threads field 20.
    text.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("cannot read num_threads from /proc/self/stat"))
}

/// Fails unless this process has exactly one thread, the precondition of
/// [`fork`] (which checks it again at every call). Strategies that fork
/// call it at start, so a violation is a clear start-up error.
pub(crate) fn ensure_single_threaded(who: &str) -> io::Result<()> {
    match thread_count()? {
        1 => Ok(()),
        n => Err(io::Error::other(format!("{who} must fork from a single-threaded process, found {n} threads"))),
    }
}

/// Forks this process. The precondition (exactly one thread, so that the
/// child, which runs normal code: it allocates and logs, cannot inherit a
/// lock held by another thread) is checked at every call, not assumed; a
/// process with more threads gets an error and no child.
///
/// Every signal is blocked across the fork: a signal sent to the new child
/// before it has its own handling stays pending instead of landing in the
/// parent's bookkeeping (the child releases it with
/// [`BlockedSignals::release`]).
pub(crate) fn fork() -> io::Result<Forked> {
    ensure_single_threaded("fork")?;
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old)).map_err(io::Error::from)?;
    // SAFETY: the process has exactly one thread (checked just above; only
    // this thread could have started another since, and it did not), so no
    // lock can be held by another thread across the fork and the child may
    // run arbitrary code.
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(nix::unistd::ForkResult::Child) => {
            PID.store(0, std::sync::atomic::Ordering::Relaxed);
            Ok(Forked::Child(BlockedSignals(old)))
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Ok(Forked::Parent(child))
        }
        Err(e) => {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Err(e.into())
        }
    }
}

/// Ends the process at once, without running destructors or `atexit`
/// handlers and without flushing stdio buffers inherited from the parent.
/// A forked child ends through here and never returns into the parent's loop.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes no pointers; ending the
    // process without unwinding is the point.
    unsafe { libc::_exit(code) }
}

/// Reads from a socket into the spare capacity of `buf` (at most what is
/// spare; reserve first) and returns how many bytes arrived. No zeroing, no
/// copy.
pub(crate) fn read_into<S: AsFd>(sock: &S, buf: &mut BytesMut) -> io::Result<usize> {
    let sock = socket2::SockRef::from(sock);
    let spare = buf.spare_capacity_mut();
    let n = sock.recv(spare)?;
    debug_assert!(n <= spare.len());
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity,
    // and `n` is at most the spare length, so the new length covers only
    // initialised bytes within the allocation.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Maps `n` zeroed atomic words in memory shared with every process forked
/// afterwards (`MAP_SHARED | MAP_ANONYMOUS`). Never unmapped: the words live
/// as long as the process.
pub(crate) fn map_shared_words(n: usize) -> io::Result<&'static [AtomicU64]> {
    use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
    let n = n.max(1);
    let len = std::num::NonZeroUsize::new(n * std::mem::size_of::<AtomicU64>()).expect("non-zero");
    // SAFETY: a fresh anonymous mapping aliases nothing; we pass no address
    // hint and no fd.
    let ptr = unsafe { mmap_anonymous(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED) }
        .map_err(io::Error::from)?;
    // SAFETY: the mapping is page-aligned (enough for `AtomicU64`), `len`
    // bytes long, zero-filled by the kernel (zero is a valid `AtomicU64`),
    // never unmapped (so `'static`), and only ever accessed through atomics,
    // which are sound to share between processes on Linux.
    Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<AtomicU64>(), n) })
}

/// Registers a listening socket in `poll` for readability, edge-triggered,
/// with `EPOLLEXCLUSIVE`: when several processes (prefork workers) wait on
/// one shared listener, the kernel wakes one of them per connection instead
/// of all (no thundering herd). mio has no flag for it; the event carries
/// `token` exactly as mio's own registrations do, so mio reads it as usual,
/// and mio's `deregister` removes it.
pub(crate) fn register_listener<L: AsRawFd>(poll: &mio::Poll, listener: &L, token: mio::Token) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
        u64: token.0 as u64,
    };
    // SAFETY: both fds are open (borrowed from live owners) and `ev` is a
    // valid, initialised epoll_event that the kernel only reads.
    let r = unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_ADD, listener.as_raw_fd(), &mut ev) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The listening sockets this process was handed under systemd's socket
/// activation convention (`LISTEN_PID` is this process, `LISTEN_FDS` says
/// how many, from fd 3 on; by systemd, or by the process this one
/// replaces), with their names (`LISTEN_FDNAMES`). A single-threaded
/// process (a server at start) also removes the variables, so that no child
/// takes the fds for its own; a multi-threaded one cannot change its
/// environment soundly and leaves them (then `LISTEN_PID` still names only
/// this process, so a child ignores them). Each fd must be a listening TCP
/// socket.
pub(crate) fn take_listen_fds() -> io::Result<Vec<(std::net::TcpListener, String)>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fds: Vec<(RawFd, String)> = if thread_count()? == 1 {
        // SAFETY: the process has one thread (checked just above), so no
        // other thread can read or write the environment while this call
        // removes the variables: the precondition of `env::remove_var`.
        unsafe { sd_notify::listen_fds_with_names_and_unset_env() }?.collect()
    } else {
        sd_notify::listen_fds_with_names()?.collect()
    };
    let mut listeners = Vec::with_capacity(fds.len());
    for (fd, name) in fds {
        // SAFETY: by the socket activation convention these fds were passed
        // to this process for it to own (LISTEN_PID named it, and the
        // variables are gone, so nothing else in it takes them); each is
        // taken once, here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = socket2::Socket::from(owned);
        if sock.r#type()? != socket2::Type::STREAM || !sock.is_listener()? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("LISTEN_FDS passed fd {fd} ({name}), which is not a listening TCP socket"),
            ));
        }
        listeners.push((std::net::TcpListener::from(sock), name));
    }
    Ok(listeners)
}

/// Starts `exe` with `args` as this server's successor (a binary upgrade):
/// the listening sockets `fds` become its fds 3, 4, ... under systemd's
/// convention (`LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID`: the new
/// process's pid, written into its environment between fork and exec), and
/// the write end of a new pipe becomes the fd after them, named by
/// `SWITCHYARD_UPGRADE_READY_FD` (`ready_var`): the successor writes a line
/// there once it serves. It starts with `blocked` blocked (the mask
/// survives exec; no shell runs in between to clear it): a signal sent to
/// it before its handlers are in place waits for them instead of taking its
/// default action. Returns the child and the read end.
pub(crate) fn spawn_successor(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    dir: Option<&std::path::Path>,
    fds: &[BorrowedFd<'_>],
    ready_var: &str,
    blocked: &SigSet,
) -> io::Result<(std::process::Child, std::fs::File)> {
    use std::ffi::{CString, OsStr};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    const FIRST: RawFd = 3;
    /// Where the fds are parked before they are moved into place, above
    /// any target number.
    const PARK: RawFd = 64;
    /// `LISTEN_PID=`, then room for the digits of any pid and a NUL.
    const PID_AT: usize = "LISTEN_PID=".len();
    if fds.len() > 32 {
        return Err(io::Error::other("more than 32 listening sockets to hand over"));
    }
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::other("a NUL byte in the command line or environment"));
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let mut sources: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sources.push(write.as_raw_fd());
    let n = fds.len();

    // Everything exec needs, made before the fork (the child may not allocate).
    let path = c(exe.as_os_str().as_bytes())?;
    let argv: Vec<CString> =
        std::iter::once(Ok(path.clone())).chain(args.iter().map(|a| c(a.as_bytes()))).collect::<io::Result<_>>()?;
    let ours = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", ready_var];
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !ours.iter().any(|o| k.as_os_str() == OsStr::new(o)))
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<io::Result<_>>()?;
    env.push(c(format!("LISTEN_FDS={n}").as_bytes())?);
    env.push(c(format!("LISTEN_FDNAMES={}", vec!["switchyard"; n].join(":")).as_bytes())?);
    env.push(c(format!("{ready_var}={}", FIRST + n as RawFd).as_bytes())?);
    let mut listen_pid = b"LISTEN_PID=".to_vec();
    listen_pid.resize(PID_AT + 21, 0);
    let pid_entry = listen_pid.as_mut_ptr() as usize;
    let argv_ptrs: Vec<usize> = argv.iter().map(|a| a.as_ptr() as usize).chain([0]).collect();
    let env_ptrs: Vec<usize> = env.iter().map(|e| e.as_ptr() as usize).chain([pid_entry, 0]).collect();
    let blocked = *blocked;

    let mut cmd = std::process::Command::new(exe);
    cmd.stdin(std::process::Stdio::null());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: sigprocmask(2), dup2(2),
    // close(2), getpid(2) and execve(2), on fd numbers, a signal set and
    // NUL-terminated strings and pointer arrays all made before the fork
    // and owned by the closure (it allocates and frees nothing). The pid's
    // digits go into the child's own copy of `listen_pid`, whose bytes
    // past the digits are NUL. Parking every source above the targets
    // first means no dup2 can overwrite a source not yet moved. execve
    // returns only on failure, which is reported as the spawn's error.
    unsafe {
        cmd.pre_exec(move || {
            let _owned = (&path, &argv, &env, &listen_pid);
            if libc::sigprocmask(libc::SIG_BLOCK, blocked.as_ref(), std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
            for (i, &fd) in sources.iter().enumerate() {
                if libc::dup2(fd, PARK + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for i in 0..sources.len() {
                // dup2 clears FD_CLOEXEC on the new fd: it survives exec.
                if libc::dup2(PARK + i as RawFd, FIRST + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(PARK + i as RawFd);
            }
            let digits = (pid_entry as *mut u8).add(PID_AT);
            let mut pid = libc::getpid() as u32;
            let mut len = 0;
            let mut rev = [0u8; 10];
            loop {
                rev[len] = b'0' + (pid % 10) as u8;
                len += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            for i in 0..len {
                *digits.add(i) = rev[len - 1 - i];
            }
            libc::execve(
                path.as_ptr(),
                argv_ptrs.as_ptr() as *const *const libc::c_char,
                env_ptrs.as_ptr() as *const *const libc::c_char,
            );
            Err(io::Error::last_os_error())
        });
    }
    let child = cmd.spawn()?;
    drop(write);
    Ok((child, std::fs::File::from(read)))
}

/// Takes the fd named by the environment variable `var` (a pipe handed to
/// this process by the one it replaces), if it is set to an open fd.
pub(crate) fn take_inherited_fd(var: &str) -> Option<std::fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd: RawFd = std::env::var(var).ok()?.parse().ok()?;
    // The fd must be open (fcntl fails with EBADF otherwise), and is made
    // close-on-exec so that no later child inherits it.
    nix::fcntl::fcntl(
        // SAFETY: only borrowed for this call; `fcntl` F_GETFD reads flags.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .ok()?;
    // SAFETY: the fd was handed to this process (by the process it
    // replaces, which named it in `var`) for it to own; it is taken once,
    // here, and nothing else in the process refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    Some(std::fs::File::from(owned))
}

/// How many connections wait in the accept queue of a listening TCP socket
/// now (`TCP_INFO`: for a socket in LISTEN state the kernel reports its
/// accept queue's length as `tcpi_unacked`).
pub(crate) fn waiting_clients<L: AsFd>(listener: &L) -> io::Result<usize> {
    // SAFETY: an all-zero tcp_info is a valid value (integers only).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is open (borrowed from a live owner); `info` and `len`
    // are valid for writes of `len` bytes, which the kernel does not exceed.
    let r = unsafe {
        libc::getsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked as usize)
}

/// The epoll fd of `poll`, borrowed for as long as `poll` is (mio exposes
/// only the raw fd), to `poll(2)` it beside other fds.
pub(crate) fn poll_fd(poll: &mio::Poll) -> BorrowedFd<'_> {
    // SAFETY: the fd is owned by `poll`, open for as long as `poll` lives,
    // and the borrow cannot outlive `poll`.
    unsafe { BorrowedFd::borrow_raw(poll.as_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_threads_and_refuses_to_fork_from_many() {
        // The test harness runs tests on threads of its own: this process has
        // several, so fork must refuse.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(thread_count().unwrap() >= 2);
        let err = fork().expect_err("fork from a multi-threaded process");
        assert!(err.to_string().contains("single-threaded"), "{err}");
        drop(tx);
        let _ = t.join();
    }

    #[test]
    fn counts_the_clients_waiting_to_be_accepted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(waiting_clients(&l).unwrap(), 0);
        let clients: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap()).collect();
        // The handshakes complete in the kernel: wait (bounded) for them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while waiting_clients(&l).unwrap() < 3 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(waiting_clients(&l).unwrap(), 3);
        drop(l.accept().unwrap());
        assert_eq!(waiting_clients(&l).unwrap(), 2);
        drop(clients);
    }

    #[test]
    fn a_successor_starts_with_the_given_signals_blocked_and_its_own_pid() {
        // The "successor" (python3, which leaves its mask alone, unlike a
        // shell) writes its blocked mask (hex, bit N-1 for signal N), its
        // pid and the environment it was given.
        let out = std::env::temp_dir().join(format!("switchyard-successor-{}", std::process::id()));
        let script = "import os, sys\n\
            mask = [l for l in open('/proc/self/status') if l.startswith('SigBlk:')][0].split()[1]\n\
            e = os.environ\n\
            open(sys.argv[1], 'w').write(' '.join([mask, str(os.getpid()), e['LISTEN_PID'], e['LISTEN_FDS'], \
            e['READY_FD'], e.get('PATH') or '-']))";
        let args: Vec<std::ffi::OsString> =
            ["-c", script, out.to_str().unwrap()].iter().map(std::ffi::OsString::from).collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut blocked = SigSet::empty();
        blocked.add(nix::sys::signal::SIGUSR1);
        blocked.add(nix::sys::signal::SIGHUP);
        let python = std::path::Path::new("/usr/bin/python3");
        let (mut child, _ready) =
            spawn_successor(python, &args, None, &[listener.as_fd()], "READY_FD", &blocked).unwrap();
        assert!(child.wait().unwrap().success());
        let line = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        let fields: Vec<&str> = line.split(' ').collect();
        let mask = u64::from_str_radix(fields[0], 16).unwrap();
        let bit = |sig: nix::sys::signal::Signal| mask & (1 << (sig as i32 - 1)) != 0;
        assert!(bit(nix::sys::signal::SIGUSR1) && bit(nix::sys::signal::SIGHUP), "{line}");
        assert!(!bit(nix::sys::signal::SIGTERM) && !bit(nix::sys::signal::SIGUSR2), "only the given ones: {line}");
        assert_eq!(fields[1], fields[2], "LISTEN_PID is the successor's pid: {line}");
        assert_eq!(fields[1], child.id().to_string(), "{line}");
        let path = std::env::var("PATH").unwrap();
        assert_eq!(&fields[3..], ["1", "4", path.as_str()], "the rest of the environment is kept: {line}");
    }

    #[test]
    fn the_cached_pid_is_the_process_id() {
        assert_eq!(pid(), std::process::id());
        assert_eq!(pid(), std::process::id(), "read from the cache");
    }

    #[test]
    fn shared_words_start_zeroed() {
        let w = map_shared_words(1000).unwrap();
        assert_eq!(w.len(), 1000);
        assert!(w.iter().all(|x| x.load(std::sync::atomic::Ordering::Relaxed) == 0));
    }
}
