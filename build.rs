//! Build script of the root package: tells the end-to-end tests whether they
//! are built by root (`cfg(as_root)`), so the privilege tests run there (as
//! in CI) and show as ignored, "needs root", everywhere else.

use std::fs;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(as_root)");
    println!("cargo::rerun-if-changed=build.rs");
    // Built by another user, the same target dir gets the other answer.
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_USER");
    if effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=as_root");
    }
}

/// The effective uid of this build, from the second field of `Uid:` in
/// `/proc/self/status` (no libc needed here).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}
