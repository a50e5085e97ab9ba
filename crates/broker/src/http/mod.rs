//! The HTTP listener (`http://HOST:PORT`, or `https://` with the broker's certificate):
//! `/metrics` for Prometheus and `/healthz`. HTTP/1.1 only (hyper), one task per connection.
//!
//! Bounded like everything that faces the network: at most the listener's `max_connections`
//! at once ([`DEFAULT_MAX_CONNECTIONS`] when unset; past it a connection is closed at once),
//! request headers of at most [`MAX_HEADER_BYTES`] (431 past it) read within
//! [`HEADER_READ_TIMEOUT`] (which also ends an idle keep-alive connection), a write that
//! makes no progress for [`WRITE_STALL_TIMEOUT`] ends the connection (`stall`), request bodies
//! only through [`response::read_body`] with a limit.
//!
//! # Adding a route
//!
//! 1. Write the handler in a file of its own under `http/`: an `async fn` taking
//!    `&Arc<HttpCtx>` (and the `Request` if it needs headers, the query or the body) and
//!    returning `Response<Body>`; build responses with [`response::full`] / [`response::text`],
//!    or stream with `http_body_util::StreamBody` boxed into [`response::Body`]. A body the
//!    client sends is read with [`response::read_body`] and a limit.
//! 2. Add its path to the `match` in [`routes::route`]: an exact path (`"/api/sessions"`) or a
//!    guard for a family (`p if p.starts_with("/api/")`), checking the method there: unknown
//!    paths fall through to 404, wrong methods answer [`response::method_not_allowed`].
//! 3. What it needs from the broker's state it asks the router with [`HttpCtx::ask_router`]:
//!    a closure run on the router's task between two batches, with the `Router` (and so the
//!    core `Broker`) at hand. Keep it short and copy out only what the answer needs: the
//!    router delivers no message while it runs.

mod dashboard;
pub(crate) use dashboard::Dashboard;
mod health;
pub(crate) mod response;
mod routes;
mod stall;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Counted, ListenerCount};
use crate::listener::{Accepted, Listener};
use crate::metrics::Metrics;
use crate::router::{desk, Router, ToRouter};
use crate::Counters;
use response::Body;

/// Connections an HTTP listener serves at once when its `max_connections` is not set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Longest a client may take to send a request's headers, and longest an idle keep-alive
/// connection stays open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted; larger gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A response write that makes no progress for this long ends the connection.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for the router to answer before giving up (503 for `/healthz`).
pub const ROUTER_ANSWER_TIME: Duration = Duration::from_secs(1);
/// How long open HTTP connections get to finish when the broker stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// hyper's read buffer; it never grows past this (the head limit is below it).
const MAX_BUF_BYTES: usize = 64 * 1024;

/// What every HTTP request handler can reach.
pub(crate) struct HttpCtx {
    /// The router's channel (see [`HttpCtx::ask_router`]).
    pub router: mpsc::Sender<ToRouter>,
    /// Counters kept by the connection tasks.
    pub counters: Arc<Counters>,
    /// What `/metrics` reads, and the snapshot of the router's figures that scrapes close
    /// together share.
    pub metrics: Metrics,
    /// This listener's dashboard (`/`, `/api/...`), unless `[dashboard] enabled = false`.
    pub dashboard: Option<Arc<dashboard::Dashboard>>,
}

impl HttpCtx {
    /// Runs `f` on the router's task, with its state, and returns what it returns; `None`
    /// when the router did not answer within [`ROUTER_ANSWER_TIME`] (overloaded, or
    /// stopping). The question queues behind the messages already waiting for the router.
    pub(crate) async fn ask_router<T, F>(&self, f: F) -> Option<T>
    where
        F: FnOnce(&Router) -> T + Send + 'static,
        T: Send + 'static,
    {
        desk::ask(&self.router, ROUTER_ANSWER_TIME, f).await
    }
}

/// 503 for a request the router did not answer within [`ROUTER_ANSWER_TIME`].
pub(crate) fn router_did_not_answer() -> Response<Body> {
    response::text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the router did not answer within {} ms: the broker is overloaded or stopping\n",
            ROUTER_ANSWER_TIME.as_millis()
        ),
    )
}

/// Accepts connections on an HTTP listener until `shutdown`, each served on its own task,
/// at most `count.max()` at once.
pub(crate) async fn accept_loop(
    listener: Listener,
    count: Arc<ListenerCount>,
    ctx: Arc<HttpCtx>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut refusing = false;
    loop {
        let Some((accepted, peer)) = listener.accept_until(&shutdown).await else {
            return;
        };
        let (counted, open) = count.add();
        if count.max() != 0 && open > count.max() {
            ctx.counters
                .refused_max_connections
                .fetch_add(1, Ordering::Relaxed);
            // Logged once per episode: a burst of refusals is one line.
            if !refusing {
                tracing::warn!(listener = listener.url(), max_connections = count.max(), "too many HTTP connections at once: closing new ones until some end (raise max_connections of this [[listener]] if this is expected)");
                refusing = true;
            }
            tracing::debug!(%peer, "HTTP connection refused: listener full");
            continue;
        }
        refusing = false;
        tasks.spawn(serve_connection(
            accepted,
            ctx.clone(),
            shutdown.clone(),
            counted,
        ));
    }
}

/// One HTTP connection: TLS handshake (https), then requests until the client leaves, a
/// limit ends it, or the broker stops.
async fn serve_connection(
    accepted: Accepted,
    ctx: Arc<HttpCtx>,
    shutdown: CancellationToken,
    // The connection's place in the listener's count, given back when it ends.
    _counted: Counted,
) {
    let peer = accepted.peer_addr();
    // An HTTP listener has no PROXY header and no WebSocket: this is the TLS handshake of
    // `https`, or nothing.
    let stream = match accepted.open(0).await {
        Ok((s, _)) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP: TLS handshake failed");
            return;
        }
    };
    let io = TokioIo::new(stall::StallGuard::new(stream, WRITE_STALL_TIMEOUT));
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(dashboard::PeerAddr(peer));
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(routes::route(&ctx, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}
