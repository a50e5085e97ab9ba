//! Shared subscriptions (`$share/GROUP/FILTER`, MQTT 5.0 section 4.8.2): each message goes to
//! one member of each matching group, round-robin, preferring members that can take it now.

use std::collections::HashMap;
use std::time::Instant;

use super::{Broker, SessionIdx};
use crate::auth::Access;
use crate::message::{Delivery, Message};
use crate::session::{OutboundState, Subscription};
use crate::topic::TopicTree;

/// One group: every session subscribed to the same `$share/GROUP/FILTER`.
#[derive(Debug)]
struct Group {
    members: Vec<(SessionIdx, Subscription)>,
    next: usize,
}

/// All shared-subscription groups, indexed by their filter.
#[derive(Default)]
pub struct SharedSubscriptions {
    tree: TopicTree<u32, ()>,
    groups: Vec<Option<Group>>,
    free: Vec<u32>,
    by_name: HashMap<String, u32>,
    members: usize,
}

impl SharedSubscriptions {
    /// Adds or replaces a member; `full` is `$share/GROUP/FILTER`, `filter` its FILTER part.
    /// Returns whether the session was already a member.
    pub fn subscribe(
        &mut self,
        full: &str,
        filter: &str,
        idx: SessionIdx,
        sub: Subscription,
    ) -> bool {
        let g = match self.by_name.get(full) {
            Some(&g) => g,
            None => {
                let group = Group {
                    members: Vec::new(),
                    next: 0,
                };
                let g = match self.free.pop() {
                    Some(g) => {
                        if let Some(slot) = self.groups.get_mut(g as usize) {
                            *slot = Some(group);
                        }
                        g
                    }
                    None => {
                        self.groups.push(Some(group));
                        u32::try_from(self.groups.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.tree.insert(filter, g, ());
                self.by_name.insert(full.to_owned(), g);
                g
            }
        };
        let Some(group) = self.group_mut(g) else {
            return false;
        };
        if let Some(m) = group.members.iter_mut().find(|m| m.0 == idx) {
            m.1 = sub;
            return true;
        }
        group.members.push((idx, sub));
        self.members += 1;
        false
    }

    /// Removes a member; the group goes when its last member does. Returns whether it was one.
    pub fn unsubscribe(&mut self, full: &str, filter: &str, idx: SessionIdx) -> bool {
        let Some(&g) = self.by_name.get(full) else {
            return false;
        };
        let Some(group) = self.group_mut(g) else {
            return false;
        };
        let Some(pos) = group.members.iter().position(|m| m.0 == idx) else {
            return false;
        };
        group.members.remove(pos);
        let empty = group.members.is_empty();
        self.members -= 1;
        if empty {
            self.tree.remove(filter, g);
            self.by_name.remove(full);
            if let Some(slot) = self.groups.get_mut(g as usize) {
                *slot = None;
            }
            self.free.push(g);
        }
        true
    }

    /// Members over all groups.
    pub fn member_count(&self) -> usize {
        self.members
    }

    fn group_mut(&mut self, g: u32) -> Option<&mut Group> {
        self.groups.get_mut(g as usize).and_then(Option::as_mut)
    }
}

impl Broker {
    /// Sends the message to one member of every matching group; returns how many got it.
    pub(super) fn route_shared(&mut self, now: Instant, msg: &std::sync::Arc<Message>) -> usize {
        let mut hit: Vec<u32> = Vec::new();
        self.shared
            .tree
            .for_each_match(&msg.topic, |g, _| hit.push(g));
        let mut count = 0;
        for g in hit {
            if let Some((idx, sub)) = self.pick_member(g, None, &msg.topic) {
                let d = Delivery {
                    qos: msg.qos.min(sub.options.qos),
                    retain: msg.retain && sub.options.retain_as_published,
                    msg: msg.clone(),
                    subscription_ids: sub.id.into_iter().collect(),
                    shared_group: Some(g),
                    seq: 0,
                };
                self.deliver(now, idx, d);
                count += 1;
            }
        }
        count
    }

    /// The number of groups matching `topic` (which would each get a message on it).
    pub(super) fn shared_groups_matching(&self, topic: &str) -> usize {
        let mut n = 0;
        self.shared.tree.for_each_match(topic, |_, _| n += 1);
        n
    }

    /// Sends the message to one member of the group named `full` (`$share/GROUP/FILTER`),
    /// if it has one here that may read it; returns whether one got it.
    pub(super) fn route_to_group(
        &mut self,
        now: Instant,
        full: &str,
        msg: &std::sync::Arc<Message>,
    ) -> bool {
        let Some(&g) = self.shared.by_name.get(full) else {
            return false;
        };
        let Some((idx, sub)) = self.pick_member(g, None, &msg.topic) else {
            return false;
        };
        let d = Delivery {
            qos: msg.qos.min(sub.options.qos),
            retain: msg.retain && sub.options.retain_as_published,
            msg: msg.clone(),
            subscription_ids: sub.id.into_iter().collect(),
            shared_group: Some(g),
            seq: 0,
        };
        self.deliver(now, idx, d);
        true
    }

    /// Round-robin over the group, preferring a connected member with room in its window,
    /// then any connected member, then anyone (who keeps it queued). Members who may not read
    /// `topic` are passed over.
    fn pick_member(
        &mut self,
        g: u32,
        exclude: Option<SessionIdx>,
        topic: &str,
    ) -> Option<(SessionIdx, Subscription)> {
        let group = self
            .shared
            .groups
            .get(g as usize)
            .and_then(Option::as_ref)?;
        let n = group.members.len();
        let start = group.next % n.max(1);
        let order = (0..n).map(|k| (start + k) % n);
        let mut connected = None;
        let mut any = None;
        let mut chosen = None;
        for pos in order {
            let Some((idx, _)) = group.members.get(pos) else {
                continue;
            };
            if Some(*idx) == exclude {
                continue;
            }
            let Ok(s) = self.sessions.get(*idx) else {
                continue;
            };
            if let Some(auth) = &self.authorizer {
                if !auth.allowed(&s.client_id, s.username.as_deref(), topic, Access::Read) {
                    continue;
                }
            }
            any.get_or_insert(pos);
            if s.conn.is_some() {
                connected.get_or_insert(pos);
                if s.window_open() {
                    chosen = Some(pos);
                    break;
                }
            }
        }
        let pos = chosen.or(connected).or(any)?;
        let member = group.members.get(pos).cloned();
        if let Some(group) = self.shared.group_mut(g) {
            group.next = pos + 1;
        }
        member
    }

    /// A member went offline: its unacknowledged shared messages go to other connected
    /// members, so a group keeps flowing without it [MQTT-4.8.2-?] (5.0 section 4.8.2).
    pub(super) fn redistribute_shared(&mut self, now: Instant, idx: SessionIdx) {
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let mut moved = Vec::new();
        let mut keep = std::collections::VecDeque::new();
        for m in s.inflight.drain(..) {
            if m.delivery.shared_group.is_some() && m.state == OutboundState::AwaitingAck {
                moved.push(m.delivery);
            } else {
                keep.push_back(m);
            }
        }
        s.inflight = keep;
        let mut kept_queue = std::collections::VecDeque::new();
        while let Some(d) = s.pop_queue() {
            if d.shared_group.is_some() {
                moved.push(d);
            } else {
                kept_queue.push_back(d);
            }
        }
        for d in kept_queue {
            s.push_queue(d);
        }
        for mut d in moved {
            // Leaves this session's stored queue; wherever it goes, it gets a new number.
            self.journal_done(idx, &d);
            d.seq = 0;
            self.reroute_one(now, d, Some(idx));
        }
    }

    /// Deliveries of a session that ended: the shared ones go to another member.
    pub(super) fn reroute_shared(&mut self, now: Instant, deliveries: Vec<Delivery>) {
        for d in deliveries.into_iter().filter(|d| d.shared_group.is_some()) {
            self.reroute_one(now, d, None);
        }
    }

    fn reroute_one(&mut self, now: Instant, mut d: Delivery, exclude: Option<SessionIdx>) {
        let Some(g) = d.shared_group else { return };
        let target = self.pick_member(g, exclude, &d.msg.topic);
        match target {
            Some((idx, sub)) if Some(idx) != exclude => {
                d.qos = d.msg.qos.min(sub.options.qos);
                d.subscription_ids = sub.id.into_iter().collect();
                self.deliver(now, idx, d);
            }
            // No other member: the leaving session keeps it (redelivered when it returns).
            _ => {
                if let Some(idx) = exclude {
                    self.keep_queued(idx, d);
                }
            }
        }
    }
}
