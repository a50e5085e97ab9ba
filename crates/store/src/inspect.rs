//! What is in a store, for `makelaar store inspect`: text for people (`Display`), JSON for
//! tools (`Serialize`, e.g. with `serde_json`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::lock::STORE_FILE;
use crate::record::NEVER_EXPIRES;
use crate::{RedbOptions, RedbStore, Store, StoreError};

/// One session in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    pub client_id: String,
    /// Protocol level: 3 (3.1), 4 (3.1.1) or 5 (5.0).
    pub protocol_version: u8,
    /// Session Expiry Interval in seconds; `None` never expires.
    pub expiry_interval: Option<u32>,
    /// Whether a client was connected when the broker stopped.
    pub connected_at_shutdown: bool,
    pub disconnected_at_ms: Option<u64>,
    pub pending_will: bool,
    /// Filters as subscribed.
    pub subscriptions: Vec<String>,
    /// Queued and inflight messages.
    pub queued: u64,
    pub queued_bytes: u64,
    pub inbound_qos2: usize,
}

/// What [`inspect`] finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub sessions: Vec<SessionSummary>,
    pub retained: u64,
    /// Topic + payload bytes of the retained messages.
    pub retained_bytes: u64,
    /// Records of client ids without a session record (see `Index::orphans`).
    pub orphans: u64,
}

/// Reads a summary of the store in `dir` without changing it. Refused with
/// [`StoreError::Locked`] while a broker has the directory, and with an I/O error when there is
/// no store file (rather than creating one).
pub fn inspect(dir: impl AsRef<Path>) -> Result<Summary, StoreError> {
    let dir = dir.as_ref();
    let path = dir.join(STORE_FILE);
    if let Err(e) = std::fs::metadata(&path) {
        return Err(StoreError::io(&path, "opened", e));
    }
    let store = RedbStore::open(dir, &RedbOptions::default())?;
    let index = store.load_index()?;
    let sessions = index
        .sessions
        .into_iter()
        .map(|s| SessionSummary {
            protocol_version: s.session.protocol_version,
            expiry_interval: (s.session.expiry_interval != NEVER_EXPIRES)
                .then_some(s.session.expiry_interval),
            connected_at_shutdown: s.session.disconnected_at_ms.is_none(),
            disconnected_at_ms: s.session.disconnected_at_ms,
            pending_will: s.session.pending_will.is_some(),
            subscriptions: s.subscriptions.into_iter().map(|(f, _)| f).collect(),
            queued: s.queue.count,
            queued_bytes: s.queue.bytes,
            inbound_qos2: s.inbound_qos2.len(),
            client_id: s.client_id,
        })
        .collect();
    Ok(Summary {
        file_bytes: store.file_bytes(),
        path,
        sessions,
        retained: index.retained.len() as u64,
        retained_bytes: index.retained.iter().map(|(_, m)| m.weight()).sum(),
        orphans: index.orphans,
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queued: u64 = self.sessions.iter().map(|s| s.queued).sum();
        let queued_bytes: u64 = self.sessions.iter().map(|s| s.queued_bytes).sum();
        writeln!(
            f,
            "store     {} ({} bytes)",
            self.path.display(),
            self.file_bytes
        )?;
        writeln!(f, "sessions  {}", self.sessions.len())?;
        writeln!(f, "queued    {queued} messages, {queued_bytes} bytes")?;
        writeln!(
            f,
            "retained  {} messages, {} bytes",
            self.retained, self.retained_bytes
        )?;
        if self.orphans > 0 {
            writeln!(f, "orphans   {} records without a session", self.orphans)?;
        }
        if self.sessions.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<24} {:>3} {:>10} {:>9} {:>5} {:>8} {:>10} {:>5}",
            "client id", "v", "expiry", "state", "subs", "queued", "bytes", "qos2"
        )?;
        for s in &self.sessions {
            let expiry = s
                .expiry_interval
                .map_or_else(|| "never".to_owned(), |e| format!("{e}s"));
            let state = if s.connected_at_shutdown {
                "connected"
            } else {
                "offline"
            };
            writeln!(
                f,
                "{:<24} {:>3} {:>10} {:>9} {:>5} {:>8} {:>10} {:>5}",
                s.client_id,
                s.protocol_version,
                expiry,
                state,
                s.subscriptions.len(),
                s.queued,
                s.queued_bytes,
                s.inbound_qos2
            )?;
        }
        Ok(())
    }
}
