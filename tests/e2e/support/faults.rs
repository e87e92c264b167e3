//! Syscall faults injected into a server: `faults.c`, beside this file, is
//! an `LD_PRELOAD` shim that makes chosen calls of `accept4`, `accept`,
//! `setsockopt(TCP_NODELAY)`, `fork`, `pthread_create` and
//! `epoll_ctl(EPOLL_CTL_ADD)` fail with a chosen errno (the spec format is
//! in its header). The server is a Rust binary linked dynamically with
//! glibc, and std, mio and nix call these libc symbols, so the shim's
//! definitions take their place.
//!
//! `Launch::new(mode, args).faults("accept4:ECONNABORTED:first=1:every=1:count=3").start()`
//! starts a server with it. The shim is compiled here once per run of the
//! test binary (`cc`, bounded in time) into `CARGO_TARGET_TMPDIR`, under a
//! name that hashes its source and flags, so later runs reuse it.

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
    match LIBRARY.get_or_init(build) {
        Ok(path) => path,
        Err(e) => panic!("building the fault-injection shim: {e}"),
    }
}

/// Compiles `faults.c` unless a build of this very source exists.
fn build() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut h = DefaultHasher::new();
    (SOURCE, FLAGS).hash(&mut h);
    let stem = format!("faults-{:016x}", h.finish());
    let so = dir.join(format!("{stem}.so"));
    if so.exists() {
        return Ok(so);
    }
    // Unique names while building: another test binary may build at once.
    let unique = format!("{stem}.{}", std::process::id());
    let (src, tmp) = (dir.join(format!("{unique}.c")), dir.join(format!("{unique}.so")));
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::fs::write(&src, SOURCE).map_err(|e| format!("write {}: {e}", src.display()))?;
    let mut cc = Command::new("cc");
    cc.args(FLAGS).arg("-o").arg(&tmp).arg(&src).arg("-ldl");
    let built = run_bounded(cc, BUILD_TIMEOUT);
    let _ = std::fs::remove_file(&src);
    let built = built?;
    if !built.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cc {}: {}\n{}", built.status, built.stdout, built.stderr));
    }
    std::fs::rename(&tmp, &so).map_err(|e| format!("rename {} to {}: {e}", tmp.display(), so.display()))?;
    Ok(so)
}

/// Makes `cmd` run with the shim preloaded and `spec` in [`SPEC_VAR`].
pub fn inject(cmd: &mut Command, spec: &str) {
    cmd.env("LD_PRELOAD", library()).env(SPEC_VAR, spec);
}
