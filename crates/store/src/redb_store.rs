//! The store on disk: one redb file, `makelaar.redb`, in the data directory.
//!
//! Tables (keys are redb tuples, ordered by client id first, so one session's records are
//! one range):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"format"` | [`FORMAT_VERSION`] |
//! | `sessions` | client id | session record |
//! | `subscriptions` | (client id, filter) | subscription record |
//! | `queue` | (client id, seq) | queued message |
//! | `queue_depth` | client id | (count, bytes, next seq) of the session's queue |
//! | `inbound_qos2` | (client id, packet id) | () |
//! | `retained` | topic | message |
//!
//! `queue_depth` is kept up to date in the same transaction as `queue`, so start-up learns
//! every session's queue depth without reading a single queued message.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};

use crate::codec::{self, CodecError};
use crate::error::StoreError;
use crate::lock::{DirLock, STORE_FILE};
use crate::record::{Index, QueueDepth, QueuedRecord, SessionIndex};
use crate::{Op, Store, StoreStats};

mod apply;

/// The format of the tables and values; a file with another one is refused, not misread.
pub const FORMAT_VERSION: u64 = 1;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub(crate) const SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("subscriptions");
pub(crate) const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
pub(crate) const DEPTH: TableDefinition<&str, &[u8]> = TableDefinition::new("queue_depth");
pub(crate) const INBOUND: TableDefinition<(&str, u16), ()> = TableDefinition::new("inbound_qos2");
pub(crate) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

const FORMAT_KEY: &str = "format";

/// How to open the store.
#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// Memory redb may use to cache pages of the file.
    pub cache_bytes: usize,
    /// Check every page's checksum on every open, not only after a crash: a file damaged
    /// while the broker was stopped is then refused as `Corrupt` at once instead of when the
    /// damaged page is read. Costs one read of the whole file per start.
    pub verify_on_open: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            cache_bytes: 64 << 20,
            verify_on_open: false,
        }
    }
}

/// The redb implementation of [`Store`]. Holds the data directory's lock while open.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    // Dropped after `db` (fields drop in order), so the directory stays locked until the
    // file is closed.
    _lock: DirLock,
}

/// Any failure inside a redb call, turned into a [`StoreError`] (with the path) at the edge.
pub(crate) enum Fail {
    Redb(redb::Error),
    Codec(CodecError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Fail {
                Fail::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<CodecError> for Fail {
    fn from(e: CodecError) -> Fail {
        Fail::Codec(e)
    }
}

impl Fail {
    fn into_store_error(self, path: &Path, dir: &Path) -> StoreError {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        match self {
            Fail::Codec(CodecError(what)) => corrupt(format!("a stored {what} does not decode")),
            Fail::Redb(e) => match e {
                redb::Error::Corrupted(detail) => corrupt(detail),
                redb::Error::RepairAborted => corrupt("its repair was aborted".into()),
                redb::Error::UpgradeRequired(v) => corrupt(format!("redb file format {v}")),
                redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
                    dir: dir.to_path_buf(),
                    pid: None,
                },
                redb::Error::ValueTooLarge(n) => StoreError::TooLarge(n),
                // redb reports a file that is not a database at all as invalid data, and one
                // cut short as an unexpected end of file.
                redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    corrupt(io.to_string())
                }
                redb::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    corrupt("the file is shorter than its contents".into())
                }
                redb::Error::Io(io) => StoreError::io(path, "read or written", io),
                other => StoreError::Database {
                    path: path.to_path_buf(),
                    detail: other.to_string(),
                },
            },
        }
    }
}

/// Runs `f`, turning a panic inside redb into `Corrupt`: redb documents that a file altered
/// behind its back may panic rather than error, and a store that cannot be read must give one
/// clear error, not a crash loop.
fn guarded<T>(
    path: &Path,
    dir: &Path,
    f: impl FnOnce() -> Result<T, Fail>,
) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.into_store_error(path, dir)),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the database library failed".into());
            Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail,
            })
        }
    }
}

