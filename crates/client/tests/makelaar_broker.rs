//! The client against our broker, started in-process on free ports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{makelaar, scenarios};
use makelaar_client::{Client, ConnectOptions, Error, ProtocolVersion, ReasonCode};

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[tokio::test]
async fn qos_round_trips_v311() {
    let t = makelaar(|_| {}).await;
    scenarios::qos_round_trips(&t, V311).await;
}

#[tokio::test]
async fn qos_round_trips_v5() {
    let t = makelaar(|_| {}).await;
    scenarios::qos_round_trips(&t, V5).await;
}

#[tokio::test]
async fn qos_round_trips_v31() {
    let t = makelaar(|_| {}).await;
    scenarios::qos_round_trips(&t, ProtocolVersion::V31).await;
}

#[tokio::test]
async fn v5_properties() {
    let t = makelaar(|_| {}).await;
    scenarios::v5_properties(&t).await;
}

#[tokio::test]
async fn will_v311() {
    let t = makelaar(|_| {}).await;
    scenarios::will(&t, V311).await;
}

#[tokio::test]
async fn will_v5() {
    let t = makelaar(|_| {}).await;
    scenarios::will(&t, V5).await;
}

#[tokio::test]
async fn persistent_session_v311() {
    let t = makelaar(|_| {}).await;
    scenarios::persistent_session(&t, V311).await;
}

#[tokio::test]
async fn persistent_session_v5() {
    let t = makelaar(|_| {}).await;
    scenarios::persistent_session(&t, V5).await;
}

#[tokio::test]
async fn reconnect_resumes_v311() {
    let t = makelaar(|_| {}).await;
    scenarios::reconnect_resumes(&t, V311).await;
}

#[tokio::test]
async fn reconnect_resumes_v5() {
    let t = makelaar(|_| {}).await;
    scenarios::reconnect_resumes(&t, V5).await;
}

#[tokio::test]
async fn tls_v311() {
    let t = makelaar(|_| {}).await;
    scenarios::tls(&t, V311).await;
}

#[tokio::test]
async fn tls_v5() {
    let t = makelaar(|_| {}).await;
    scenarios::tls(&t, V5).await;
}

#[tokio::test]
async fn keep_alive() {
    let t = makelaar(|_| {}).await;
    scenarios::keep_alive(&t).await;
}

#[tokio::test]
async fn small_receive_maximum_is_respected() {
    let t = makelaar(|c| c.limits.receive_maximum = 2).await;
    scenarios::receive_maximum(&t).await;
}

#[tokio::test]
async fn errors() {
    let t = makelaar(|_| {}).await;
    scenarios::errors(&t).await;
}

#[tokio::test]
async fn refused_connack_is_a_sentence_and_an_exit_code() {
    let t = makelaar(|c| c.limits.allow_zero_length_client_id = false).await;
    let e = Client::connect(t.opts(V311)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "connection refused: client identifier not valid"
    );
    assert_eq!(e.connack_code(), Some(2));
    let e = Client::connect(t.opts(V5)).await.unwrap_err();
    match &e {
        Error::ConnectionRefused { reason, .. } => {
            assert_eq!(*reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.connack_code(), Some(0x85));
}

#[tokio::test]
async fn server_shutdown_ends_the_client_with_the_reason() {
    let mut t = makelaar(|_| {}).await;
    let (c, mut msgs) = Client::connect(t.opts(V5)).await.unwrap();
    t.stop().await;
    assert!(msgs.recv().await.is_none());
    match msgs.error() {
        Some(Error::DisconnectedByServer { reason, .. }) => {
            assert_eq!(reason, ReasonCode::SERVER_SHUTTING_DOWN)
        }
        other => panic!("{other:?}"),
    }
    assert!(c.is_closed());
}

#[tokio::test]
async fn persistent_3x_session_needs_a_client_id() {
    let e = Client::connect(ConnectOptions::new("127.0.0.1", 1).clean_start(false))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "a persistent session (clean session off) needs a client id"
    );
}
