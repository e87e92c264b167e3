//! Syscall faults injected into a server: `faults.c`, beside this file, is
//! an `LD_PRELOAD` shim that makes chosen calls of `accept4`, `accept`,
//! `setsockopt(TCP_NODELAY)`, `fork`, `pthread_create` and
//! `epoll_ctl(EPOLL_CTL_ADD)` fail with a chosen errno, or stall a server
//! for a while inside `epoll_wait` or `io_uring_enter` once the call has
//! returned (the spec format is in its header). The server is a Rust binary linked dynamically with
//! glibc, and std, mio and nix call these libc symbols, so the shim's
//! definitions take their place.
//!
//! `Launch::new(mode, args).faults("accept4:ECONNABORTED:first=1:every=1:count=3").start()`
//! starts a server with it. The shim is compiled here once per run of the
//! test binary (`cc`, bounded in time) into `CARGO_TARGET_TMPDIR`, under a
//! name that hashes its source and flags, so later runs reuse it.
//!
//! io_uring cannot be failed that way (a ring's accepts happen in the
//! kernel; the shim only stalls the crate's `syscall(2)` of
//! `io_uring_enter`):
//! `no_uring.c` runs the server under a seccomp filter that denies
//! io_uring_setup(2) instead, as a container runtime's default profile does
//! ([`no_uring`], `Launch::deny_io_uring`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::process::run_bounded;

/// The shim's source.
const SOURCE: &str = include_str!("faults.c");
/// Compiler flags (the shim must build without a warning).
const FLAGS: [&str; 7] = ["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"];
/// The environment variable that holds the spec.
pub const SPEC_VAR: &str = "SWITCHYARD_FAULTS";
/// How long compiling the shim may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The shim's shared object, built on first use.
pub fn library() -> &'static Path {
    static LIBRARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match LIBRARY.get_or_init(|| build(SOURCE, &FLAGS, "faults", "so")) {
        Ok(path) => path,
        Err(e) => panic!("building the fault-injection shim: {e}"),
    }
}

/// `no_uring ERRNO PROGRAM ARGS...` (`no_uring.c`, beside this file): runs
/// PROGRAM under a seccomp filter that fails io_uring_setup(2) with ERRNO,
/// as container runtimes do. Built on first use.
pub fn no_uring() -> &'static Path {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PROGRAM.get_or_init(|| build(include_str!("no_uring.c"), &PROGRAM_FLAGS, "no_uring", "bin")) {
        Ok(path) => path,
        Err(e) => panic!("building no_uring: {e}"),
    }
}

/// Compiler flags of `no_uring`.
const PROGRAM_FLAGS: [&str; 5] = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"];

/// Compiles `source` with `flags` into `CARGO_TARGET_TMPDIR` unless a build
/// of this very source exists (named `NAME-HASH.EXT`).
fn build(source: &str, flags: &[&str], name: &str, ext: &str) -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut h = DefaultHasher::new();
    (source, flags).hash(&mut h);
    let stem = format!("{name}-{:016x}", h.finish());
    let out = dir.join(format!("{stem}.{ext}"));
    if out.exists() {
        return Ok(out);
    }
    // Unique names while building: another test binary may build at once.
    let unique = format!("{stem}.{}", std::process::id());
    let (src, tmp) = (dir.join(format!("{unique}.c")), dir.join(format!("{unique}.{ext}")));
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::fs::write(&src, source).map_err(|e| format!("write {}: {e}", src.display()))?;
    let mut cc = Command::new("cc");
    cc.args(flags).arg("-o").arg(&tmp).arg(&src).arg("-ldl");
    let built = run_bounded(cc, BUILD_TIMEOUT);
    let _ = std::fs::remove_file(&src);
    let built = built?;
    if !built.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cc {}: {}\n{}", built.status, built.stdout, built.stderr));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename {} to {}: {e}", tmp.display(), out.display()))?;
    Ok(out)
}

/// Makes `cmd` run with the shim preloaded and `spec` in [`SPEC_VAR`].
pub fn inject(cmd: &mut Command, spec: &str) {
    cmd.env("LD_PRELOAD", library()).env(SPEC_VAR, spec);
}
