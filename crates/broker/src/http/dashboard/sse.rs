//! Server-sent events: the live figures (`/api/events`) and the topic viewer (`/api/watch`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use serde::Serialize;

use super::json::{StatsJson, WatchedJson};
use super::Dashboard;
use crate::admin::WatchStream;
use crate::http::response::Body;

/// How often the live figures are sent.
pub(crate) const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often an idle watch sends a comment (proxies close silent connections) and reports
/// what it dropped.
const WATCH_TICK: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TICKS: u32 = 15;
/// Watched messages sent in one write, at most.
const BATCH: usize = 64;

/// One event in the text/event-stream format. `data` is JSON: one line, no raw newline.
pub(crate) fn event(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// A response streaming `body` as server-sent events.
fn sse_response(body: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response<Body> {
    let frames = body.map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `/api/events`: a `stats` event now and every [`STATS_EVERY`], until the broker stops.
pub(crate) fn stats_stream(dash: Arc<Dashboard>) -> Response<Body> {
    let mut interval = tokio::time::interval(STATS_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the page gets figures at once.
    let ticks = stream::unfold((dash, interval), |(dash, mut interval)| async move {
        interval.tick().await;
        let overview = dash.admin.overview().await.ok()?;
        let stats = StatsJson::new(overview, &dash.counters, dash.started);
        Some((event("stats", &stats), (dash, interval)))
    });
    sse_response(ticks)
}

/// `/api/watch`: a `watching` event, then a `message` event per watched message, and
/// `dropped` when the reader fell behind, until the broker stops.
pub(crate) fn watch_stream(filter: String, watch: WatchStream) -> Response<Body> {
    #[derive(Serialize)]
    struct Watching<'a> {
        filter: &'a str,
    }
    #[derive(Serialize)]
    struct Dropped {
        dropped: u64,
    }
    let first = event("watching", &Watching { filter: &filter });
    let mut interval = tokio::time::interval(WATCH_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (watch, interval, 0u64, 0u32);
    let rest = stream::unfold(
        state,
        |(mut watch, mut interval, mut reported, mut idle)| async move {
            loop {
                tokio::select! {
                    got = watch.next() => {
                        let w = got?;
                        idle = 0;
                        let mut out = event("message", &WatchedJson::from(w)).to_vec();
                        for _ in 1..BATCH {
                            match watch.try_next() {
                                Some(w) => out.extend_from_slice(&event("message", &WatchedJson::from(w))),
                                None => break,
                            }
                        }
                        return Some((Bytes::from(out), (watch, interval, reported, idle)));
                    }
                    _ = interval.tick() => {
                        let dropped = watch.dropped();
                        if dropped != reported {
                            reported = dropped;
                            let e = event("dropped", &Dropped { dropped });
                            return Some((e, (watch, interval, reported, idle)));
                        }
                        idle += 1;
                        if idle >= KEEP_ALIVE_TICKS {
                            idle = 0;
                            let e = Bytes::from_static(b": keep-alive\n\n");
                            return Some((e, (watch, interval, reported, idle)));
                        }
                    }
                }
            }
        },
    );
    sse_response(stream::once(async move { first }).chain(rest))
}

/// The reply to an SSE request that cannot be served: a `refused` event naming why (an
/// `EventSource` cannot read an error status), after which the page stops asking.
pub(crate) fn refused(why: String) -> Response<Body> {
    #[derive(Serialize)]
    struct Refused {
        error: String,
    }
    let e = event("refused", &Refused { error: why });
    // `retry` far away: the browser must not reconnect to be refused again.
    let retry = Bytes::from_static(b"retry: 86400000\n\n");
    sse_response(stream::iter([retry, e]))
}
