//! The web dashboard on the HTTP listeners: `/` (one page, its script and styles embedded in
//! the binary: no build step, nothing fetched from elsewhere) and its JSON API under `/api/`:
//!
//! | path | answer |
//! |---|---|
//! | `GET /api/stats` | the figures: connections, sessions, messages and bytes counted |
//! | `GET /api/clients?offset=&limit=&q=` | sessions, a page at a time (at most 1000 rows) |
//! | `GET /api/subscriptions?...`, `GET /api/retained?...` | likewise |
//! | `GET /api/bridges` | each bridge: link state, address, queue, in flight, counts, last error, drops by reason |
//! | `GET /api/cluster` | a cluster node's part: state, nodes alive, round trip, writes, claims, hand-overs, queue, per partition; `null` alone |
//! | `POST /api/clients/{id}/disconnect` | disconnects a client (needs `X-Makelaar-Dashboard`) |
//! | `GET /api/events` | server-sent `stats` events, one a second |
//! | `GET /api/watch?filter=F` | server-sent `message` events: the topic viewer |
//!
//! Everything is answered by the router through [`crate::admin`]. Who may use it is decided
//! by [`access`]. `/metrics` and `/healthz` are not part of it and stay open (Prometheus and
//! health checks do not log in).

mod access;
mod api;
mod json;
mod login_cache;
mod query;
mod sse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::response::{full, method_not_allowed, text, Body};
use crate::admin::Admin;
use crate::auth::Authenticator;
use crate::config::DashboardConfig;
use crate::Counters;

/// The client's address, put in each request's extensions by the HTTP connection task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

const INDEX_HTML: &str = include_str!("assets/index.html");
const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("assets/dashboard.css");

/// Scripts, styles and connections from this origin only, no inline script, no framing: even
/// a display bug could not run a script that a client put in a topic or a payload.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// What the dashboard of one HTTP listener needs.
pub(crate) struct Dashboard {
    pub admin: Admin,
    pub auth: Arc<Authenticator>,
    /// The listener's password file: `Some` turns authentication on.
    pub password_file: Option<PathBuf>,
    pub config: DashboardConfig,
    pub counters: Arc<Counters>,
    pub started: Instant,
    /// Recent successful logins (see `login_cache`).
    logins: login_cache::LoginCache,
}

impl Dashboard {
    /// The dashboard of HTTP listener `listener` (an index into the configuration's
    /// listeners) at `url`; logs where it is and who may use it.
    pub(crate) fn new(
        (listener, url): (usize, &str),
        config: DashboardConfig,
        admin: Admin,
        auth: Arc<Authenticator>,
        counters: Arc<Counters>,
        started: Instant,
    ) -> Dashboard {
        let password_file: Option<PathBuf> = auth.password_file(listener).map(Into::into);
        let url = url.trim_end_matches('/');
        match (&password_file, config.admin_users.is_empty()) {
            (None, _) if config.allow_remote_without_password => {
                tracing::warn!(target: crate::status::STATUS_TARGET, "dashboard at {url}/ is open to anyone who can reach it: no password file, and allow_remote_without_password is set")
            }
            (None, _) => {
                tracing::info!(target: crate::status::STATUS_TARGET, "dashboard at {url}/ (no password file: for this machine only)")
            }
            (Some(_), true) => {
                tracing::warn!(target: crate::status::STATUS_TARGET, "dashboard at {url}/ refuses every login: no user has the admin role; list them in admin_users in [dashboard]")
            }
            (Some(_), false) => {
                tracing::info!(target: crate::status::STATUS_TARGET, admin_users = ?config.admin_users, "dashboard at {url}/ (HTTP Basic login, admin users only)")
            }
        }
        Dashboard {
            admin,
            auth,
            password_file,
            config,
            counters,
            started,
            logins: login_cache::LoginCache::new(),
        }
    }
}

/// Whether `path` is the dashboard's.
pub(crate) fn serves(path: &str) -> bool {
    matches!(
        path,
        "/" | "/index.html" | "/dashboard.js" | "/dashboard.css"
    ) || path == "/api"
        || path.starts_with("/api/")
}

/// Answers a request for one of the dashboard's paths ([`serves`]).
pub(crate) async fn handle(dash: &Arc<Dashboard>, req: Request<Incoming>) -> Response<Body> {
    let mut resp = answer(dash, req).await;
    let h = resp.headers_mut();
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn answer(dash: &Arc<Dashboard>, req: Request<Incoming>) -> Response<Body> {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0);
    if let Some(refused) = access::check(dash, peer, req.headers()).await {
        return refused;
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path.as_str() {
        "/" | "/index.html" if get => asset("text/html; charset=utf-8", INDEX_HTML),
        "/dashboard.js" if get => asset("text/javascript; charset=utf-8", DASHBOARD_JS),
        "/dashboard.css" if get => asset("text/css; charset=utf-8", DASHBOARD_CSS),
        "/api/stats" if get => api::stats(dash).await,
        "/api/clients" if get => api::clients(dash, query).await,
        "/api/bridges" if get => api::bridges(dash).await,
        "/api/cluster" if get => api::cluster(dash),
        "/api/subscriptions" if get => api::subscriptions(dash, query).await,
        "/api/retained" if get => api::retained(dash, query).await,
        "/api/events" if get => sse::stats_stream(dash.clone()),
        "/api/watch" if get => api::watch(dash, query, req.headers()).await,
        p if p.starts_with("/api/clients/") && p.ends_with("/disconnect") => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            if !access::same_origin(req.headers()) {
                return text(
                    StatusCode::FORBIDDEN,
                    "this request must come from the dashboard page (X-Makelaar-Dashboard \
                     header, same origin)\n",
                );
            }
            // Who did it, for the log (the credentials were checked above).
            let user = dash
                .password_file
                .as_ref()
                .and_then(|_| access::basic_credentials(req.headers()))
                .map(|(user, _)| user);
            api::disconnect(dash, p, (peer, user)).await
        }
        "/" | "/index.html" | "/dashboard.js" | "/dashboard.css" | "/api/stats"
        | "/api/clients" | "/api/bridges" | "/api/cluster" | "/api/subscriptions"
        | "/api/retained" | "/api/events" | "/api/watch" => {
            method_not_allowed(super::routes::GET_HEAD)
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("{other} is not part of the dashboard's API (see docs/dashboard.md)\n"),
        ),
    }
}

fn asset(content_type: &str, body: &'static str) -> Response<Body> {
    full(StatusCode::OK, content_type, body)
}
