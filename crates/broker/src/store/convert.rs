//! Between the core's journal (`Change`, `Instant`s, `Arc<Message>`) and the store's records
//! (`Op`, unix milliseconds, `MessageRecord`). Runs on the router for writes (cheap: `Arc`
//! and `Bytes` clones) and on start-up and backlog loads for reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use makelaar_core::message::{Delivery, Message};
use makelaar_core::persist::{
    Backlog, Change, KeptState, LoadedMessage, RestoredSession, SessionState,
};
use makelaar_core::session::Subscription;
use makelaar_proto::ProtocolVersion;
use makelaar_store::{
    MessageRecord, Op, QueuedRecord, QueuedState, SessionIndex, SessionRecord, SubscriptionRecord,
    NEVER_EXPIRES,
};

/// Converts between the monotonic clock the core runs on and wall-clock milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    instant: Instant,
    unix_ms: u64,
}

impl Clock {
    /// The two clocks read now.
    pub(crate) fn now() -> Clock {
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock {
            instant: Instant::now(),
            unix_ms,
        }
    }

    pub(crate) fn to_ms(self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(d) => self.unix_ms.saturating_add(millis(d)),
            None => self
                .unix_ms
                .saturating_sub(millis(self.instant.duration_since(at))),
        }
    }

    pub(crate) fn to_instant(self, ms: u64) -> Instant {
        if ms >= self.unix_ms {
            self.instant + Duration::from_millis(ms - self.unix_ms)
        } else {
            let back = Duration::from_millis(self.unix_ms - ms);
            self.instant.checked_sub(back).unwrap_or(self.instant)
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Turns journal changes into store ops. Messages fanned out to several durable sessions
/// share one record.
pub(crate) struct Writer {
    clock: Clock,
    // Keyed by the message's address (as a number, so the writer stays `Send`), and holding
    // the message: an address is only unique while its `Arc` lives. Cleared after each batch.
    records: HashMap<usize, (Arc<Message>, Arc<MessageRecord>)>,
}

impl Writer {
    pub(crate) fn new(clock: Clock) -> Writer {
        Writer {
            clock,
            records: HashMap::new(),
        }
    }

    /// The ops for a batch of changes, in order.
    pub(crate) fn ops(&mut self, changes: Vec<Change>) -> Vec<Op> {
        let ops = changes.into_iter().map(|c| self.op(c)).collect();
        self.records.clear();
        ops
    }

    fn op(&mut self, change: Change) -> Op {
        match change {
            Change::Session { client_id, state } => Op::PutSession {
                client_id,
                record: self.session_record(state),
            },
            Change::SessionEnded { client_id } => Op::DeleteSession { client_id },
            Change::Subscribed {
                client_id,
                filter,
                subscription,
            } => Op::PutSubscription {
                client_id,
                filter: Arc::from(filter),
                record: SubscriptionRecord {
                    options: subscription.options,
                    subscription_id: subscription.id,
                },
            },
            Change::Unsubscribed { client_id, filter } => Op::DeleteSubscription {
                client_id,
                filter: Arc::from(filter),
            },
            Change::Kept {
                client_id,
                delivery,
                state,
            }
            | Change::Moved {
                client_id,
                delivery,
                state,
            } => Op::PutQueued {
                client_id,
                seq: delivery.seq,
                record: self.queued_record(&delivery, state),
            },
            Change::Done { client_id, seq } => Op::DeleteQueued { client_id, seq },
            Change::InboundQos2 {
                client_id,
                packet_id,
                pending: true,
            } => Op::PutInbound {
                client_id,
                packet_id,
            },
            Change::InboundQos2 {
                client_id,
                packet_id,
                pending: false,
            } => Op::DeleteInbound {
                client_id,
                packet_id,
            },
            Change::Retained {
                topic,
                message: Some(m),
            } => Op::PutRetained {
                topic,
                message: self.message_record(&m),
            },
            Change::Retained {
                topic,
                message: None,
            } => Op::DeleteRetained { topic },
        }
    }

    fn session_record(&self, s: SessionState) -> SessionRecord {
        let expiry_ms = u64::from(s.expiry_interval) * 1000;
        let (pending_will, will_at_ms) = match s.pending_will {
            Some((will, at)) => (Some(will), Some(self.clock.to_ms(at))),
            None => (None, None),
        };
        SessionRecord {
            protocol_version: s.version.level(),
            expiry_interval: s.expiry_interval,
            // Offline sessions store when they went offline: one that expires counts its
            // expiry from there (a connected one stores none, and its expiry starts at the next
            // start). For one that never expires it is only for `store inspect`; it is
            // journaled as the client goes, so now is when.
            disconnected_at_ms: match s.expires_at {
                Some(at) => Some(self.clock.to_ms(at).saturating_sub(expiry_ms)),
                None if !s.connected => Some(self.clock.to_ms(Instant::now())),
                None => None,
            },
            pending_will,
            will_at_ms,
            username: s.username.as_deref().map(str::to_owned),
        }
    }

    fn queued_record(&mut self, d: &Delivery, state: KeptState) -> QueuedRecord {
        QueuedRecord {
            message: self.message_record(&d.msg),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            shared_filter: None,
            state: match state {
                KeptState::Queued => QueuedState::Queued,
                KeptState::AwaitingAck(packet_id) => QueuedState::AwaitingAck { packet_id },
                KeptState::AwaitingComp(packet_id) => QueuedState::AwaitingComp { packet_id },
            },
        }
    }

    fn message_record(&mut self, m: &Arc<Message>) -> Arc<MessageRecord> {
        let clock = self.clock;
        let (_, record) = self
            .records
            .entry(Arc::as_ptr(m) as usize)
            .or_insert_with(|| {
                let record = MessageRecord {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    qos: m.qos,
                    retain: m.retain,
                    properties: m.properties.clone(),
                    expires_at_ms: m.expires_at.map(|at| clock.to_ms(at)),
                    origin: m.origin.clone(),
                };
                (m.clone(), Arc::new(record))
            });
        record.clone()
    }
}

/// Turns store records back into the core's types.
pub(crate) struct Reader {
    clock: Clock,
    // Keyed by the record's address, and holding the record: were it freed, the next record
    // could be allocated at the same address and be taken for it (at start-up every retained
    // message then became the first one).
    messages: HashMap<usize, (Arc<MessageRecord>, Arc<Message>)>,
}

impl Reader {
    pub(crate) fn new(clock: Clock) -> Reader {
        Reader {
            clock,
            messages: HashMap::new(),
        }
    }

    /// A session from the start-up index. One that was connected when the broker stopped
    /// starts its expiry now.
    pub(crate) fn session(&self, s: SessionIndex) -> RestoredSession {
        let r = s.session;
        let expiry = Duration::from_secs(u64::from(r.expiry_interval));
        let expires_at = if r.expiry_interval == NEVER_EXPIRES {
            None
        } else {
            Some(match r.disconnected_at_ms {
                Some(ms) => self.clock.to_instant(ms) + expiry,
                None => self.clock.to_instant(self.clock.unix_ms) + expiry,
            })
        };
        let pending_will = r
            .pending_will
            .zip(r.will_at_ms.map(|ms| self.clock.to_instant(ms)));
        RestoredSession {
            client_id: Arc::from(s.client_id),
            state: SessionState {
                version: version_from(r.protocol_version),
                expiry_interval: r.expiry_interval,
                expires_at,
                pending_will,
                connected: false,
                username: r.username.map(Arc::from),
            },
            subscriptions: (s.subscriptions.into_iter())
                .map(|(filter, sub)| {
                    let subscription = Subscription {
                        options: sub.options,
                        id: sub.subscription_id,
                    };
                    (filter, subscription)
                })
                .collect(),
            inbound_qos2: s.inbound_qos2,
            backlog: Backlog {
                count: usize::try_from(s.queue.count).unwrap_or(usize::MAX),
                bytes: usize::try_from(s.queue.bytes).unwrap_or(usize::MAX),
                last_seq: s.queue.next_seq.saturating_sub(1),
            },
        }
    }

    pub(crate) fn message(&mut self, m: &Arc<MessageRecord>) -> Arc<Message> {
        let clock = self.clock;
        let (_, message) = self
            .messages
            .entry(Arc::as_ptr(m) as usize)
            .or_insert_with(|| (m.clone(), Arc::new(message_from(clock, m))));
        message.clone()
    }

    /// A session's kept messages, from `load_queue`.
    pub(crate) fn backlog(&mut self, queue: Vec<(u64, QueuedRecord)>) -> Vec<LoadedMessage> {
        let loaded = (queue.into_iter())
            .map(|(seq, q)| LoadedMessage {
                delivery: Delivery {
                    msg: self.message(&q.message),
                    qos: q.qos,
                    retain: q.retain,
                    subscription_ids: q.subscription_ids,
                    shared_group: None,
                    seq,
                },
                state: match q.state {
                    QueuedState::Queued => KeptState::Queued,
                    QueuedState::AwaitingAck { packet_id } => KeptState::AwaitingAck(packet_id),
                    QueuedState::AwaitingComp { packet_id } => KeptState::AwaitingComp(packet_id),
                },
            })
            .collect();
        self.messages.clear();
        loaded
    }
}

/// A retained or queued message from its record.
pub(crate) fn message_from(clock: Clock, m: &MessageRecord) -> Message {
    Message {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        properties: m.properties.clone(),
        expires_at: m.expires_at_ms.map(|ms| clock.to_instant(ms)),
        origin: m.origin.clone(),
        received_at: Some(clock.instant),
        log_position: std::sync::OnceLock::new(),
    }
}

fn version_from(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V31,
        4 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_round_trips_both_ways_of_now() {
        let c = Clock::now();
        let later = c.instant + Duration::from_millis(1500);
        assert_eq!(c.to_ms(later), c.unix_ms + 1500);
        assert_eq!(c.to_instant(c.unix_ms + 1500), later);
        let earlier = c.instant.checked_sub(Duration::from_millis(700));
        if let Some(e) = earlier {
            assert_eq!(c.to_ms(e), c.unix_ms - 700);
            assert_eq!(c.to_instant(c.unix_ms - 700), e);
        }
    }

    #[test]
    fn an_offline_session_that_never_expires_is_stored_as_offline() {
        // `store inspect` reads "connected" from a missing disconnection time; a 3.1.1
        // persistent session (never expires) that went offline must not look connected.
        let writer = Writer::new(Clock::now());
        let state = |connected| SessionState {
            version: ProtocolVersion::V311,
            expiry_interval: NEVER_EXPIRES,
            expires_at: None,
            pending_will: None,
            connected,
            username: None,
        };
        assert_eq!(writer.session_record(state(true)).disconnected_at_ms, None);
        let offline = writer.session_record(state(false));
        assert!(offline.disconnected_at_ms.is_some());
        // Read back, it still never expires.
        let index = SessionIndex {
            client_id: "c".into(),
            session: offline,
            subscriptions: Vec::new(),
            inbound_qos2: Vec::new(),
            queue: makelaar_store::QueueDepth::default(),
        };
        assert_eq!(
            Reader::new(Clock::now()).session(index).state.expires_at,
            None
        );
    }

    fn record(topic: &str) -> MessageRecord {
        MessageRecord {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: makelaar_proto::QoS::AtLeastOnce,
            retain: true,
            properties: makelaar_proto::Properties::default(),
            expires_at_ms: None,
            origin: None,
        }
    }

    #[test]
    fn records_read_one_after_another_stay_apart() {
        // As start-up reads retained messages: each record in an `Arc` of its own, dropped
        // before the next is made, so the allocator may hand out the same address again.
        let mut reader = Reader::new(Clock::now());
        let topics: Vec<Arc<str>> = ["r/a", "r/b", "r/c", "r/d"]
            .into_iter()
            .map(|t| reader.message(&Arc::new(record(t))).topic.clone())
            .collect();
        assert_eq!(
            topics.iter().map(|t| &**t).collect::<Vec<_>>(),
            ["r/a", "r/b", "r/c", "r/d"]
        );
        // One record fanned out to several sessions still becomes one message.
        let shared = Arc::new(record("r/e"));
        assert!(Arc::ptr_eq(
            &reader.message(&shared),
            &reader.message(&shared)
        ));
    }
}
