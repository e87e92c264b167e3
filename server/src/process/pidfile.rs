//! `--pid-file PATH`: the file through which scripts find a running server.
//!
//! - [`check`] before binding: a file naming a live process that runs this
//!   same program is an error ("already running as PID N"); anything else
//!   (a dead pid, a pid reused by another program, garbage) is stale and
//!   will be replaced, with a warning.
//! - [`PidFile::write`] once bound and after the privilege drop, so the
//!   user that serves is the one that will remove it: the pid and a newline
//!   go to a temporary file in the same directory, which is renamed over
//!   `PATH` (a reader sees the old content or the new, never a partial one).
//! - Dropping the [`PidFile`] (a clean exit, or an error after start)
//!   removes the file, in the process that wrote it only, and only while it
//!   still names that process.
//!
//! The server holds its file process-wide ([`hold`]) so that the SIGUSR2
//! binary upgrade, run by whichever loop owns the signals, reaches it. It
//! follows nginx's convention: when the upgrade starts the old server's
//! file becomes `PATH.oldbin` ([`upgrade_begins`], so the new server finds
//! `PATH` free and writes it once bound); if the upgrade fails, it moves
//! back to `PATH` ([`upgrade_failed`]); if it succeeds, the old server
//! removes `PATH.oldbin` when it exits.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// This process's pid file, while it holds one.
static HELD: Mutex<Option<PidFile>> = Mutex::new(None);

/// A hold on the process's pid file: dropping it removes the file.
#[derive(Debug)]
pub(crate) struct Held(());

/// Keeps `file` as this process's pid file until the [`Held`] is dropped.
pub(crate) fn hold(file: PidFile) -> Held {
    *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Held(())
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(HELD.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// A binary upgrade starts: the pid file (if any) moves to `PATH.oldbin`.
/// A failure is logged: the new server will then find `PATH` taken and
/// refuse to start, so the upgrade fails and this server serves on.
pub(crate) fn upgrade_begins() {
    if let Some(f) = HELD.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        match f.rename_to_oldbin() {
            Ok(()) => log::info!("upgrade: pid file moved to {}", f.oldbin_path().display()),
            Err(e) => log::warn!("upgrade: cannot move the pid file to {}: {e}", f.oldbin_path().display()),
        }
    }
}

/// The binary upgrade failed: the pid file moves back to `PATH`.
pub(crate) fn upgrade_failed() {
    if let Some(f) = HELD.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        if let Err(e) = f.restore() {
            log::warn!("upgrade: cannot move the pid file back from {}: {e}", f.oldbin_path().display());
        }
    }
}

/// A pid file this process wrote; removed when dropped.
#[derive(Debug)]
pub(crate) struct PidFile {
    /// `PATH`, as configured.
    path: PathBuf,
    /// The process that wrote it (forked children never remove it).
    pid: u32,
    /// Whether it sits at `PATH.oldbin` now (during an upgrade).
    oldbin: bool,
}

/// Fails with "already running as PID N" when `path` names a live process
/// that runs this program; warns that a stale file will be replaced
/// otherwise. A missing file is fine.
pub(crate) fn check(path: &Path) -> io::Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("pid file {}: {e}", path.display()))),
    };
    let me = std::process::id();
    match text.trim().parse::<u32>() {
        Ok(pid) if pid != me && runs_this_program(pid, &own_exe()) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("already running as PID {pid} (pid file {})", path.display()),
        )),
        Ok(pid) => {
            log::warn!("pid file {}: stale (PID {pid} is not a running server); replacing it", path.display());
            Ok(())
        }
        Err(_) => {
            log::warn!("pid file {}: stale (no pid in it: {:?}); replacing it", path.display(), text.trim());
            Ok(())
        }
    }
}

