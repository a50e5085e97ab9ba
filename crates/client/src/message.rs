//! Messages both ways, and what the broker answers to requests.

use std::sync::Arc;

use bytes::Bytes;
use makelaar_proto::{Properties, QoS, ReasonCode};

/// An application message: received from a subscription, or to publish.
///
/// ```
/// use makelaar_client::{Message, QoS};
///
/// let m = Message::new("sensors/1/temp", "21.5").with_qos(QoS::AtLeastOnce).with_retain(true);
/// assert_eq!(m.topic(), "sensors/1/temp");
/// assert_eq!(m.payload_str(), Some("21.5"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic name (a received message's topic alias is already resolved).
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    /// Received: the message was a retained one (or, with Retain As Published, published
    /// with retain). To publish: the broker keeps it as the topic's retained message.
    pub retain: bool,
    /// Received: the broker sent it before (a resend after reconnecting). Ignored when
    /// publishing.
    pub dup: bool,
    /// Received: the packet identifier (0 for QoS 0). Ignored when publishing.
    pub packet_id: u16,
    /// 5.0 properties: content type, response topic, correlation data, message expiry,
    /// payload format, user properties, subscription identifiers (received), topic alias.
    pub properties: Properties,
}

impl Message {
    /// A QoS 0, not retained message without properties.
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            dup: false,
            packet_id: 0,
            properties: Properties::default(),
        }
    }

    pub fn with_qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    pub fn with_properties(mut self, properties: Properties) -> Self {
        self.properties = properties;
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload as text, when it is valid UTF-8.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// The broker's answer to a PUBLISH: PUBACK (QoS 1), PUBREC then PUBCOMP (QoS 2); for QoS 0,
/// success as soon as the message is handed to the socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishAck {
    /// Success or "no matching subscribers" (0x10) in 5.0; failures are errors instead.
    pub reason: ReasonCode,
    /// Reason string and user properties of the acknowledgement (5.0).
    pub properties: Properties,
}
