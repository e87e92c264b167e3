//! `--user NAME [--group NAME]`: after binding (so a port below 1024 works
//! when started as root), drop to an unprivileged user: supplementary groups
//! first, then the group, then the user (the only order that works: after
//! setuid the process may no longer change its groups). Afterwards every
//! real, effective and saved id is the target's, and regaining root fails,
//! or the server refuses to run.
//!
//! Caller: `serve`, once, before any strategy starts threads or forks.

use std::io;

use nix::unistd::{Gid, Group, Uid, User};

/// Drops to `user` (and `group`, by default the user's primary group).
pub(crate) fn drop_to(user: &str, group: Option<&str>) -> io::Result<()> {
    let u = User::from_name(user)
        .map_err(io::Error::from)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no user named {user}")))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(io::Error::from)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no group named {g}")))?
                .gid
        }
        None => u.gid,
    };
    let fail = |what: &str, e: nix::Error| io::Error::new(io::ErrorKind::PermissionDenied, format!("{what}: {e}"));
    nix::unistd::setgroups(&[gid]).map_err(|e| fail("setgroups", e))?;
    nix::unistd::setgid(gid).map_err(|e| fail("setgid", e))?;
    nix::unistd::setuid(u.uid).map_err(|e| fail("setuid", e))?;
    verify(u.uid, gid)?;
    log::info!("running as user {user} (uid {}), group gid {}", u.uid, gid);
    Ok(())
}

fn verify(uid: Uid, gid: Gid) -> io::Result<()> {
    let r = nix::unistd::getresuid().map_err(io::Error::from)?;
    let g = nix::unistd::getresgid().map_err(io::Error::from)?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err(io::Error::other("privilege drop left another user or group id behind"));
    }
    if !uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(io::Error::other("privilege drop failed: setuid(0) still succeeds"));
    }
    Ok(())
}

/// Warns when the server runs as root and was not asked to drop privileges.
pub(crate) fn warn_if_root() {
    if Uid::effective().is_root() {
        log::warn!("running as root without --user: consider --user nobody");
    }
}
