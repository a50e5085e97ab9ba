//! The subscription index and the router's fan-out, without sockets.
//!
//! `cargo bench -p makelaar-core --bench topic`
//!
//! - `topic_match/*`: one publish matched against 100,000 filters, exact or with wildcards.
//! - `route/*`: one PUBLISH through `Broker::handle_packet` to 1,000 subscribers, and the
//!   actions drained as the router task does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use makelaar_core::topic::TopicTree;
use makelaar_core::{Action, Broker, Limits, Policy};
use makelaar_proto::{
    Connect, Packet, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
};

const FILTERS: u32 = 100_000;

fn count_matches(tree: &TopicTree<u32, ()>, topic: &str) -> usize {
    let mut n = 0;
    tree.for_each_match(topic, |k, _| {
        black_box(k);
        n += 1;
    });
    n
}

fn topic_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic_match_100k_filters");
    g.throughput(Throughput::Elements(1));

    // 100,000 exact filters: 100 sites × 1,000 devices.
    let mut exact = TopicTree::new();
    for i in 0..FILTERS {
        exact.insert(&format!("site/{}/device/{}/temp", i % 100, i), i, ());
    }
    assert_eq!(count_matches(&exact, "site/42/device/4242/temp"), 1);
    g.bench_function("exact_hit", |b| {
        b.iter(|| count_matches(&exact, black_box("site/42/device/4242/temp")))
    });
    g.bench_function("exact_miss", |b| {
        b.iter(|| count_matches(&exact, black_box("site/42/device/4242/humidity")))
    });

    // 100,000 wildcard filters: `+` in the middle, `#` at the end, and a few broad ones.
    let mut wild = TopicTree::new();
    for i in 0..FILTERS {
        let f = match i % 4 {
            0 => format!("site/{}/+/{}/temp", i % 100, i),
            1 => format!("site/{}/device/{}/#", i % 100, i),
            2 => format!("+/{}/device/{}/temp", i % 100, i),
            _ => format!("site/+/device/{}/+", i),
        };
        wild.insert(&f, i, ());
    }
    wild.insert("#", FILTERS, ());
    wild.insert("site/#", FILTERS + 1, ());
    wild.insert("site/+/device/+/temp", FILTERS + 2, ());
    let hit = "site/43/device/4243/temp";
    assert!(count_matches(&wild, hit) >= 4);
    g.bench_function("wildcard_hit", |b| {
        b.iter(|| count_matches(&wild, black_box(hit)))
    });
    g.bench_function("wildcard_miss", |b| {
        b.iter(|| count_matches(&wild, black_box("other/43/device/4243/temp")))
    });

    // Both kinds in one tree, as a broker holds them.
    let mut mixed = TopicTree::new();
    for i in 0..FILTERS {
        if i % 2 == 0 {
            mixed.insert(&format!("site/{}/device/{}/temp", i % 100, i), i, ());
        } else {
            mixed.insert(&format!("site/{}/device/{}/#", i % 100, i), i, ());
        }
    }
    g.bench_function("mixed_hit", |b| {
        b.iter(|| count_matches(&mixed, black_box("site/42/device/4242/temp")))
    });
    g.finish();
}

fn connect(id: String) -> Connect {
    Connect {
        bridge: false,
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: id,
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

/// A broker with `subs` subscribers on `topic` at `qos` (connections 1..=subs) and a
/// publisher (connection 0).
fn broker_with_subscribers(subs: u64, topic: &str, qos: QoS) -> (Broker, Instant) {
    let now = Instant::now();
    let mut b = Broker::new(Limits::default(), Policy::default(), 1);
    b.handle_connect(now, 0, connect("publisher".into()));
    for conn in 1..=subs {
        b.handle_connect(now, conn, connect(format!("sub-{conn}")));
        let s = Subscribe {
            packet_id: 1,
            filters: vec![(
                topic.into(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        b.handle_packet(now, conn, Packet::Subscribe(s));
    }
    while b.poll_action().is_some() {}
    (b, now)
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_one_publish_to_1000_subscribers");
    g.throughput(Throughput::Elements(1000));
    let payload = Bytes::from(vec![0x5a; 64]);
    let topic: Arc<str> = Arc::from("bench/route");

    let (mut b, now) = broker_with_subscribers(1000, "bench/route", QoS::AtMostOnce);
    let p = Publish {
        topic: topic.clone(),
        payload: payload.clone(),
        ..Publish::default()
    };
    g.bench_function("qos0", |bench| {
        bench.iter(|| {
            b.handle_packet(now, 0, Packet::Publish(p.clone()));
            let mut n = 0;
            while let Some(a) = b.poll_action() {
                if let Action::Send(conn, packet) = a {
                    black_box((conn, packet));
                    n += 1;
                }
            }
            assert_eq!(n, 1000);
        })
    });

    // QoS 1 to QoS 1 subscribers, each PUBACKing at once (so the window never fills).
    let (mut b, now) = broker_with_subscribers(1000, "bench/route", QoS::AtLeastOnce);
    let mut id = 0u16;
    let mut acks = Vec::with_capacity(1000);
    g.bench_function("qos1_with_acks", |bench| {
        bench.iter(|| {
            id = id % 60_000 + 1;
            let p = Publish {
                qos: QoS::AtLeastOnce,
                packet_id: id,
                topic: topic.clone(),
                payload: payload.clone(),
                ..Publish::default()
            };
            b.handle_packet(now, 0, Packet::Publish(p));
            acks.clear();
            while let Some(a) = b.poll_action() {
                if let Action::Send(conn, Packet::Publish(p)) = a {
                    acks.push((conn, p.packet_id));
                }
            }
            assert_eq!(acks.len(), 1000);
            for &(conn, pid) in &acks {
                b.handle_packet(now, conn, Packet::PubAck(makelaar_proto::PubAck::new(pid)));
            }
            while b.poll_action().is_some() {}
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = topic_match, route
}
criterion_main!(benches);
