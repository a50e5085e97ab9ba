//! The client against Debian's Mosquitto, started by each test on free ports. Skipped (with a
//! message) when `mosquitto` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{mosquitto, next, scenarios, topic};
use makelaar_client::{Client, ProtocolVersion, QoS, Reconnect};

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

macro_rules! with_mosquitto {
    ($t:ident, $body:expr) => {
        let Some($t) = mosquitto("").await else {
            return;
        };
        $body
    };
}

#[tokio::test]
async fn qos_round_trips_v311() {
    with_mosquitto!(t, scenarios::qos_round_trips(&t, V311).await);
}

#[tokio::test]
async fn qos_round_trips_v5() {
    with_mosquitto!(t, scenarios::qos_round_trips(&t, V5).await);
}

#[tokio::test]
async fn v5_properties() {
    with_mosquitto!(t, scenarios::v5_properties(&t).await);
}

#[tokio::test]
async fn will_v311() {
    with_mosquitto!(t, scenarios::will(&t, V311).await);
}

#[tokio::test]
async fn will_v5() {
    with_mosquitto!(t, scenarios::will(&t, V5).await);
}

#[tokio::test]
async fn persistent_session_v311() {
    with_mosquitto!(t, scenarios::persistent_session(&t, V311).await);
}

#[tokio::test]
async fn persistent_session_v5() {
    with_mosquitto!(t, scenarios::persistent_session(&t, V5).await);
}

#[tokio::test]
async fn reconnect_resumes_v311() {
    with_mosquitto!(t, scenarios::reconnect_resumes(&t, V311).await);
}

#[tokio::test]
async fn reconnect_resumes_v5() {
    with_mosquitto!(t, scenarios::reconnect_resumes(&t, V5).await);
}

#[tokio::test]
async fn tls_v311() {
    with_mosquitto!(t, scenarios::tls(&t, V311).await);
}

#[tokio::test]
async fn tls_v5() {
    with_mosquitto!(t, scenarios::tls(&t, V5).await);
}

#[tokio::test]
async fn keep_alive() {
    with_mosquitto!(t, scenarios::keep_alive(&t).await);
}

#[tokio::test]
async fn small_receive_maximum_is_respected() {
    // Mosquitto announces max_inflight_messages as its Receive Maximum.
    let Some(t) = mosquitto("max_inflight_messages 2").await else {
        return;
    };
    scenarios::receive_maximum(&t).await;
}

#[tokio::test]
async fn errors() {
    with_mosquitto!(t, scenarios::errors(&t).await);
}

/// Mosquitto restarted without persistence has forgotten the session: the client reconnects,
/// sees "session present" off, and subscribes again by itself.
#[tokio::test]
async fn reconnect_after_broker_restart_resubscribes() {
    let Some(mut t) = mosquitto("").await else {
        return;
    };
    let tp = topic("restart");
    let (sub, mut msgs) = Client::connect(
        t.opts(V5)
            .client_id("mc-restart-sub")
            .session_expiry(60)
            .reconnect(Reconnect::new(
                Duration::from_millis(100),
                Duration::from_millis(300),
            )),
    )
    .await
    .unwrap();
    sub.subscribe(&*tp, QoS::AtLeastOnce).await.unwrap();
    t.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sub.info().connections < 2 {
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!sub.info().session_present);
    // The resubscription is sent right after CONNACK; give it a moment to be acknowledged.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (publ, _m) = Client::connect(t.opts(V311)).await.unwrap();
    publ.publish(&*tp, "after restart", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(
        next(&mut msgs, "a message after the restart")
            .await
            .payload_str(),
        Some("after restart")
    );
    sub.disconnect().await.unwrap();
    publ.disconnect().await.unwrap();
}
