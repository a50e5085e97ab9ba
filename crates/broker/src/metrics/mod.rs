//! `/metrics`: the broker's figures in the Prometheus text format. docs/metrics.md lists
//! every family.
//!
//! Each figure is counted where its state lives, and nothing is shared on the per-message
//! path: the core counts messages, drops and deliveries in plain integers on the router's
//! task; connection tasks tally bytes and packets locally and add them to the shared
//! [`crate::Counters`] once per wake-up; the store's committer thread times its commits.
//!
//! A scrape asks the router for a snapshot of what it owns ([`RouterFigures`], one message
//! through its channel, answered between two batches), reads the shell's atomic counters,
//! and writes the text. So every scrape is exact at the moment it is answered, and a broker
//! nobody scrapes pays nothing. The snapshot visits every session to sum their queues: about
//! a millisecond per 100,000 sessions of the router's time, once per scrape. Scrapes within
//! [`REUSE`] of each other share one snapshot ([`Cache`]), so however many clients scrape, the
//! router answers at most a few questions a second.
//!
//! This module makes the text; `crate::http` serves it (and answers 503 when the router does
//! not answer), so the metrics know nothing of HTTP.
//!
//! The text format is written directly (`text`) rather than with the `prometheus-client`
//! crate: that crate is built around metric objects registered once and updated in place
//! (atomics on the hot path), where this broker has a snapshot per scrape; and it does not
//! escape label values, which here include listener URLs from the configuration.

mod families;
pub(crate) mod text;

use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_core::{QueueTotals, Stats};
use makelaar_store::{CommitStats, StoreError};
use tokio::sync::mpsc;

use crate::admission::ListenerCount;
use crate::router::{desk, Ends, Router, ToRouter};
use crate::Counters;

pub(crate) use text::CONTENT_TYPE;

/// What a scrape reads besides the router's figures, and the snapshot scrapes share. One per
/// HTTP listener: the scrapes of one listener share a snapshot.
pub(crate) struct Metrics {
    /// The router's channel: asked for its figures, and its fill is a metric.
    router: mpsc::Sender<ToRouter>,
    /// Counters kept by the connection tasks.
    counters: Arc<Counters>,
    /// Every listener's connection counts, in configuration order.
    listeners: Vec<Arc<ListenerCount>>,
    /// When the broker started.
    started: Instant,
    cache: Cache,
}

impl Metrics {
    pub(crate) fn new(
        router: mpsc::Sender<ToRouter>,
        counters: Arc<Counters>,
        listeners: Vec<Arc<ListenerCount>>,
        started: Instant,
    ) -> Metrics {
        Metrics {
            router,
            counters,
            listeners,
            started,
            cache: Cache::default(),
        }
    }

    /// The exposition (its media type is [`CONTENT_TYPE`]); `None` when the router did not
    /// answer within `within`.
    pub(crate) async fn scrape(&self, within: Duration) -> Option<String> {
        let figures = self.cache.figures(&self.router, within).await?;
        Some(families::render(self, &figures))
    }
}

/// What the router owns, copied out for one scrape.
pub(crate) struct RouterFigures {
    pub stats: Stats,
    pub clients_connected: usize,
    pub sessions: usize,
    /// (ordinary, shared-group memberships).
    pub subscriptions: (usize, usize),
    /// (count, bytes).
    pub retained: (usize, usize),
    pub queues: QueueTotals,
    /// Bytes of messages in the durable store, as the core accounts them.
    pub stored_bytes: usize,
    /// Acknowledgements waiting for a commit.
    pub held_for_store: usize,
    pub ends: Ends,
    /// The store's figures and failure, when there is a store.
    pub store: Option<(CommitStats, Option<StoreError>)>,
    /// Each bridge's queue, by its local client id.
    pub bridge_queues: std::collections::HashMap<String, makelaar_core::broker::BridgeQueue>,
}

impl RouterFigures {
    /// Runs on the router's task.
    pub(crate) fn of(r: &Router) -> RouterFigures {
        let b = r.broker();
        RouterFigures {
            stats: b.stats().clone(),
            clients_connected: b.clients_connected(),
            sessions: b.sessions_total(),
            subscriptions: b.subscription_counts(),
            retained: (b.retained_count(), b.retained_bytes()),
            queues: b.queue_totals(),
            stored_bytes: b.stored_bytes(),
            held_for_store: r.held_for_store(),
            ends: r.ends().clone(),
            store: r.store_state(),
            bridge_queues: b.bridge_queues(Instant::now()).into_iter().collect(),
        }
    }
}

/// How long a snapshot of the router's figures serves further scrapes.
pub(crate) const REUSE: Duration = Duration::from_millis(250);

/// The latest snapshot (or failure to get one), shared by scrapes that come together.
#[derive(Default)]
struct Cache(tokio::sync::Mutex<Option<(Instant, Option<Arc<RouterFigures>>)>>);

impl Cache {
    /// A snapshot at most [`REUSE`] old; `None` when the router did not answer within
    /// `within` (then, for [`REUSE`], the scrapes waiting behind fail at once rather than each
    /// waiting again).
    async fn figures(
        &self,
        router: &mpsc::Sender<ToRouter>,
        within: Duration,
    ) -> Option<Arc<RouterFigures>> {
        let mut slot = self.0.lock().await;
        if let Some((at, figures)) = slot.as_ref() {
            if at.elapsed() < REUSE {
                return figures.clone();
            }
        }
        let figures = desk::ask(router, within, RouterFigures::of)
            .await
            .map(Arc::new);
        *slot = Some((Instant::now(), figures.clone()));
        figures
    }
}
