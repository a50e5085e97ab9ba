//! `/healthz` and `/readyz`: whether the broker is serving.
//!
//! Both answer the same: a broker restores its store before any listener accepts a
//! connection, so once `/readyz` can be asked at all the broker is past start-up, and ready
//! is healthy. Both names exist because orchestrators ask for both.

use std::sync::Arc;

use hyper::{Response, StatusCode};

use super::response::{text, Body};
use super::HttpCtx;

/// 200 `ok` when the router answers within [`super::ROUTER_ANSWER_TIME`] and the store (if
/// any) takes writes; 503 naming what is wrong otherwise.
pub(crate) async fn healthz(ctx: &Arc<HttpCtx>) -> Response<Body> {
    let store_failure = ctx
        .ask_router(|r| r.store_state().and_then(|(_, failed)| failed))
        .await;
    match store_failure {
        Some(None) => text(StatusCode::OK, "ok\n"),
        Some(Some(e)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store failed and takes no more writes: {e}\n"),
        ),
        None => super::router_did_not_answer(),
    }
}
