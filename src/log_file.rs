//! `--log-file PATH`: log records appended to a file instead of stderr, by
//! every process of the server (a fork or prefork server's children inherit
//! the open file), and reopened on SIGUSR1 (logrotate's `postrotate`).
//!
//! - One line, one `write(2)`: env_logger formats a whole record into one
//!   buffer and hands it to [`Writer`] at once, which writes it with a
//!   single call on a file opened `O_APPEND`, so the kernel appends each
//!   record whole at the end, and records of several processes (or threads)
//!   never interleave mid-line.
//! - Reopening ([`LogFile::reopen`], the server's SIGUSR1 hook) opens `PATH`
//!   anew (creating it) and swaps it in under the lock the writes take: a
//!   record goes whole to the old file or whole to the new one. When the
//!   open fails (say the directory is not writable by `--user`), logging
//!   goes on to the old file and the server logs why.
//! - A daemon also points its standard error at the file
//!   ([`LogFile::capture_stderr`]; panics and its last error land there),
//!   and reopening moves that too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The open log file and where it lives.
#[derive(Debug)]
pub(crate) struct LogFile {
    /// Absolute (a daemon runs in `/`).
    path: PathBuf,
    file: Mutex<File>,
    /// Standard error is the file too (a daemon).
    stderr: AtomicBool,
}

impl LogFile {
    /// Opens (creates) `path` for appending; relative paths are made
    /// absolute first.
    pub(crate) fn open(path: &Path) -> io::Result<Arc<LogFile>> {
        let path = std::path::absolute(path)?;
        let file = append_to(&path)?;
        Ok(Arc::new(LogFile { path, file: Mutex::new(file), stderr: AtomicBool::new(false) }))
    }

    /// Where it lives.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again and writes there from now on (the old file
    /// closes once the record being written, if any, is done).
    pub(crate) fn reopen(&self) -> io::Result<()> {
        let new = append_to(&self.path).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}; still logging to the old file", self.path.display()))
        })?;
        if self.stderr.load(Ordering::Relaxed) {
            nix::unistd::dup2_stderr(&new)?;
        }
        *self.lock() = new;
        Ok(())
    }

    /// Points standard error at the file, now and after every reopen.
    pub(crate) fn capture_stderr(&self) -> io::Result<()> {
        nix::unistd::dup2_stderr(&*self.lock())?;
        self.stderr.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// What env_logger writes to.
    pub(crate) fn writer(self: &Arc<Self>) -> Writer {
        Writer(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn append_to(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

/// env_logger's target: each record in one `write(2)`.
#[derive(Debug)]
pub(crate) struct Writer(Arc<LogFile>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0.lock()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_writes_to_a_new_file_at_the_path_and_records_stay_whole() {
        let dir = std::env::temp_dir().join(format!("switchyard-log-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.log");
        let log = LogFile::open(&path).unwrap();
        let mut w = log.writer();
        w.write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.join("server.log.1")).unwrap();
        w.write_all(b"two\n").unwrap(); // still the old file: not reopened yet
        log.reopen().unwrap();
        w.write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("server.log.1")).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = log.reopen().unwrap_err();
        assert!(err.to_string().contains("still logging to the old file"), "{err}");
        w.write_all(b"four\n").unwrap(); // the old (now unlinked) file still takes records
    }
}
