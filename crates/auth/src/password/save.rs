//! Writing a password file without losing it or its owner.
//!
//! The new contents go to a temporary file next to the old one, which then replaces it by a
//! rename: a broker reloading at that moment reads the old file or the new one, never half of
//! one, and a full disk leaves the old file as it was. The new file gets the old one's
//! permissions and owner (a root-run `makelaar passwd` must not leave a file the broker's own
//! user can no longer read). A symbolic link is followed: its target is replaced, not the link.
//!
//! Where that is not possible (a directory the user may not write, or an owner the user may
//! not give away), the file is rewritten in place, as `mosquitto_passwd` always does.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(super) fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let existing = std::fs::metadata(&path).ok();
    let tmp = temporary_name(&path);
    // Left by a crashed run of a process with the same id: stale.
    let _ = std::fs::remove_file(&tmp);
    let replaced = (|| {
        let mut out = create_private(&tmp)?;
        out.write_all(contents)?;
        out.sync_all()?;
        if let Some(old) = &existing {
            keep_owner(&tmp, old)?;
            std::fs::set_permissions(&tmp, old.permissions())?;
        }
        std::fs::rename(&tmp, &path)
    })();
    match replaced {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            if existing.is_some() {
                write_in_place(&path, contents)
            } else {
                Err(e)
            }
        }
    }
}

fn temporary_name(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_in_place(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut out = OpenOptions::new().write(true).truncate(true).open(path)?;
    out.write_all(contents)?;
    out.sync_all()
}

#[cfg(unix)]
fn keep_owner(tmp: &Path, old: &Metadata) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let new = std::fs::metadata(tmp)?;
    if (new.uid(), new.gid()) == (old.uid(), old.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(tmp, Some(old.uid()), Some(old.gid()))
}

#[cfg(not(unix))]
fn keep_owner(_tmp: &Path, _old: &Metadata) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}
