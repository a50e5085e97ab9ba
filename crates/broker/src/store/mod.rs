//! The durable store in the running broker: opening it (lock, corruption, moving a damaged
//! file aside), restoring the core from it, and the router's side of group commit.
//!
//! The router drains the core's journal after each batch and submits it as one numbered
//! group ("epoch") to `makelaar_store::Committer`, which runs on its own thread and tells the
//! router through [`StoreEvent`] when a group is durable; `gate` holds the acknowledgements
//! until then. A returning session's backlog is read on the store's thread, after every
//! write submitted before the request.

mod convert;
pub(crate) mod gate;

use std::sync::Arc;

use makelaar_core::persist::Change;
use makelaar_core::Broker;
use makelaar_store::{Committer, CommitterOptions, RedbOptions, RedbStore, StoreError};
use tokio::sync::mpsc;

use crate::config::{CorruptStorePolicy, StoreConfig};
use crate::ConfigError;
pub(crate) use convert::Clock;
use convert::{Reader, Writer};

/// What the store's thread tells the router.
pub(crate) enum StoreEvent {
    /// The group with this number is committed (or failed).
    Committed(u64, Result<(), StoreError>),
    /// A session's kept messages, read for `Action::LoadBacklog`.
    Loaded(
        Arc<str>,
        Result<Vec<(u64, makelaar_store::QueuedRecord)>, StoreError>,
    ),
}

/// The router's handle on the store.
pub(crate) struct Persistence {
    committer: Committer,
    writer: Writer,
    reader: Reader,
    events: mpsc::UnboundedSender<StoreEvent>,
}

/// An opened store and what start-up read from it.
pub(crate) struct Opened {
    store: RedbStore,
    index: makelaar_store::Index,
    config: StoreConfig,
}

/// Opens the store at `config.dir`: one clear error for a directory in use by another broker,
/// and for a damaged file unless the policy is to move it aside and start empty.
pub(crate) fn open(config: &StoreConfig) -> Result<Opened, ConfigError> {
    let options = RedbOptions::default();
    let store = match RedbStore::open(&config.dir, &options) {
        Err(StoreError::Corrupt { path, detail })
            if config.on_corrupt == CorruptStorePolicy::MoveAside =>
        {
            let aside = makelaar_store::move_aside(&config.dir).map_err(store_error)?;
            tracing::warn!(file = %path.display(), moved_to = %aside.display(), detail, "the store was damaged: moved it aside and starting with an empty one");
            RedbStore::open(&config.dir, &options).map_err(store_error)?
        }
        other => other.map_err(store_error)?,
    };
    let index = makelaar_store::Store::load_index(&store).map_err(store_error)?;
    Ok(Opened {
        store,
        index,
        config: config.clone(),
    })
}

fn store_error(e: StoreError) -> ConfigError {
    ConfigError::Store(e.to_string())
}

impl Opened {
    /// Puts what the store holds into the broker (sessions offline, their messages left in
    /// the store until they return), turns the broker's journal on, and starts the committer.
    pub(crate) fn restore(
        self,
        broker: &mut Broker,
        events: mpsc::UnboundedSender<StoreEvent>,
    ) -> Persistence {
        let clock = Clock::now();
        let mut reader = Reader::new(clock);
        let (sessions, retained) = (self.index.sessions.len(), self.index.retained.len());
        let queued: u64 = self.index.sessions.iter().map(|s| s.queue.count).sum();
        for s in self.index.sessions {
            broker.restore_session(reader.session(s));
        }
        for (_, m) in self.index.retained {
            broker.restore_retained(reader.message(&Arc::new(m)));
        }
        broker.enable_journal();
        tracing::info!(
            dir = %self.config.dir.display(),
            sessions,
            queued_messages = queued,
            retained,
            "store opened"
        );
        let options = CommitterOptions {
            durability: self.config.durability,
            ..CommitterOptions::default()
        };
        Persistence {
            committer: Committer::start(Box::new(self.store), options),
            writer: Writer::new(clock),
            reader: Reader::new(clock),
            events,
        }
    }
}

impl Persistence {
    /// Hands a group of changes to the committer; `epoch` comes back in
    /// [`StoreEvent::Committed`]. Blocks while the committer's queue is full: the disk then
    /// sets the pace of the whole broker.
    pub(crate) fn submit(&mut self, epoch: u64, changes: Vec<Change>) {
        let ops = self.writer.ops(changes);
        let events = self.events.clone();
        self.committer.submit(
            ops,
            Box::new(move |result| {
                let _ = events.send(StoreEvent::Committed(epoch, result));
            }),
        );
    }

    /// Reads a session's kept messages on the store's thread; the answer comes back as
    /// [`StoreEvent::Loaded`].
    pub(crate) fn load_backlog(&self, client_id: Arc<str>) {
        let events = self.events.clone();
        self.committer.read(move |store| {
            let result = store.load_queue(&client_id);
            let _ = events.send(StoreEvent::Loaded(client_id, result));
        });
    }

    /// Converts a loaded backlog for the core.
    pub(crate) fn backlog(
        &mut self,
        queue: Vec<(u64, makelaar_store::QueuedRecord)>,
    ) -> Vec<makelaar_core::persist::LoadedMessage> {
        self.reader.backlog(queue)
    }

    /// Commit figures, for logs and metrics.
    pub(crate) fn stats(&self) -> makelaar_store::CommitStats {
        self.committer.stats()
    }

    /// Why the store stopped taking writes, once a commit failed.
    pub(crate) fn failure(&self) -> Option<StoreError> {
        self.committer.failure()
    }

    /// Waits for everything submitted to be committed and closes the store.
    pub(crate) fn close(self) {
        if let Err(e) = self.committer.shutdown() {
            tracing::error!(error = %e, "the store could not be closed cleanly");
        }
    }
}
