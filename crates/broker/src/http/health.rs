//! `/healthz`: whether the broker is serving.

use std::sync::Arc;

use hyper::{Response, StatusCode};

use super::response::{text, Body};
use super::HttpCtx;

/// 200 `ok` when the router answers within [`super::ROUTER_ANSWER_TIME`]; 503 naming what is
/// wrong otherwise.
pub(crate) async fn healthz(ctx: &Arc<HttpCtx>) -> Response<Body> {
    match ctx.ask_router(|_| ()).await {
        Some(()) => text(StatusCode::OK, "ok\n"),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the router did not answer within {} ms: the broker is overloaded or stopping\n",
                super::ROUTER_ANSWER_TIME.as_millis()
            ),
        ),
    }
}
