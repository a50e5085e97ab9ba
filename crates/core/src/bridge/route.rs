//! Which topics a bridge carries, how their names change on the way, and the loop guard's
//! user property.

use makelaar_proto::topic::filter_matches;
use makelaar_proto::{Properties, QoS};

/// One `topic` line of a bridge, as the relay uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The pattern (may be empty when both prefixes are given).
    pub pattern: String,
    /// Local messages matching `local_prefix + pattern` go to the remote.
    pub out: bool,
    /// Remote messages matching `remote_prefix + pattern` come here.
    pub inward: bool,
    /// The highest QoS carried.
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl Route {
    /// The filter subscribed to on this broker (for `out`).
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter subscribed to at the remote (for `in`).
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// A local topic as published at the remote, if this route carries it out.
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        if !self.out || !filter_matches(&self.local_filter(), local_topic) {
            return None;
        }
        let rest = local_topic.strip_prefix(self.local_prefix.as_str())?;
        Some(format!("{}{}", self.remote_prefix, rest))
    }

    /// A remote topic as published here, if this route carries it in.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        if !self.inward || !filter_matches(&self.remote_filter(), remote_topic) {
            return None;
        }
        let rest = remote_topic.strip_prefix(self.remote_prefix.as_str())?;
        Some(format!("{}{}", self.local_prefix, rest))
    }

    /// A response topic carried along with a message on this route, remapped with the same
    /// prefixes when it starts with the source side's prefix, else unchanged.
    fn remap(topic: &str, from: &str, to: &str) -> String {
        match topic.strip_prefix(from) {
            Some(rest) => format!("{to}{rest}"),
            None => topic.to_owned(),
        }
    }

    /// Remaps the response topic of an outgoing message (local → remote prefix).
    pub fn remap_response_out(&self, props: &mut Properties) {
        if let Some(t) = props.response_topic.as_mut() {
            *t = Route::remap(t, &self.local_prefix, &self.remote_prefix);
        }
    }

    /// Remaps the response topic of an incoming message (remote → local prefix).
    pub fn remap_response_in(&self, props: &mut Properties) {
        if let Some(t) = props.response_topic.as_mut() {
            *t = Route::remap(t, &self.remote_prefix, &self.local_prefix);
        }
    }
}

/// The loop guard between Makelaar brokers: a user property `<name> = <origin>;<hops>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopGuard {
    /// The user property's name (`makelaar-origin` by default).
    pub property: String,
    /// Most hops a message makes.
    pub max_hops: u8,
    /// This broker's id, stable across restarts.
    pub broker_id: String,
}

/// What the loop guard says about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it, with the property set to this value.
    Carry,
    /// It started here and came back.
    Returned,
    /// It has made `max_hops` hops.
    TooManyHops,
}

/// The origin and hop count in the loop guard's property `name` (`<origin>;<hops>`), if the
/// message has it.
pub fn origin_of<'a>(props: &'a Properties, name: &str) -> Option<(&'a str, u8)> {
    let (_, value) = props.user_properties.iter().find(|(k, _)| k == name)?;
    let (origin, hops) = value.rsplit_once(';')?;
    Some((origin, hops.parse().ok()?))
}

impl LoopGuard {
    /// Checks a message crossing a bridge, either way, and when it may go on stamps it: the
    /// origin stays, or becomes this broker where it had none (the message entered the
    /// bridges here), and the hop count grows by one. Every crossing counts, so a message
    /// caught in any cycle of bridges stops after `max_hops`, and one that comes back to
    /// the broker it started at is dropped there.
    pub fn stamp(&self, props: &mut Properties) -> Verdict {
        let (origin, hops) = match origin_of(props, &self.property) {
            Some((o, h)) => (o.to_owned(), h),
            None => (self.broker_id.clone(), 0),
        };
        if hops > 0 && origin == self.broker_id {
            return Verdict::Returned;
        }
        if hops >= self.max_hops {
            return Verdict::TooManyHops;
        }
        props.user_properties.retain(|(k, _)| *k != self.property);
        props
            .user_properties
            .push((self.property.clone(), format!("{origin};{}", hops + 1)));
        Verdict::Carry
    }
}
