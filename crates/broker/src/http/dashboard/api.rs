//! The dashboard's JSON answers.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::ACCEPT;
use hyper::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use super::json::{
    BridgeJson, ClientJson, ClusterJson, PageJson, RetainedJson, StatsJson, SubscriptionJson,
};
use super::query::{list_query, param, percent_decode};
use super::{sse, Dashboard};
use crate::admin::Stopped;
use crate::http::response::{full, text, Body};

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => full(status, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}\n"),
        ),
    }
}

fn unavailable(e: Stopped) -> Response<Body> {
    text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
}

pub(crate) async fn stats(dash: &Arc<Dashboard>) -> Response<Body> {
    match dash.admin.overview().await {
        Ok(o) => json(
            StatusCode::OK,
            &StatsJson::new(o, &dash.counters, dash.started),
        ),
        Err(e) => unavailable(e),
    }
}

/// `GET /api/bridges`: every running bridge, in the configuration's order.
pub(crate) async fn bridges(dash: &Arc<Dashboard>) -> Response<Body> {
    match dash.admin.bridge_queues().await {
        Ok(queues) => {
            let list: Vec<BridgeJson> = dash
                .counters
                .bridge_list()
                .iter()
                .map(|b| {
                    let q = queues.get(&b.local_client_id).copied().unwrap_or_default();
                    BridgeJson::new(b, q)
                })
                .collect();
            json(StatusCode::OK, &list)
        }
        Err(e) => unavailable(e),
    }
}

/// `GET /api/cluster`: this node's part in the cluster; `null` when the broker runs alone.
/// Read from the cluster layer's counters: no question to the router or to NATS.
pub(crate) fn cluster(dash: &Arc<Dashboard>) -> Response<Body> {
    json(
        StatusCode::OK,
        &dash.counters.cluster.as_ref().map(ClusterJson::new),
    )
}

pub(crate) async fn clients(dash: &Arc<Dashboard>, query: Option<&str>) -> Response<Body> {
    match dash.admin.clients(list_query(query)).await {
        Ok(page) => json(StatusCode::OK, &PageJson::from(page, ClientJson::from)),
        Err(e) => unavailable(e),
    }
}

pub(crate) async fn subscriptions(dash: &Arc<Dashboard>, query: Option<&str>) -> Response<Body> {
    match dash.admin.subscriptions(list_query(query)).await {
        Ok(page) => json(
            StatusCode::OK,
            &PageJson::from(page, SubscriptionJson::from),
        ),
        Err(e) => unavailable(e),
    }
}

pub(crate) async fn retained(dash: &Arc<Dashboard>, query: Option<&str>) -> Response<Body> {
    match dash.admin.retained(list_query(query)).await {
        Ok(page) => json(StatusCode::OK, &PageJson::from(page, RetainedJson::from)),
        Err(e) => unavailable(e),
    }
}

/// `POST /api/clients/{id}/disconnect`, the id percent-encoded (it may hold `/`); `by` is
/// who asked (address, and user with a password file), for the log.
pub(crate) async fn disconnect(
    dash: &Arc<Dashboard>,
    path: &str,
    by: (SocketAddr, Option<String>),
) -> Response<Body> {
    let encoded = path
        .strip_prefix("/api/clients/")
        .and_then(|p| p.strip_suffix("/disconnect"))
        .unwrap_or("");
    let Some(client_id) = percent_decode(encoded, false) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the client id in the path is not valid percent-encoded UTF-8\n",
        );
    };
    #[derive(Serialize)]
    struct Disconnected<'a> {
        client_id: &'a str,
        disconnected: bool,
    }
    match dash.admin.disconnect(client_id.clone()).await {
        Ok(true) => {
            // Logged as a status line: an administrator's action is worth a trace by default.
            let (peer, user) = by;
            let user = user.as_deref().unwrap_or("(no login)");
            // Debug-formatted: a client id may hold quotes or line breaks.
            tracing::info!(target: crate::status::STATUS_TARGET, client_id = ?client_id, by = ?user, %peer, "client disconnected from the dashboard");
            let body = Disconnected {
                client_id: &client_id,
                disconnected: true,
            };
            json(StatusCode::OK, &body)
        }
        Ok(false) => text(
            StatusCode::NOT_FOUND,
            format!("no client is connected with client id \"{client_id}\"\n"),
        ),
        Err(e) => unavailable(e),
    }
}

/// `GET /api/watch?filter=F`: the topic viewer's stream. A filter that MQTT would refuse
/// is refused here too: 400, or for an `EventSource` (which cannot read a status) a
/// `refused` event.
pub(crate) async fn watch(
    dash: &Arc<Dashboard>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    let wants_events = headers
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let refuse = |why: String| {
        if wants_events {
            sse::refused(why)
        } else {
            text(StatusCode::BAD_REQUEST, format!("{why}\n"))
        }
    };
    let Some(filter) = param(query, "filter") else {
        return refuse("give the topic filter to watch: /api/watch?filter=sensors/%23".into());
    };
    match dash.admin.watch(filter.clone()).await {
        Ok(Ok(stream)) => sse::watch_stream(filter, stream),
        Ok(Err(e)) => refuse(e.to_string()),
        Err(e) => unavailable(e),
    }
}
