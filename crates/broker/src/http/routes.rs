//! The routing function: which handler answers which path.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::response::{full, method_not_allowed, not_found, Body};
use super::{dashboard, health, router_did_not_answer, HttpCtx, ROUTER_ANSWER_TIME};

/// `Allow` of the read-only paths.
pub(crate) const GET_HEAD: &str = "GET, HEAD";

/// Answers one request. A path is matched exactly (or by prefix, for a family of paths); a
/// known path asked with a method it does not take gets 405, an unknown path 404.
pub(crate) async fn route(ctx: &Arc<HttpCtx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match path {
        "/metrics" => match read_only(req.method()) {
            true => metrics(ctx).await,
            false => method_not_allowed(GET_HEAD),
        },
        "/healthz" | "/readyz" => match read_only(req.method()) {
            true => health::healthz(ctx).await,
            false => method_not_allowed(GET_HEAD),
        },
        p if dashboard::serves(p) => match &ctx.dashboard {
            Some(d) => dashboard::handle(d, req).await,
            None => not_found(path),
        },
        _ => not_found(path),
    }
}

/// GET, or HEAD (answered as GET; hyper sends the headers without the body).
pub(crate) fn read_only(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// `/metrics`: the Prometheus text of `crate::metrics`; 503 when the router does not answer
/// in time.
async fn metrics(ctx: &HttpCtx) -> Response<Body> {
    match ctx.metrics.scrape(ROUTER_ANSWER_TIME).await {
        Some(body) => full(StatusCode::OK, crate::metrics::CONTENT_TYPE, body),
        None => router_did_not_answer(),
    }
}
