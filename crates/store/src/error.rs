//! The store's errors: each one sentence naming the file or directory and the way out.

use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong opening, reading or writing the store.
///
/// `Clone`, because one failed group commit is reported to every batch in the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another open in this one) holds the data directory.
    #[error(
        "the store directory {} is in use by another makelaar process{}; stop it or start with another data directory",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },

    /// The file is damaged, truncated or not a store at all.
    #[error(
        "the store file {} is damaged or unreadable ({detail}); start with --on-corrupt-store move-aside to keep it aside and start empty",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    /// The file was written by a makelaar with another store format.
    #[error(
        "the store file {} has format version {found}, this makelaar reads version {expected}; start the makelaar that wrote it, or start with --on-corrupt-store move-aside to keep it aside and start empty",
        path.display()
    )]
    Format {
        path: PathBuf,
        found: u64,
        expected: u64,
    },

    /// Reading or writing failed (disk full, permissions, I/O error).
    #[error("the store at {} could not be {action}: {source}; {}", path.display(), way_out(source))]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A value is larger than the store accepts (about 3 GiB per record).
    #[error("a record of {0} bytes is too large for the store")]
    TooLarge(usize),

    /// The committer stopped after an earlier failure, or was shut down; nothing more is
    /// written. The broker must stop: its memory and the disk no longer agree.
    #[error("the store stopped accepting writes after an earlier failure: {0}")]
    Stopped(String),

    /// Anything else the database reports.
    #[error("the store at {} failed: {detail}", path.display())]
    Database { path: PathBuf, detail: String },
}

/// The way out of an I/O error, by its kind.
fn way_out(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied => {
            "give the user running makelaar read and write access to it, or start with another --data-dir"
        }
        K::StorageFull | K::QuotaExceeded => "free disk space, or start with another --data-dir",
        K::ReadOnlyFilesystem => "remount it writable, or start with another --data-dir on a writable disk",
        K::NotFound => "check that its directory exists, or start with another --data-dir",
        _ => "check the disk and the path, or start with another --data-dir (or --in-memory)",
    }
}

impl StoreError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, e: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            action,
            source: Arc::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_names_the_path_and_a_way_out() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let msg = StoreError::io("/var/lib/makelaar", "opened", denied).to_string();
        assert!(
            msg.starts_with("the store at /var/lib/makelaar could not be opened: "),
            "{msg}"
        );
        assert!(msg.ends_with("give the user running makelaar read and write access to it, or start with another --data-dir"), "{msg}");
    }
}