impl PidFile {
    /// Writes this process's pid and a newline to `path`, atomically
    /// (a temporary file in the same directory, renamed over `path`).
    pub(crate) fn write(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        let context = |e: io::Error| io::Error::new(e.kind(), format!("pid file {}: {e}", path.display()));
        let tmp = sibling(path, &format!(".tmp.{pid}"));
        let written = (|| {
            // A new file of our own: never through a link someone left there.
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(format!("{pid}\n").as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(context(e));
        }
        Ok(PidFile { path: path.to_path_buf(), pid, oldbin: false })
    }

    /// `PATH.oldbin`, where the file sits during an upgrade.
    pub(crate) fn oldbin_path(&self) -> PathBuf {
        sibling(&self.path, ".oldbin")
    }

    /// Where the file is now.
    pub(crate) fn current(&self) -> PathBuf {
        if self.oldbin {
            self.oldbin_path()
        } else {
            self.path.clone()
        }
    }

    /// An upgrade begins: `PATH` becomes `PATH.oldbin`, leaving `PATH` to the
    /// new server (nginx's convention). Idempotent.
    pub(crate) fn rename_to_oldbin(&mut self) -> io::Result<()> {
        if !self.oldbin {
            fs::rename(&self.path, self.oldbin_path())?;
            self.oldbin = true;
        }
        Ok(())
    }

    /// The upgrade failed: `PATH.oldbin` moves back to `PATH` (replacing
    /// whatever a new server that did not become ready left there).
    /// Idempotent.
    pub(crate) fn restore(&mut self) -> io::Result<()> {
        if self.oldbin {
            fs::rename(self.oldbin_path(), &self.path)?;
            self.oldbin = false;
        }
        Ok(())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            return; // a forked child unwinding: the file is its parent's
        }
        let at = self.current();
        let ours = fs::read_to_string(&at).is_ok_and(|t| t.trim().parse() == Ok(self.pid));
        if ours {
            if let Err(e) = fs::remove_file(&at) {
                log::warn!("pid file {}: {e}", at.display());
            }
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The executable of a process, as `/proc/PID/exe` names it (without the
/// ` (deleted)` that follows a binary replaced on disk, as in an upgrade).
fn exe_of(pid: &str) -> io::Result<PathBuf> {
    let link = fs::read_link(format!("/proc/{pid}/exe"))?;
    let s = link.to_string_lossy();
    Ok(s.strip_suffix(" (deleted)").map_or(link.clone(), PathBuf::from))
}

fn own_exe() -> PathBuf {
    exe_of("self").unwrap_or_default()
}

/// Whether `pid` is alive (not a zombie) and runs the program at `exe`.
/// When its executable cannot be read (another user's process), its
/// command name decides.
fn runs_this_program(pid: u32, exe: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, None | Some("Z" | "X" | "x")) {
        return false;
    }
    match exe_of(&pid.to_string()) {
        Ok(theirs) => theirs == exe,
        Err(_) => {
            let comm = |p: &str| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let ours = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // comm is the name truncated to 15 bytes.
            let theirs = comm(&pid.to_string());
            !theirs.trim().is_empty() && ours.starts_with(theirs.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchyard-pidfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn writes_the_pid_and_a_newline_atomically_and_removes_it_when_dropped() {
        let dir = scratch("write");
        let path = dir.join("s.pid");
        fs::write(&path, "12345678\n").unwrap(); // an old one, replaced
        let pf = PidFile::write(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        assert_eq!(names(&dir), ["s.pid"], "no temporary file left behind");
        drop(pf);
        assert!(names(&dir).is_empty(), "removed when dropped");
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let path = std::env::temp_dir().join("switchyard-no-such-dir-here/s.pid");
        let err = PidFile::write(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("switchyard-no-such-dir-here/s.pid"), "{err}");
    }

    #[test]
    fn renames_to_oldbin_and_restores() {
        let dir = scratch("oldbin");
        let path = dir.join("s.pid");
        let mut pf = PidFile::write(&path).unwrap();
        let mine = format!("{}\n", std::process::id());
        pf.rename_to_oldbin().unwrap();
        pf.rename_to_oldbin().unwrap(); // idempotent
        assert_eq!(names(&dir), ["s.pid.oldbin"]);
        assert_eq!(fs::read_to_string(dir.join("s.pid.oldbin")).unwrap(), mine);
        assert_eq!(pf.current(), dir.join("s.pid.oldbin"));
        // A new server that did not become ready left its own file behind:
        // the restore replaces it.
        fs::write(&path, "99999999\n").unwrap();
        pf.restore().unwrap();
        pf.restore().unwrap(); // idempotent
        assert_eq!(names(&dir), ["s.pid"]);
        assert_eq!(fs::read_to_string(&path).unwrap(), mine);
        drop(pf);
        assert!(names(&dir).is_empty());
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn after_an_upgrade_only_the_oldbin_file_is_removed() {
        let dir = scratch("upgraded");
        let path = dir.join("s.pid");
        let mut pf = PidFile::write(&path).unwrap();
        pf.rename_to_oldbin().unwrap();
        // The new server wrote PATH once ready; the old one exits.
        fs::write(&path, "99999999\n").unwrap();
        drop(pf);
        assert_eq!(names(&dir), ["s.pid"], "the new server's file stays");
        assert_eq!(fs::read_to_string(&path).unwrap(), "99999999\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_names_another_process_is_not_removed() {
        let dir = scratch("replaced");
        let path = dir.join("s.pid");
        let pf = PidFile::write(&path).unwrap();
        fs::write(&path, "99999999\n").unwrap();
        drop(pf);
        assert_eq!(fs::read_to_string(&path).unwrap(), "99999999\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_process_of_this_program_is_running_anything_else_is_stale() {
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = sleeper.id();
        let sleep_exe = exe_of(&pid.to_string()).unwrap();
        assert!(runs_this_program(pid, &sleep_exe), "a live `sleep` runs `sleep`");
        assert!(!runs_this_program(pid, &own_exe()), "a live `sleep` is not this program");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(!runs_this_program(pid, &sleep_exe), "a dead process runs nothing");
    }

    #[test]
    fn check_accepts_missing_stale_and_garbage_files() {
        let dir = scratch("check");
        let path = dir.join("s.pid");
        check(&path).unwrap();
        fs::write(&path, "not a pid\n").unwrap();
        check(&path).unwrap();
        // This process itself (a test binary, not a server it would clash with).
        fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        check(&path).unwrap();
        // The test binary's parent (cargo, or a shell) is no server.
        fs::write(&path, format!("{}\n", std::os::unix::process::parent_id())).unwrap();
        check(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
