//! Questions to the router from outside the MQTT connections, the router's side: the
//! administrator's requests as they travel in [`ToRouter::Admin`] (asked by `crate::admin`),
//! answered on the router's task from the core's admin functions; the topic watches' sinks,
//! which the router fills after each batch; and [`ask`], which runs a closure on the router's
//! task ([`ToRouter::Inspect`]: the HTTP side's health and metrics).
//!
//! It lives under `router` so that the router needs nothing from the modules that ask it:
//! they all depend on the router, never the reverse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_core::admin::{
    ClientInfo, ListQuery, Overview, Page, RetainedInfo, SubscriptionInfo, Watched,
};
use makelaar_core::session::ConnId;
use makelaar_core::watch::{WatchError, WatchId};
use makelaar_core::Broker;
use tokio::sync::{mpsc, oneshot};

use super::{Router, ToRouter};

/// A session as the dashboard lists it: the core's figures and the connection's address.
#[derive(Debug, Clone)]
pub struct ClientRow {
    pub info: ClientInfo,
    /// The client's address, while it is connected.
    pub peer: Option<SocketAddr>,
}

/// Where a watch's copies go (held by the router).
#[derive(Debug)]
pub(crate) struct WatchSink {
    pub tx: mpsc::Sender<Watched>,
    pub dropped: Arc<AtomicU64>,
}

impl WatchSink {
    /// Hands a copy to the reader; false once the reader is gone.
    pub fn offer(&self, w: Watched) -> bool {
        match self.tx.try_send(w) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// What the administrator asks the router.
#[derive(Debug)]
pub(crate) enum AdminRequest {
    Clients(ListQuery, oneshot::Sender<Page<ClientRow>>),
    Subscriptions(ListQuery, oneshot::Sender<Page<SubscriptionInfo>>),
    Retained(ListQuery, oneshot::Sender<Page<RetainedInfo>>),
    Overview(oneshot::Sender<Overview>),
    Disconnect(String, oneshot::Sender<bool>),
    Watch {
        filter: String,
        sink: WatchSink,
        reply: oneshot::Sender<Result<WatchId, WatchError>>,
    },
    Unwatch(WatchId),
}

/// The router's side: answers requests and hands watched copies to their readers.
#[derive(Debug, Default)]
pub(crate) struct AdminDesk {
    /// Where each topic watch's copies go; empty unless the dashboard watches.
    watches: HashMap<WatchId, WatchSink>,
    watched: Vec<(WatchId, Watched)>,
}

impl AdminDesk {
    /// Answers one request on the router's task; `peer_of` gives a connection's address. A
    /// dropped answer means the asker gave up.
    pub fn answer(
        &mut self,
        broker: &mut Broker,
        now: Instant,
        request: AdminRequest,
        peer_of: impl Fn(ConnId) -> Option<SocketAddr>,
    ) {
        match request {
            AdminRequest::Clients(q, reply) => {
                let page = broker.admin_clients(&q);
                let items = page
                    .items
                    .into_iter()
                    .map(|info| ClientRow {
                        peer: info.conn.and_then(&peer_of),
                        info,
                    })
                    .collect();
                let _ = reply.send(Page {
                    total: page.total,
                    offset: page.offset,
                    items,
                });
            }
            AdminRequest::Subscriptions(q, reply) => {
                let _ = reply.send(broker.admin_subscriptions(&q));
            }
            AdminRequest::Retained(q, reply) => {
                let _ = reply.send(broker.admin_retained(&q));
            }
            AdminRequest::Overview(reply) => {
                let _ = reply.send(broker.admin_overview());
            }
            AdminRequest::Disconnect(client_id, reply) => {
                let _ = reply.send(broker.admin_disconnect(now, &client_id));
            }
            AdminRequest::Watch {
                filter,
                sink,
                reply,
            } => {
                let opened = broker.watch(&filter);
                if let Ok(id) = opened {
                    tracing::debug!(id, %filter, "topic watch opened");
                    self.watches.insert(id, sink);
                }
                let _ = reply.send(opened);
            }
            AdminRequest::Unwatch(id) => {
                broker.unwatch(id);
                self.watches.remove(&id);
            }
        }
    }

    /// Hands the copies watched in this batch to their readers; a reader that has gone
    /// closes its watch. Called only while a watch is open.
    pub fn deliver_watched(&mut self, broker: &mut Broker) {
        broker.drain_watched(&mut self.watched);
        for (id, w) in self.watched.drain(..) {
            let gone = self.watches.get(&id).is_none_or(|sink| !sink.offer(w));
            if gone && self.watches.remove(&id).is_some() {
                broker.unwatch(id);
            }
        }
    }
}

/// Runs `f` on the router's task, with its state, and returns what it returns; `None` when
/// the router did not answer within `within` (overloaded, or stopping). The question queues
/// behind the messages already waiting for the router. Keep `f` short and copy out only what
/// the answer needs: the router delivers no message while it runs.
pub(crate) async fn ask<T, F>(router: &mpsc::Sender<ToRouter>, within: Duration, f: F) -> Option<T>
where
    F: FnOnce(&Router) -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let question = ToRouter::Inspect(Box::new(move |router| {
        let _ = tx.send(f(router));
    }));
    let asked = async {
        router.send(question).await.ok()?;
        rx.await.ok()
    };
    tokio::time::timeout(within, asked).await.ok().flatten()
}
