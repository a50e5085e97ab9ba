//! Response bodies and the small helpers every route uses.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// Every response's body: a whole buffer ([`full`]) or a stream (wrap an
/// `http_body_util::StreamBody` with [`Body::new`] / `BodyExt::boxed_unsync`, e.g. for
/// server-sent events). Unsync so that a stream may hold a channel receiver.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `text/plain` for plain answers.
pub(crate) const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// A response with a body held in memory. HEAD gets the same headers and no body (hyper
/// leaves it out).
pub(crate) fn full(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    // Figures change from one request to the next: caches must not keep them.
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A plain-text answer, e.g. `text(StatusCode::OK, "ok\n")`.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    full(status, TEXT_PLAIN, body)
}

/// 404, naming what there is.
pub(crate) fn not_found(path: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("{path} is not served here; try /metrics or /healthz\n"),
    )
}

/// 405 with the methods the path does allow (`Allow: GET, HEAD`).
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this path only answers {allow}\n"),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Reads a request body of at most `limit` bytes; `Err` is the response to send instead (413
/// when it is larger, 400 when the client broke off).
#[allow(dead_code)] // for routes that take a body (the dashboard's)
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes\n"),
        )),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "the request body could not be read\n",
        )),
    }
}
