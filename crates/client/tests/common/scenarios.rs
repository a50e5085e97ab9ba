//! Scenarios run against each broker (ours and Mosquitto).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use makelaar_client::{
    Client, Error, Message, Properties, ProtocolVersion, QoS, ReasonCode, Reconnect,
    RetainHandling, SubscriptionOptions, TlsOptions,
};
use makelaar_proto::{Decoder, Packet};

use super::{next, nothing, topic, Proxy, Target};

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn id(tag: &str) -> String {
    format!("mc-{tag}-{}", std::process::id())
}

/// QoS 0, 1 and 2 messages published and received at each QoS, in order.
pub async fn qos_round_trips(t: &Target, v: ProtocolVersion) {
    let tp = topic("qos");
    // MQTT 3.1 needs a client id (1 to 23 characters).
    let opts = |tag: &str| {
        if v == ProtocolVersion::V31 {
            t.opts(v)
                .client_id(format!("mc-{tag}-{}", std::process::id()))
        } else {
            t.opts(v)
        }
    };
    let (sub, mut msgs) = Client::connect(opts("s")).await.unwrap();
    assert_eq!(
        sub.subscribe(format!("{tp}/#"), QoS::ExactlyOnce)
            .await
            .unwrap(),
        QoS::ExactlyOnce
    );
    // A window of 10: Mosquitto 2.0 drops QoS 1 messages to a 3.1.1 subscriber when a
    // publisher has hundreds in flight at once (mosquitto_sub loses them too).
    let (publ, _m) = Client::connect(opts("p").max_inflight(10)).await.unwrap();
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let payload = format!("payload at qos {}", q as u8);
        publ.publish(format!("{tp}/{}", q as u8), payload.clone(), q, false)
            .await
            .unwrap();
        let m = next(&mut msgs, "a message").await;
        assert_eq!(m.topic(), format!("{tp}/{}", q as u8));
        assert_eq!(m.payload_str(), Some(payload.as_str()));
        assert_eq!(m.qos, q);
        assert!(!m.retain);
        assert_eq!(m.packet_id == 0, q == QoS::AtMostOnce);
    }
    // Many in flight at once, all arrive in order.
    let mut pending = Vec::new();
    for i in 0..200 {
        let q = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        pending.push(
            publ.start_publish(Message::new(format!("{tp}/many"), format!("{i}")).with_qos(q))
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.acknowledged().await.unwrap();
    }
    // In order for each QoS (a broker may route a QoS 2 message only at PUBREL, after a
    // QoS 1 message sent behind it).
    let mut by_qos: [Vec<u32>; 3] = Default::default();
    for _ in 0..200 {
        let m = next(&mut msgs, "one of 200 messages").await;
        by_qos[m.qos as usize].push(m.payload_str().unwrap().parse().unwrap());
    }
    assert_eq!(by_qos[1], (0..200).step_by(2).collect::<Vec<u32>>());
    assert_eq!(by_qos[2], (1..200).step_by(2).collect::<Vec<u32>>());
    sub.unsubscribe(format!("{tp}/#")).await.unwrap();
    publ.publish(format!("{tp}/after"), "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    nothing(&mut msgs, 200).await;
    publ.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
    assert!(msgs.recv().await.is_none());
    assert!(msgs.error().is_none(), "a clean end: {:?}", msgs.error());
}

/// MQTT 5 properties reach the subscriber, with its subscription identifier; subscription
/// options (no local, retain handling) are honoured; CONNACK properties are visible.
pub async fn v5_properties(t: &Target) {
    let tp = topic("props");
    let (sub, mut msgs) = Client::connect(
        t.opts(V5)
            .client_id(id("props-sub"))
            .user_property("who", "sub")
            .receive_maximum(100)
            .topic_alias_maximum(10)
            .maximum_packet_size(65536)
            .request_response_information(true),
    )
    .await
    .unwrap();
    let info = sub.info();
    assert!(info.connected);
    assert_eq!(info.client_id, id("props-sub"));
    let ack = sub
        .subscribe_many(
            vec![(
                format!("{tp}/+"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    ..SubscriptionOptions::default()
                },
            )],
            Properties {
                subscription_identifiers: vec![42],
                ..Properties::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_1]);

    let (publ, _m) = Client::connect(t.opts(V5)).await.unwrap();
    let props = Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        content_type: Some("text/plain".into()),
        response_topic: Some(format!("{tp}/reply")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        ..Properties::default()
    };
    let ack = publ
        .publish_message(
            Message::new(format!("{tp}/x"), "hello")
                .with_qos(QoS::AtLeastOnce)
                .with_properties(props.clone()),
        )
        .await
        .unwrap();
    assert!(!ack.reason.is_error());
    let m = next(&mut msgs, "the message with properties").await;
    assert_eq!(m.qos, QoS::AtLeastOnce);
    let p = &m.properties;
    assert_eq!(p.payload_format_indicator, Some(1));
    assert!(p
        .message_expiry_interval
        .is_some_and(|e| (298..=300).contains(&e)));
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic, props.response_topic);
    assert_eq!(p.correlation_data, props.correlation_data);
    assert_eq!(p.user_properties, props.user_properties);
    assert_eq!(p.subscription_identifiers, vec![42]);

    // No local: our own message does not come back.
    sub.publish(format!("{tp}/own"), "mine", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    nothing(&mut msgs, 200).await;

    // Retained message, then retain handling "do not send".
    publ.publish(format!("{tp}/ret"), "kept", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    let (late, mut late_msgs) = Client::connect(t.opts(V5)).await.unwrap();
    late.subscribe_many(
        vec![(
            format!("{tp}/ret"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                retain_handling: RetainHandling::DoNotSend,
                ..SubscriptionOptions::default()
            },
        )],
        Properties::default(),
    )
    .await
    .unwrap();
    nothing(&mut late_msgs, 200).await;
    late.subscribe(format!("{tp}/ret"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let m = next(&mut late_msgs, "the retained message").await;
    assert!(m.retain);
    assert_eq!(m.payload_str(), Some("kept"));
    // Clear it.
    publ.publish(format!("{tp}/ret"), Bytes::new(), QoS::AtLeastOnce, true)
        .await
        .unwrap();
    for c in [sub, publ, late] {
        c.disconnect().await.unwrap();
    }
}

/// A client that goes away without DISCONNECT has its will published (with its 5.0
/// properties); one that disconnects cleanly does not.
pub async fn will(t: &Target, v: ProtocolVersion) {
    let tp = topic("will");
    let (watcher, mut msgs) = Client::connect(t.opts(v)).await.unwrap();
    watcher
        .subscribe(format!("{tp}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();

    let mut opts = t.opts(v).client_id(id("will-dies")).will(
        format!("{tp}/dead"),
        "gone",
        QoS::AtLeastOnce,
        false,
    );
    if v.is_v5() {
        if let Some(w) = opts.will.as_mut() {
            w.properties.content_type = Some("text/plain".into());
            w.properties.user_properties = vec![("reason".into(), "test".into())];
        }
    }
    let (dies, _m) = Client::connect(opts).await.unwrap();
    drop(dies);
    let m = next(&mut msgs, "the will").await;
    assert_eq!(m.topic(), format!("{tp}/dead"));
    assert_eq!(m.payload_str(), Some("gone"));
    if v.is_v5() {
        assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            m.properties.user_properties,
            vec![("reason".to_string(), "test".to_string())]
        );
    }

    let (clean, _m) = Client::connect(t.opts(v).client_id(id("will-clean")).will(
        format!("{tp}/clean"),
        "no",
        QoS::AtLeastOnce,
        false,
    ))
    .await
    .unwrap();
    clean.disconnect().await.unwrap();
    nothing(&mut msgs, 300).await;
    watcher.disconnect().await.unwrap();
}

/// A persistent session keeps its subscription and queues QoS 1/2 messages while offline.
pub async fn persistent_session(t: &Target, v: ProtocolVersion) {
    let tp = topic("persist");
    let cid = id(&format!("persist-{}", v.level()));
    let opts = || {
        let o = t.opts(v).client_id(cid.clone()).clean_start(false);
        if v.is_v5() {
            o.session_expiry(300)
        } else {
            o
        }
    };
    // Start from a clean slate, then make the persistent session.
    let (c, _m) = Client::connect(opts().clean_start(true)).await.unwrap();
    c.disconnect().await.unwrap();
    let (c, _m) = Client::connect(opts()).await.unwrap();
    c.subscribe(format!("{tp}/#"), QoS::ExactlyOnce)
        .await
        .unwrap();
    c.disconnect().await.unwrap();

    let (publ, _pm) = Client::connect(t.opts(v)).await.unwrap();
    for (i, q) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish(format!("{tp}/{i}"), format!("queued {i}"), q, false)
            .await
            .unwrap();
    }
    let (c, mut msgs) = Client::connect(opts()).await.unwrap();
    assert!(c.info().session_present, "the session was resumed");
    for i in 0..3 {
        let m = next(&mut msgs, "a queued message").await;
        assert_eq!(m.payload_str(), Some(format!("queued {i}").as_str()));
    }
    // End the session.
    c.disconnect().await.unwrap();
    let (c, _m) = Client::connect(opts().clean_start(true).session_expiry_if(v, 0))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    publ.disconnect().await.unwrap();
}

trait SessionExpiryIf {
    fn session_expiry_if(self, v: ProtocolVersion, secs: u32) -> Self;
}

impl SessionExpiryIf for makelaar_client::ConnectOptions {
    fn session_expiry_if(self, v: ProtocolVersion, secs: u32) -> Self {
        if v.is_v5() {
            self.session_expiry(secs)
        } else {
            self
        }
    }
}

/// With automatic reconnect: a subscriber whose connection is cut gets back on its session
/// and receives what was queued meanwhile; a publisher whose acknowledgements were lost sends
/// its QoS 1/2 messages again with DUP set, and QoS 2 is still delivered exactly once.
pub async fn reconnect_resumes(t: &Target, v: ProtocolVersion) {
    let tp = topic("reconnect");
    let addr: SocketAddr = format!("127.0.0.1:{}", t.port).parse().unwrap();
    let proxy = Proxy::start(addr).await;
    let fast = Reconnect::new(Duration::from_millis(100), Duration::from_millis(400));

    let mut sub_opts = t
        .opts(v)
        .client_id(id(&format!("rc-sub-{}", v.level())))
        .clean_start(false)
        .reconnect(fast);
    sub_opts.port = proxy.port;
    if v.is_v5() {
        sub_opts = sub_opts.session_expiry(60);
    }
    let (sub, mut msgs) = Client::connect(sub_opts.clone()).await.unwrap();
    sub.subscribe(format!("{tp}/#"), QoS::ExactlyOnce)
        .await
        .unwrap();
    let (direct, _dm) = Client::connect(t.opts(v)).await.unwrap();

    proxy.cut();
    // Published while the subscriber is away: queued in its session.
    direct
        .publish(format!("{tp}/a"), "while away", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let m = next(&mut msgs, "the message queued while away").await;
    assert_eq!(m.payload_str(), Some("while away"));
    assert!(sub.info().connections >= 2);
    assert!(sub.info().session_present);

    // A publisher through the proxy whose acknowledgements are swallowed.
    let mut pub_opts = t
        .opts(v)
        .client_id(id(&format!("rc-pub-{}", v.level())))
        .clean_start(false)
        .reconnect(fast);
    pub_opts.port = proxy.port;
    if v.is_v5() {
        pub_opts = pub_opts.session_expiry(60);
    }
    let (publ, _pm) = Client::connect(pub_opts.clone()).await.unwrap();
    proxy.swallow_downstream(true);
    proxy.upstream_bytes.lock().unwrap().clear();
    let p1 = publ
        .start_publish(Message::new(format!("{tp}/q1"), "one").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let p2 = publ
        .start_publish(Message::new(format!("{tp}/q2"), "two").with_qos(QoS::ExactlyOnce))
        .await
        .unwrap();
    // The broker got both (they are routed to the direct subscriber path too).
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.swallow_downstream(false);
    proxy.cut();
    tokio::time::timeout(Duration::from_secs(5), p1.acknowledged())
        .await
        .expect("QoS 1 acknowledged after the reconnect")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), p2.acknowledged())
        .await
        .expect("QoS 2 completed after the reconnect")
        .unwrap();
    // Resent with DUP: look at what went through the proxy.
    let sent = std::mem::take(&mut *proxy.upstream_bytes.lock().unwrap());
    let dups = publishes(&sent, v)
        .into_iter()
        .filter(|(dup, _)| *dup)
        .count();
    assert!(dups >= 2, "both messages were sent again with DUP");

    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), msgs.recv()).await {
        got.push((
            m.topic.to_string(),
            m.payload_str().unwrap_or("").to_string(),
        ));
    }
    let q2 = got.iter().filter(|(t, _)| t.ends_with("/q2")).count();
    let q1 = got.iter().filter(|(t, _)| t.ends_with("/q1")).count();
    assert_eq!(q2, 1, "QoS 2 exactly once: {got:?}");
    assert!(q1 >= 1, "QoS 1 at least once: {got:?}");

    for c in [sub, publ, direct] {
        c.disconnect().await.unwrap();
    }
}

/// Every PUBLISH in a client's byte stream: (dup, packet id).
fn publishes(bytes: &[u8], v: ProtocolVersion) -> Vec<(bool, u16)> {
    let mut buf = BytesMut::from(bytes);
    let mut d = Decoder::new(usize::MAX);
    let mut out = Vec::new();
    // The first packet of each connection is CONNECT, which sets the version itself; several
    // connections are concatenated here, so decode with the version set and skip CONNECTs.
    d.set_version(v);
    while let Ok(Some(p)) = d.decode(&mut buf) {
        if let Packet::Publish(p) = p {
            out.push((p.dup, p.packet_id));
        }
    }
    out
}

/// TLS: verified against the CA; a client certificate; host name mismatch refused unless
/// insecure; an untrusted CA refused with a TLS error.
pub async fn tls(t: &Target, v: ProtocolVersion) {
    let tp = topic("tls");
    let (sub, mut msgs) = Client::connect(t.tls_opts(v)).await.unwrap();
    sub.subscribe(&*tp, QoS::AtLeastOnce).await.unwrap();
    let pki = &t.pki;
    let (publ, _m) = Client::connect(
        t.tls_opts(v)
            .tls(TlsOptions::with_ca_file(&pki.ca).client_auth(&pki.client_cert, &pki.client_key)),
    )
    .await
    .unwrap();
    publ.publish(&*tp, "secret", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(
        next(&mut msgs, "a message over TLS").await.payload_str(),
        Some("secret")
    );

    // Connecting by a name the certificate does not carry.
    let mut wrong = t.tls_opts(v);
    if let Some(tls) = wrong.tls.as_mut() {
        tls.server_name = Some("elsewhere.example".into());
    }
    match Client::connect(wrong.clone()).await {
        Err(Error::Tls(msg)) => assert!(msg.contains("handshake"), "{msg}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    if let Some(tls) = wrong.tls.as_mut() {
        tls.insecure = true;
    }
    let (c, _m) = Client::connect(wrong).await.unwrap();
    c.disconnect().await.unwrap();

    // A CA that did not sign the server's certificate.
    let other = super::pki();
    let untrusted = t.tls_opts(v).tls(TlsOptions::with_ca_file(&other.ca));
    assert!(matches!(
        Client::connect(untrusted).await,
        Err(Error::Tls(_))
    ));
    // A CA file that is not there.
    let missing = t
        .tls_opts(v)
        .tls(TlsOptions::with_ca_file("/nonexistent/ca.pem"));
    match Client::connect(missing).await {
        Err(Error::Tls(msg)) => assert!(msg.contains("/nonexistent/ca.pem"), "{msg}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    sub.disconnect().await.unwrap();
    publ.disconnect().await.unwrap();
}

/// A short keep-alive is kept up with PINGREQ; the client stays connected.
pub async fn keep_alive(t: &Target) {
    let (c, _m) = Client::connect(t.opts(V311).keep_alive(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(c.is_connected());
    c.publish("test/ka", "still here", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

/// The inflight window stays within the broker's Receive Maximum (a broker announcing 2
/// disconnects a client that sends a third unacknowledged message).
pub async fn receive_maximum(t: &Target) {
    let tp = topic("recvmax");
    let (c, _m) = Client::connect(t.opts(V5)).await.unwrap();
    let announced = c.info().server_limits.receive_maximum;
    let mut pending = Vec::new();
    for i in 0..300 {
        let q = if i % 3 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        pending.push(
            c.start_publish(Message::new(&*tp, format!("{i}")).with_qos(q))
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.acknowledged().await.unwrap();
    }
    assert!(c.is_connected(), "receive maximum {announced} respected");
    c.disconnect().await.unwrap();
}

/// Connection errors are one clear sentence.
pub async fn errors(t: &Target) {
    // Nothing listens there.
    let mut o = t.opts(V311);
    o.port = super::free_port();
    let e = Client::connect(o).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(
        e.to_string().contains("Connection refused") || e.to_string().contains("refused"),
        "{e}"
    );
    // A bad filter is refused before anything is sent.
    let (c, _m) = Client::connect(t.opts(V311)).await.unwrap();
    let e = c.subscribe("a/#/b", QoS::AtMostOnce).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid topic filter 'a/#/b': # must be the whole last level"
    );
    let e = c
        .publish("a/+", "x", QoS::AtMostOnce, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot contain + or #"), "{e}");
    assert!(c.is_connected());
    c.disconnect().await.unwrap();
    let e = c
        .publish("a", "x", QoS::AtMostOnce, false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Closed), "{e:?}");
}
