//! Encoding and decoding a 64-byte PUBLISH, MQTT 3.1.1 and 5.0, QoS 0 and 1.
//!
//! `cargo bench -p makelaar-proto --bench codec`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use makelaar_proto::{Decoder, Packet, ProtocolVersion, Publish, QoS};

fn publish(qos: QoS) -> Packet {
    Packet::Publish(Publish {
        qos,
        topic: Arc::from("sensors/building-7/floor-3/temperature"),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 4242 },
        payload: Bytes::from(vec![0x5a; 64]),
        ..Publish::default()
    })
}

fn cases() -> Vec<(&'static str, ProtocolVersion, QoS)> {
    vec![
        ("v311_qos0", ProtocolVersion::V311, QoS::AtMostOnce),
        ("v311_qos1", ProtocolVersion::V311, QoS::AtLeastOnce),
        ("v5_qos0", ProtocolVersion::V5, QoS::AtMostOnce),
        ("v5_qos1", ProtocolVersion::V5, QoS::AtLeastOnce),
    ]
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_publish_64B");
    g.throughput(Throughput::Elements(1));
    for (name, version, qos) in cases() {
        let packet = publish(qos);
        let mut buf = BytesMut::with_capacity(4096);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                black_box(&packet).encode(version, &mut buf).unwrap();
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_publish_64B");
    g.throughput(Throughput::Elements(1));
    for (name, version, qos) in cases() {
        let mut wire = BytesMut::new();
        publish(qos).encode(version, &mut wire).unwrap();
        let wire = wire.freeze();
        let mut decoder = Decoder::new(1 << 20);
        decoder.set_version(version);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| black_box(decoder.decode(buf).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Many packets back to back in one buffer, as a read from a busy socket delivers them.
fn decode_stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_publish_64B_stream_of_1000");
    g.throughput(Throughput::Elements(1000));
    for (name, version, qos) in cases() {
        let mut wire = BytesMut::new();
        for _ in 0..1000 {
            publish(qos).encode(version, &mut wire).unwrap();
        }
        let wire = wire.freeze();
        let mut decoder = Decoder::new(1 << 20);
        decoder.set_version(version);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| {
                    let mut n = 0;
                    while let Some(p) = decoder.decode(buf).unwrap() {
                        black_box(&p);
                        n += 1;
                    }
                    assert_eq!(n, 1000);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = encode, decode, decode_stream
}
criterion_main!(benches);
