//! The administrator's way to the router: questions (clients, subscriptions, retained
//! messages, figures), disconnecting a client, and topic watches. The dashboard's HTTP handlers
//! use an [`Admin`] handle.
//!
//! A question travels to the router over the connections' channel with a oneshot for the
//! answer; the router answers it between two batches from the core's admin functions
//! (`makelaar_core::admin`), so no lock is shared with routing. Topic watches get their copies
//! over a bounded channel per watch: when the browser falls behind, copies are dropped and
//! counted rather than slowing the router. The router's side of all this is
//! `crate::router::desk`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use makelaar_core::admin::{ListQuery, Overview, Page, RetainedInfo, SubscriptionInfo, Watched};
use makelaar_core::watch::{WatchError, WatchId};
use tokio::sync::{mpsc, oneshot};

pub use crate::router::desk::ClientRow;
use crate::router::desk::{AdminRequest, WatchSink};
use crate::router::ToRouter;

/// Copies a watch holds for its reader before new ones are dropped.
pub const WATCH_BUFFER: usize = 256;

/// How long a request waits for the router's answer.
pub const ANSWER_TIME: Duration = Duration::from_secs(5);

/// The router did not answer: the broker is stopping, or too busy to answer within
/// [`ANSWER_TIME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker did not answer within 5 s: it is stopping or overloaded")]
pub struct Stopped;

/// A handle for asking the router; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    router: mpsc::Sender<ToRouter>,
}

impl Admin {
    pub(crate) fn new(router: mpsc::Sender<ToRouter>) -> Admin {
        Admin { router }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        let asked = async {
            let request = ToRouter::Admin(Box::new(make(tx)));
            self.router.send(request).await.ok()?;
            rx.await.ok()
        };
        tokio::time::timeout(ANSWER_TIME, asked)
            .await
            .ok()
            .flatten()
            .ok_or(Stopped)
    }

    /// Sessions, sorted by client id.
    pub async fn clients(&self, q: ListQuery) -> Result<Page<ClientRow>, Stopped> {
        self.ask(|tx| AdminRequest::Clients(q, tx)).await
    }

    /// Subscriptions, sorted by client id and filter.
    pub async fn subscriptions(&self, q: ListQuery) -> Result<Page<SubscriptionInfo>, Stopped> {
        self.ask(|tx| AdminRequest::Subscriptions(q, tx)).await
    }

    /// Retained messages, sorted by topic.
    pub async fn retained(&self, q: ListQuery) -> Result<Page<RetainedInfo>, Stopped> {
        self.ask(|tx| AdminRequest::Retained(q, tx)).await
    }

    /// The router's figures.
    pub async fn overview(&self) -> Result<Overview, Stopped> {
        self.ask(AdminRequest::Overview).await
    }

    /// Each bridge's queue, by its local session's client id.
    pub(crate) async fn bridge_queues(
        &self,
    ) -> Result<std::collections::HashMap<String, makelaar_core::broker::BridgeQueue>, Stopped>
    {
        let within = std::time::Duration::from_secs(5);
        crate::router::desk::ask(&self.router, within, |r| {
            r.broker()
                .bridge_queues(std::time::Instant::now())
                .into_iter()
                .collect()
        })
        .await
        .ok_or(Stopped)
    }

    /// Disconnects the client connected with this id (see `Broker::admin_disconnect`); false
    /// when no such client is connected.
    pub async fn disconnect(&self, client_id: String) -> Result<bool, Stopped> {
        self.ask(|tx| AdminRequest::Disconnect(client_id, tx)).await
    }

    /// Opens a topic watch on `filter`.
    pub async fn watch(&self, filter: String) -> Result<Result<WatchStream, WatchError>, Stopped> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = WatchSink {
            tx,
            dropped: dropped.clone(),
        };
        let opened = self
            .ask(|reply| AdminRequest::Watch {
                filter,
                sink,
                reply,
            })
            .await?;
        Ok(opened.map(|id| WatchStream {
            id,
            rx,
            dropped,
            router: self.router.clone(),
        }))
    }
}

/// An open topic watch; closed when dropped.
pub struct WatchStream {
    id: WatchId,
    rx: mpsc::Receiver<Watched>,
    dropped: Arc<AtomicU64>,
    router: mpsc::Sender<ToRouter>,
}

impl WatchStream {
    /// The next copy; `None` once the broker stops.
    pub async fn next(&mut self) -> Option<Watched> {
        self.rx.recv().await
    }

    /// The next copy if one is ready now.
    pub fn try_next(&mut self) -> Option<Watched> {
        self.rx.try_recv().ok()
    }

    /// Copies dropped so far because this reader was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let msg = ToRouter::Admin(Box::new(AdminRequest::Unwatch(self.id)));
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.router.try_send(msg) {
            // The router is busy: tell it later rather than wait here. (Were this impossible,
            // the router would still close the watch at its next copy, finding it closed.)
            let router = self.router.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = router.send(msg).await;
                });
            }
        }
    }
}

/// Milliseconds since the Unix epoch of an `Instant` in the past (for `since` columns).
pub fn unix_millis(at: Instant) -> u64 {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
