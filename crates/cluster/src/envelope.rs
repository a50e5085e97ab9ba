//! An application message as it travels between nodes: on a core subject (QoS 0), in a
//! partition stream (QoS 1/2), in the retained bucket. The topic is not inside: it is the
//! subject (or key) the envelope travels under ([`crate::subject`]).
//!
//! The envelope carries what the receiving node needs to apply the single broker's rules to
//! its own subscribers:
//!
//! - the publishing client's id, for No Local ([MQTT-3.8.3-3]: not forwarded to a
//!   connection with the publisher's client id);
//! - the RETAIN flag as published, for Retain As Published ([MQTT-3.3.1-12],
//!   [MQTT-3.3.1-13]);
//! - when the publishing node received it and its Message Expiry Interval, so any node can
//!   drop it once expired ([MQTT-3.3.2-5]) or send the interval that is left
//!   ([MQTT-3.3.2-6]): [`Envelope::remaining_expiry`];
//! - the other 5.0 properties that travel with a message: Payload Format Indicator, Content
//!   Type, Response Topic, Correlation Data, User Properties (in order);
//! - the registry revision of the claim its publisher's connection was registered under,
//!   so that every reader of a partition drops it when a newer claim of that client moved
//!   it elsewhere before it was appended ([`crate::barrier`]: a late append).
//!
//! Binary form: the format byte, then fields as in [`crate::record`].

use bytes::Bytes;
use makelaar_proto::packet::QoS;

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{NodeId, Revision};
use crate::record::FORMAT;

/// One application message between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// The node that received it from its publisher.
    pub origin_node: NodeId,
    /// The publisher's client id (No Local).
    pub origin_client: String,
    /// When the origin node received it (unix milliseconds).
    pub received_at_ms: u64,
    /// Message Expiry Interval as published, seconds.
    pub message_expiry: Option<u32>,
    /// Payload Format Indicator: UTF-8.
    pub payload_utf8: bool,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
    /// The claim its publisher's connection was registered under; `None` for a will and for
    /// what no claimed connection published (never dropped as late, [`crate::barrier`]).
    /// A trailing field: envelopes written before it decode with `None`.
    pub claim: Option<Revision>,
}

/// What is left of a message's lifetime at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No Message Expiry Interval: it never expires.
    Never,
    /// Still alive: send this interval, seconds ([MQTT-3.3.2-6]).
    Remaining(u32),
    /// Expired: do not deliver it ([MQTT-3.3.2-5]).
    Expired,
}

impl Envelope {
    /// The message's expiry at `now_ms` (unix milliseconds, this node's clock): the interval
    /// minus the whole seconds it has waited since the origin received it. Clocks of nodes
    /// differ a little; a clock behind the origin's counts no waiting at all.
    pub fn remaining_expiry(&self, now_ms: u64) -> Expiry {
        let Some(interval) = self.message_expiry else {
            return Expiry::Never;
        };
        let waited = now_ms.saturating_sub(self.received_at_ms) / 1000;
        match u64::from(interval).checked_sub(waited) {
            Some(left) if left > 0 => Expiry::Remaining(u32::try_from(left).unwrap_or(interval)),
            _ => Expiry::Expired,
        }
    }

