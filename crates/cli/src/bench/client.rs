//! One simulated client: a single task that publishes (on a schedule or as fast as the socket
//! and the inflight window allow), receives and acknowledges, and counts — all on one socket,
//! reading and writing without ever blocking one direction on the other.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::anyhow;
use bytes::BytesMut;
use makelaar_proto::{Packet, ProtocolVersion, PubAck, Publish, QoS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::net::{ack_failed, put_ack, Conn};
use super::stats::{mono_ns, Counters, Header, Histogram, SeqSet, HEADER_LEN};

/// Refill the write buffer when it holds less than this...
const WRITE_LOW: usize = 32 * 1024;
/// ...up to about this much.
const WRITE_HIGH: usize = 64 * 1024;
/// Packet identifiers cycle through 1..=65535; the inflight window must stay below that.
pub const MAX_INFLIGHT: usize = 65_000;

/// A PUBLISH encoded once with `Packet::encode`; each message copies it and patches the packet
/// identifier and the payload header in place.
#[derive(Debug, Clone)]
pub struct PubTemplate {
    bytes: Vec<u8>,
    id_at: Option<usize>,
    payload_at: usize,
    with_header: bool,
}

impl PubTemplate {
    pub fn new(
        topic: &str,
        qos: QoS,
        payload_size: usize,
        version: ProtocolVersion,
    ) -> anyhow::Result<PubTemplate> {
        let encode = |packet_id: u16| -> anyhow::Result<Vec<u8>> {
            let p = Packet::Publish(Publish {
                qos,
                topic: Arc::from(topic),
                packet_id,
                payload: vec![b'x'; payload_size].into(),
                ..Publish::default()
            });
            let mut buf = BytesMut::new();
            p.encode(version, &mut buf)
                .map_err(|e| anyhow!("cannot encode a PUBLISH to \"{topic}\": {e}"))?;
            Ok(buf.to_vec())
        };
        let bytes = encode(0x0101)?;
        let id_at = if qos == QoS::AtMostOnce {
            None
        } else {
            // Where the identifier sits: the one byte pair that differs from another encoding.
            let other = encode(0x0202)?;
            let at = bytes
                .iter()
                .zip(&other)
                .position(|(a, b)| a != b)
                .ok_or_else(|| anyhow!("cannot locate the packet identifier"))?;
            Some(at)
        };
        Ok(PubTemplate {
            payload_at: bytes.len() - payload_size,
            with_header: payload_size >= HEADER_LEN,
            bytes,
            id_at,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one PUBLISH with this identifier and header to `buf`.
    fn put(&self, buf: &mut BytesMut, packet_id: u16, header: &Header) {
        let start = buf.len();
        buf.extend_from_slice(&self.bytes);
        let packet = &mut buf[start..];
        if let Some(at) = self.id_at {
            packet[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        if self.with_header {
            header.write(&mut packet[self.payload_at..]);
        }
    }
}

/// What a publishing client sends.
pub struct PubPlan {
    pub index: u32,
    pub template: PubTemplate,
    pub qos: QoS,
    /// Messages per second; 0 means as fast as possible.
    pub rate: f64,
    /// Offset of this publisher's schedule, to spread publishers over the interval.
    pub phase: Duration,
    /// QoS 1/2 messages unacknowledged at once.
    pub inflight: usize,
}

/// Signals every client of a run shares.
pub struct Shared {
    /// Publishers start when this is cancelled.
    pub go: CancellationToken,
    /// Publishers send nothing new once this is cancelled (acknowledgements still count).
    pub stop_pub: CancellationToken,
    /// Every client disconnects once this is cancelled.
    pub stop_all: CancellationToken,
    /// Latencies are recorded for messages sent in this window (monotonic ns).
    pub window_start_ns: AtomicU64,
    pub window_end_ns: AtomicU64,
    /// PINGREQ interval; zero for none.
    pub ping_every: Duration,
    /// This run's id (payload header), to tell our publishers from others.
    pub run: u32,
    pub version: ProtocolVersion,
}

impl Shared {
    /// Fresh signals for a run with this keep-alive and protocol version.
    pub fn new(run: u32, keep_alive: u16, version: ProtocolVersion) -> Shared {
        Shared {
            go: CancellationToken::new(),
            stop_pub: CancellationToken::new(),
            stop_all: CancellationToken::new(),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            ping_every: Duration::from_secs(u64::from(keep_alive) / 2),
            run,
            version,
        }
    }
}

/// A token cancelled when the user presses Ctrl-C.
pub fn interrupted_by_ctrl_c() -> CancellationToken {
    let interrupted = CancellationToken::new();
    let token = interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            token.cancel();
        }
    });
    interrupted
}

/// What one client saw, handed back when it ends.
#[derive(Debug, Default)]
pub struct ClientReport {
    pub publisher: Option<u32>,
    pub published: u64,
    /// Sequence numbers acknowledged (PUBACK, or PUBREC for QoS 2).
    pub acked: SeqSet,
    /// Sequence numbers received from this run's publishers, by publisher index.
    pub seen_own: Vec<SeqSet>,
    /// And from other runs' publishers, by (run, publisher).
    pub seen_other: HashMap<(u32, u32), SeqSet>,
    pub duplicates: u64,
    pub latency: Histogram,
    pub error: Option<String>,
}

impl ClientReport {
    fn seen(&mut self, h: &Header, own_run: u32) -> bool {
        if h.run == own_run && (h.publisher as usize) < 1 << 20 {
            let i = h.publisher as usize;
            if i >= self.seen_own.len() {
                self.seen_own.resize_with(i + 1, SeqSet::default);
            }
            self.seen_own[i].insert(h.seq)
        } else {
            self.seen_other
                .entry((h.run, h.publisher))
                .or_default()
                .insert(h.seq)
        }
    }
}

/// Publisher state inside [`drive`].
struct Publishing {
    plan: PubPlan,
    next_seq: u64,
    inflight: usize,
    started: Option<Instant>,
    stopped: bool,
}

fn packet_id(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

impl Publishing {
    /// The sequence number an acknowledged packet identifier stands for: the most recent one
    /// sent with that identifier (the window is smaller than the identifier space).
    fn seq_of(&self, id: u16) -> Option<u64> {
        let last = self.next_seq.checked_sub(1)?;
        let back = (u64::from(packet_id(last)) + 65_535 - u64::from(id)) % 65_535;
        last.checked_sub(back)
    }

    /// Appends what may be sent now; returns how many, and when to wake for the next one
    /// when the schedule (not the socket or the window) is what holds it back.
    fn fill(&mut self, conn: &mut Conn, run: u32) -> (u64, Option<Instant>) {
        let Some(t0) = self.started else {
            return (0, None);
        };
        if self.stopped || conn.wbuf.len() >= WRITE_LOW {
            return (0, None);
        }
        let len = self.plan.template.len().max(1);
        let mut budget = ((WRITE_HIGH - conn.wbuf.len()) / len).max(1) as u64;
        if self.plan.qos != QoS::AtMostOnce {
            budget = budget.min(self.plan.inflight.saturating_sub(self.inflight) as u64);
        }
        let mut wake = None;
        if self.plan.rate > 0.0 {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(t0 + self.plan.phase);
            let due = if now < t0 + self.plan.phase {
                0
            } else {
                (elapsed.as_secs_f64() * self.plan.rate) as u64 + 1
            };
            let allowed = due.saturating_sub(self.next_seq);
            if allowed <= budget {
                budget = allowed;
                let next_at =
                    Duration::from_secs_f64((self.next_seq + budget) as f64 / self.plan.rate);
                wake = Some(t0 + self.plan.phase + next_at);
            }
        }
        if budget == 0 {
            return (0, wake);
        }
        let mut header = Header {
            run,
            publisher: self.plan.index,
            seq: 0,
            sent_ns: mono_ns(),
        };
        conn.wbuf.reserve(budget as usize * len);
        for _ in 0..budget {
            header.seq = self.next_seq;
            self.plan
                .template
                .put(&mut conn.wbuf, packet_id(self.next_seq), &header);
            self.next_seq += 1;
        }
        if self.plan.qos != QoS::AtMostOnce {
            self.inflight += budget as usize;
        }
        (budget, wake)
    }
}

/// Runs one client until `shared.stop_all`, or until its connection fails.
pub async fn drive(
    mut conn: Conn,
    plan: Option<PubPlan>,
    track: bool,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
) -> ClientReport {
    let mut report = ClientReport {
        publisher: plan.as_ref().map(|p| p.index),
        ..ClientReport::default()
    };
    let result = run(&mut conn, plan, track, &shared, &counters, &mut report).await;
    if let Err(e) = result {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        report.error = Some(format!("{e:#}"));
    } else {
        conn.close(Duration::from_secs(2)).await;
    }
    report
}

async fn run(
    conn: &mut Conn,
    plan: Option<PubPlan>,
    track: bool,
    shared: &Shared,
    counters: &Counters,
    report: &mut ClientReport,
) -> anyhow::Result<()> {
    let version = shared.version;
    let mut publishing = plan.map(|plan| Publishing {
        plan,
        next_seq: 0,
        inflight: 0,
        started: None,
        stopped: false,
    });
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut schedule = pin!(tokio::time::sleep_until(far));
    let mut schedule_armed = false;
    let ping_on = !shared.ping_every.is_zero();
    let mut ping = pin!(tokio::time::sleep_until(if ping_on {
        Instant::now() + shared.ping_every
    } else {
        far
    }));
    let mut go = pin!(shared.go.cancelled());
    let mut go_seen = publishing.is_none();
    let mut stop_pub = pin!(shared.stop_pub.cancelled());
    let mut stop_pub_seen = publishing.is_none();
    let mut stop_all = pin!(shared.stop_all.cancelled());
    let mut stop_seen = false;
    let mut ping_due = false;

    loop {
        // 1. Everything read so far.
        if !conn.rbuf.is_empty() {
            handle_input(
                conn,
                version,
                publishing.as_mut(),
                track,
                shared,
                counters,
                report,
            )?;
        }
        if stop_seen {
            return Ok(());
        }
        // 2. What may be sent now.
        if ping_due {
            ping_due = false;
            put_ack(&mut conn.wbuf, version, Packet::PingReq);
            ping.as_mut().reset(Instant::now() + shared.ping_every);
        }
        if let Some(p) = publishing.as_mut() {
            if go_seen && p.started.is_none() {
                p.started = Some(Instant::now());
            }
            if stop_pub_seen {
                p.stopped = true;
            }
            let (n, wake) = p.fill(conn, shared.run);
            if n > 0 {
                report.published += n;
                Counters::add(&counters.published, n);
                if p.plan.qos != QoS::AtMostOnce {
                    Counters::add(&counters.inflight, n);
                }
            }
            if let Some(at) = wake {
                schedule.as_mut().reset(at);
                schedule_armed = true;
            }
        }
        // 3. Wait for the socket, the schedule or a signal.
        let sent_something = std::future::poll_fn(|cx| {
            let mut ready = false;
            match conn.poll_io(cx) {
                Poll::Ready(Ok(_)) => ready = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if !go_seen && go.as_mut().poll(cx).is_ready() {
                go_seen = true;
                ready = true;
            }
            if schedule_armed && schedule.as_mut().poll(cx).is_ready() {
                schedule_armed = false;
                ready = true;
            }
            if ping_on && ping.as_mut().poll(cx).is_ready() {
                ping_due = true;
                ready = true;
            }
            if !stop_pub_seen && stop_pub.as_mut().poll(cx).is_ready() {
                stop_pub_seen = true;
                ready = true;
            }
            if !stop_seen && stop_all.as_mut().poll(cx).is_ready() {
                stop_seen = true;
                ready = true;
            }
            if ready {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await;
        sent_something?;
    }
}

/// Decodes and handles every complete packet in the read buffer.
fn handle_input(
    conn: &mut Conn,
    version: ProtocolVersion,
    mut publishing: Option<&mut Publishing>,
    track: bool,
    shared: &Shared,
    counters: &Counters,
    report: &mut ClientReport,
) -> anyhow::Result<()> {
    let rx_ns = mono_ns();
    let from = shared.window_start_ns.load(Ordering::Relaxed);
    let to = shared.window_end_ns.load(Ordering::Relaxed);
    let mut delivered = 0u64;
    let mut acked = 0u64;
    let mut freed = 0u64;
    while let Some(packet) = conn.decode()? {
        match packet {
            Packet::Publish(p) => {
                delivered += 1;
                if track {
                    if let Some(h) = Header::read(&p.payload) {
                        if !report.seen(&h, shared.run) {
                            report.duplicates += 1;
                        }
                        if h.sent_ns >= from && h.sent_ns < to {
                            report.latency.record(rx_ns.saturating_sub(h.sent_ns));
                        }
                    }
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => put_ack(
                        &mut conn.wbuf,
                        version,
                        Packet::PubAck(PubAck::new(p.packet_id)),
                    ),
                    QoS::ExactlyOnce => put_ack(
                        &mut conn.wbuf,
                        version,
                        Packet::PubRec(PubAck::new(p.packet_id)),
                    ),
                }
            }
            Packet::PubRel(a) => put_ack(
                &mut conn.wbuf,
                version,
                Packet::PubComp(PubAck::new(a.packet_id)),
            ),
            Packet::PubAck(a) | Packet::PubRec(a) => {
                let Some(p) = publishing.as_deref_mut() else {
                    continue;
                };
                if let Some(msg) = ack_failed(a.reason) {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    report.error.get_or_insert(msg);
                }
                if let Some(seq) = p.seq_of(a.packet_id) {
                    if report.acked.insert(seq) {
                        acked += 1;
                        if p.plan.qos == QoS::AtLeastOnce {
                            p.inflight = p.inflight.saturating_sub(1);
                            freed += 1;
                        }
                    }
                }
                if p.plan.qos == QoS::ExactlyOnce {
                    put_ack(
                        &mut conn.wbuf,
                        version,
                        Packet::PubRel(PubAck::new(a.packet_id)),
                    );
                }
            }
            Packet::PubComp(_) => {
                if let Some(p) = publishing.as_deref_mut() {
                    p.inflight = p.inflight.saturating_sub(1);
                    freed += 1;
                }
            }
            Packet::Disconnect(d) => {
                return Err(anyhow!("the broker disconnected the client: {}", d.reason));
            }
            _ => {}
        }
    }
    Counters::add(&counters.delivered, delivered);
    Counters::add(&counters.acked, acked);
    if freed > 0 {
        counters.inflight.fetch_sub(freed, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use makelaar_proto::Decoder;

    #[test]
    fn template_patches_id_and_header() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let t = PubTemplate::new("bench/1", qos, 64, version).unwrap();
                let mut buf = BytesMut::new();
                let h = Header {
                    run: 9,
                    publisher: 1,
                    seq: 42,
                    sent_ns: 77,
                };
                t.put(&mut buf, 0xBEEF, &h);
                let mut d = Decoder::new(1 << 20);
                d.set_version(version);
                let Some(Packet::Publish(p)) = d.decode(&mut buf).unwrap() else {
                    panic!("not a PUBLISH")
                };
                assert_eq!(&*p.topic, "bench/1");
                assert_eq!(p.qos, qos);
                assert_eq!(p.payload.len(), 64);
                if qos != QoS::AtMostOnce {
                    assert_eq!(p.packet_id, 0xBEEF);
                }
                assert_eq!(Header::read(&p.payload), Some(h));
            }
        }
    }

    #[test]
    fn acknowledged_ids_map_back_to_sequence_numbers() {
        let t = PubTemplate::new("t", QoS::AtLeastOnce, 64, ProtocolVersion::V311).unwrap();
        let mut p = Publishing {
            plan: PubPlan {
                index: 0,
                template: t,
                qos: QoS::AtLeastOnce,
                rate: 0.0,
                phase: Duration::ZERO,
                inflight: 100,
            },
            next_seq: 200_000,
            inflight: 0,
            started: None,
            stopped: false,
        };
        for seq in 199_900..200_000u64 {
            assert_eq!(p.seq_of(packet_id(seq)), Some(seq));
        }
        p.next_seq = 5;
        assert_eq!(p.seq_of(packet_id(0)), Some(0));
        assert_eq!(p.seq_of(packet_id(100)), None);
    }
}
