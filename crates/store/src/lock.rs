//! The data directory's lock, and moving a damaged store file aside.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// The store file inside the data directory.
pub const STORE_FILE: &str = "makelaar.redb";
/// The lock file inside the data directory; holds the pid of the process that has it.
pub const LOCK_FILE: &str = "makelaar.lock";

/// An exclusive lock on a data directory, held while it lives.
///
/// redb locks its own file too, but our lock covers the whole directory: `move_aside` must not
/// rename a file that a running broker has open, and the error can name the directory and the
/// process that holds it. `flock` semantics: a second open in the same process is refused too,
/// and the kernel releases the lock when the process dies, even by `kill -9`.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates the directory if needed and locks it, or says who holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "created", e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, "opened", e))?;
        match file.try_lock() {
            Ok(()) => {
                // The pid is only for the error message of whoever is refused next.
                let pid = format!("{}\n", std::process::id());
                let written = file
                    .set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| file.write_all(pid.as_bytes()));
                if let Err(e) = written {
                    tracing::debug!("could not write the pid to {}: {e}", path.display());
                }
                Ok(DirLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    pid,
                })
            }
            Err(TryLockError::Error(e)) => Err(StoreError::io(&path, "locked", e)),
        }
    }
}

/// Renames a damaged `makelaar.redb` in `dir` to `makelaar.redb.corrupt-<unix time>`, so that
/// the next open starts empty and the old file is kept for inspection. Refused while another
/// process has the directory. Returns the new path.
pub fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let _lock = DirLock::acquire(dir)?;
    let from = dir.join(STORE_FILE);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Two moves within one second (a test, a crash loop) must not overwrite the first.
    let mut to = dir.join(format!("{STORE_FILE}.corrupt-{secs}"));
    let mut n = 1;
    while to.exists() {
        to = dir.join(format!("{STORE_FILE}.corrupt-{secs}-{n}"));
        n += 1;
    }
    std::fs::rename(&from, &to).map_err(|e| StoreError::io(&from, "moved aside", e))?;
    tracing::warn!(
        "moved the damaged store file {} aside to {}",
        from.display(),
        to.display()
    );
    Ok(to)
}