    /// The binary form.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new(FORMAT);
        w.u8(self.qos as u8);
        w.bool(self.retain);
        w.str(self.origin_node.as_str());
        w.str(&self.origin_client);
        w.uint(self.received_at_ms);
        w.opt_uint(self.message_expiry.map(u64::from));
        w.bool(self.payload_utf8);
        w.opt_str(self.content_type.as_deref());
        w.opt_str(self.response_topic.as_deref());
        w.opt_bytes(self.correlation_data.as_deref());
        w.uint(self.user_properties.len() as u64);
        for (k, v) in &self.user_properties {
            w.str(k);
            w.str(v);
        }
        w.bytes(&self.payload);
        if let Some(claim) = self.claim {
            w.uint(claim.get());
        }
        w.finish()
    }

    /// Reads the binary form.
    pub fn decode(data: &[u8]) -> Result<Envelope, DecodeError> {
        let mut r = Reader::new(data, FORMAT)?;
        let qos = QoS::from_u8(r.u8()?).ok_or(DecodeError::BadValue("qos"))?;
        let retain = r.bool("retain")?;
        let origin_node = NodeId::new(&r.str("origin_node")?)
            .map_err(|_| DecodeError::BadValue("origin_node"))?;
        let origin_client = r.str("origin_client")?;
        let received_at_ms = r.uint("received_at_ms")?;
        let message_expiry = r
            .opt_uint("message_expiry")?
            .map(|v| u32::try_from(v).map_err(|_| DecodeError::BadValue("message_expiry")))
            .transpose()?;
        let payload_utf8 = r.bool("payload_utf8")?;
        let content_type = r.opt_str("content_type")?;
        let response_topic = r.opt_str("response_topic")?;
        let correlation_data = r.opt_bytes("correlation_data")?;
        let n = r.count("user_properties")?;
        let mut user_properties = Vec::with_capacity(n);
        for _ in 0..n {
            user_properties.push((r.str("user_property")?, r.str("user_property")?));
        }
        let payload = Bytes::copy_from_slice(r.bytes("payload")?);
        let claim = if r.is_empty() {
            None
        } else {
            Some(Revision::new(r.uint("claim")?).ok_or(DecodeError::BadValue("claim"))?)
        };
        r.end()?;
        Ok(Envelope {
            qos,
            retain,
            origin_node,
            origin_client,
            received_at_ms,
            message_expiry,
            payload_utf8,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
            payload,
            claim,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    fn plain(expiry: Option<u32>) -> Envelope {
        Envelope {
            qos: QoS::AtLeastOnce,
            retain: false,
            origin_node: NodeId::new("m1").unwrap(),
            origin_client: "c".into(),
            received_at_ms: 10_000,
            message_expiry: expiry,
            payload_utf8: false,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            payload: Bytes::from_static(b"21.5"),
            claim: None,
        }
    }

    #[test]
    fn expiry_counts_whole_seconds_waited() {
        assert_eq!(plain(None).remaining_expiry(u64::MAX), Expiry::Never);
        let e = plain(Some(10));
        assert_eq!(e.remaining_expiry(10_000), Expiry::Remaining(10));
        assert_eq!(e.remaining_expiry(13_999), Expiry::Remaining(7));
        assert_eq!(e.remaining_expiry(19_999), Expiry::Remaining(1));
        assert_eq!(e.remaining_expiry(20_000), Expiry::Expired);
        // A receiving clock behind the origin's: no waiting counted.
        assert_eq!(e.remaining_expiry(5_000), Expiry::Remaining(10));
        assert_eq!(plain(Some(0)).remaining_expiry(10_000), Expiry::Expired);
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            (
                prop::sample::select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]),
                any::<bool>(),
                "[a-z0-9_-]{1,20}",
                "\\PC{0,23}",
                any::<u64>(),
                prop::option::of(any::<u32>()),
            ),
            (
                any::<bool>(),
                prop::option::of("\\PC{0,10}"),
                prop::option::of("\\PC{1,10}"),
                prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
                prop::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..4),
                prop::collection::vec(any::<u8>(), 0..256),
                prop::option::of(1u64..),
            ),
        )
            .prop_map(
                |(
                    (qos, retain, node, client, at, expiry),
                    (utf8, ct, rt, cd, up, payload, claim),
                )| {
                    Envelope {
                        qos,
                        retain,
                        origin_node: NodeId::new(&node).unwrap(),
                        origin_client: client,
                        received_at_ms: at,
                        message_expiry: expiry,
                        payload_utf8: utf8,
                        content_type: ct,
                        response_topic: rt,
                        correlation_data: cd.map(Into::into),
                        user_properties: up,
                        payload: payload.into(),
                        claim: claim.and_then(Revision::new),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(e in envelope()) {
            prop_assert_eq!(Envelope::decode(&e.encode()), Ok(e));
        }

        #[test]
        fn truncated_is_refused(e in envelope(), cut in any::<prop::sample::Index>()) {
            let data = e.encode();
            let cut = cut.index(data.len());
            // Cut before the trailing claim: refused. Cut right before it: an envelope of a
            // node before the field, read without a claim.
            let without = Envelope { claim: None, ..e.clone() }.encode().len();
            match Envelope::decode(&data[..cut]) {
                Ok(read) => {
                    prop_assert_eq!(cut, without);
                    prop_assert_eq!(read, Envelope { claim: None, ..e });
                }
                Err(_) => prop_assert!(cut != without || e.claim.is_none()),
            }
        }

        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Envelope::decode(&data);
        }

        #[test]
        fn expiry_never_grows(e in envelope(), later in 0u64..10_000_000) {
            let now = e.received_at_ms.saturating_add(later);
            match (e.remaining_expiry(e.received_at_ms), e.remaining_expiry(now)) {
                (Expiry::Never, b) => prop_assert_eq!(b, Expiry::Never),
                (Expiry::Remaining(a), Expiry::Remaining(b)) => prop_assert!(b <= a),
                (_, Expiry::Expired) | (Expiry::Expired, _) => {}
                (a, b) => prop_assert!(false, "{:?} then {:?}", a, b),
            }
        }
    }
}