impl RedbStore {
    /// Opens (or creates) `makelaar.redb` in `dir`, creating the directory and locking it.
    ///
    /// Errors: [`StoreError::Locked`] when another process (or another open in this one) has
    /// the directory; [`StoreError::Corrupt`] for a damaged or foreign file (see
    /// [`crate::move_aside`]); [`StoreError::Format`] for a file of another store format.
    pub fn open(dir: impl AsRef<Path>, options: &RedbOptions) -> Result<RedbStore, StoreError> {
        let dir = dir.as_ref();
        let lock = DirLock::acquire(dir)?;
        let path = dir.join(STORE_FILE);
        let logged = std::cell::Cell::new(None);
        let repair_path = path.clone();
        let db = guarded(&path, dir, || {
            let mut builder = Database::builder();
            builder
                .set_cache_size(options.cache_bytes)
                .set_check_integrity_on_open(options.verify_on_open)
                .set_repair_callback(move |session| {
                    // Called, often, after an unclean stop (a crash, kill -9) while redb checks
                    // every page; a line per quarter says why start-up takes a while.
                    let quarter = (session.progress() * 4.0) as u8;
                    if logged.get() != Some(quarter) {
                        logged.set(Some(quarter));
                        tracing::info!(
                            "checking {} after an unclean stop: {}%",
                            repair_path.display(),
                            u32::from(quarter) * 25
                        );
                    }
                });
            Ok(builder.create(&path)?)
        })?;
        let store = RedbStore {
            db,
            path,
            _lock: lock,
        };
        store.init(dir)?;
        Ok(store)
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the format marker, or writes it (and creates the tables) in a new file.
    fn init(&self, dir: &Path) -> Result<(), StoreError> {
        let found = guarded(&self.path, dir, || {
            let txn = self.db.begin_read()?;
            let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
            if names.is_empty() {
                return Ok(None);
            }
            if !names.iter().any(|n| n == META.name()) {
                return Ok(Some(None));
            }
            let meta = txn.open_table(META)?;
            let version = meta.get(FORMAT_KEY)?.map(|g| g.value());
            Ok(Some(version))
        })?;
        match found {
            Some(Some(FORMAT_VERSION)) => Ok(()),
            Some(Some(v)) => Err(StoreError::Format {
                path: self.path.clone(),
                found: v,
                expected: FORMAT_VERSION,
            }),
            Some(None) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: "a redb file without the makelaar format marker".into(),
            }),
            None => guarded(&self.path, dir, || {
                let txn = self.db.begin_write()?;
                txn.open_table(META)?.insert(FORMAT_KEY, FORMAT_VERSION)?;
                txn.open_table(SESSIONS)?;
                txn.open_table(SUBSCRIPTIONS)?;
                txn.open_table(QUEUE)?;
                txn.open_table(DEPTH)?;
                txn.open_table(INBOUND)?;
                txn.open_table(RETAINED)?;
                txn.commit()?;
                Ok(())
            }),
        }
    }

    fn guard<T>(&self, f: impl FnOnce() -> Result<T, Fail>) -> Result<T, StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        guarded(&self.path, dir, f)
    }

    /// The size of the store file.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

impl Store for RedbStore {
    fn apply(&mut self, ops: &[Op], sync: bool) -> Result<(), StoreError> {
        let db = &self.db;
        self.guard(|| apply::apply(db, ops, sync))
    }

    fn load_index(&self) -> Result<Index, StoreError> {
        self.guard(|| {
            let txn = self.db.begin_read()?;
            let mut index = Index::default();
            let mut pos = std::collections::HashMap::new();
            for entry in txn.open_table(SESSIONS)?.iter()? {
                let (k, v) = entry?;
                let client_id = k.value().to_owned();
                pos.insert(client_id.clone(), index.sessions.len());
                index.sessions.push(SessionIndex {
                    client_id,
                    session: codec::decode_session(v.value())?,
                    subscriptions: Vec::new(),
                    inbound_qos2: Vec::new(),
                    queue: QueueDepth::default(),
                });
            }
            for entry in txn.open_table(SUBSCRIPTIONS)?.iter()? {
                let (k, v) = entry?;
                let (client_id, filter) = k.value();
                match pos.get(client_id).and_then(|&i| index.sessions.get_mut(i)) {
                    Some(s) => s
                        .subscriptions
                        .push((filter.to_owned(), codec::decode_subscription(v.value())?)),
                    None => index.orphans += 1,
                }
            }
            for entry in txn.open_table(INBOUND)?.iter()? {
                let (k, _) = entry?;
                let (client_id, packet_id) = k.value();
                match pos.get(client_id).and_then(|&i| index.sessions.get_mut(i)) {
                    Some(s) => s.inbound_qos2.push(packet_id),
                    None => index.orphans += 1,
                }
            }
            for entry in txn.open_table(DEPTH)?.iter()? {
                let (k, v) = entry?;
                let (count, bytes, next_seq) = codec::decode_depth(v.value())?;
                match pos.get(k.value()).and_then(|&i| index.sessions.get_mut(i)) {
                    Some(s) => {
                        s.queue = QueueDepth {
                            count,
                            bytes,
                            next_seq,
                        }
                    }
                    None => index.orphans += count,
                }
            }
            for entry in txn.open_table(RETAINED)?.iter()? {
                let (k, v) = entry?;
                index
                    .retained
                    .push((k.value().to_owned(), codec::decode_message(v.value())?));
            }
            Ok(index)
        })
    }

    fn load_queue(&self, client_id: &str) -> Result<Vec<(u64, QueuedRecord)>, StoreError> {
        self.guard(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(QUEUE)?;
            let mut out = Vec::new();
            for entry in table.range((client_id, 0)..=(client_id, u64::MAX))? {
                let (k, v) = entry?;
                out.push((k.value().1, codec::decode_queued(v.value())?));
            }
            Ok(out)
        })
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = self.guard(|| {
            let txn = self.db.begin_read()?;
            Ok(StoreStats {
                sessions: txn.open_table(SESSIONS)?.len()?,
                subscriptions: txn.open_table(SUBSCRIPTIONS)?.len()?,
                queued: txn.open_table(QUEUE)?.len()?,
                retained: txn.open_table(RETAINED)?.len()?,
                file_bytes: 0,
            })
        })?;
        stats.file_bytes = self.file_bytes();
        Ok(stats)
    }
}
