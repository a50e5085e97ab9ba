//! Shared subscriptions across nodes (`$share/GROUP/FILTER`, MQTT 5.0 section 4.8.2):
//! each message matching a group goes to exactly one member of the group in the whole
//! cluster (5.0 section 4.8.2), wherever its members are connected. The names and subjects the
//! nodes agree on, as plain functions (docs/cluster.md, "Shared subscriptions").
//!
//! - **QoS 0**: every node with a member subscribes the group's inner filter on the live
//!   subjects in a NATS queue group named from the group ([`ShareGroup::queue`]), so NATS
//!   hands each message to one of those nodes; that node picks one local member.
//! - **QoS 1/2**: one durable JetStream consumer per group and partition the filter can
//!   reach ([`ShareGroup::partitions`], [`ShareGroup::consumer`]), filtered on the group's
//!   filter in that partition ([`ShareGroup::stream_filter`]) and pulled by every node with
//!   a member; a message is acknowledged once the pulling node has handed it to a member's
//!   session, and one not acknowledged is delivered again to a node that still pulls.
//!
//! Counts: one queue subscription per node and group, one consumer per group and reachable
//! partition: they grow with the share groups, never with the members or clients (rule 2).

use makelaar_proto::topic::parse_shared;

use crate::partition::{fnv1a64, Partition, PartitionCount};
use crate::subject::{encode_filter, escape_token, Subject};

/// The longest part of a group's name that goes into its NATS names (for the reader of
/// `makelaar cluster status`; the hash keeps them distinct).
const NAME_PART: usize = 24;

/// A share group as the cluster names it: `$share/GROUP/FILTER`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareGroup {
    full: String,
    group: String,
    filter: String,
}

/// A filter that is not `$share/GROUP/FILTER`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a shared subscription: {0:?}")]
pub struct NotShared(pub String);

impl ShareGroup {
    /// The group of a `$share/GROUP/FILTER` subscription.
    pub fn parse(full: &str) -> Result<ShareGroup, NotShared> {
        match parse_shared(full) {
            Ok(Some((group, filter))) => Ok(ShareGroup {
                full: full.to_owned(),
                group: group.to_owned(),
                filter: filter.to_owned(),
            }),
            _ => Err(NotShared(full.to_owned())),
        }
    }

    /// `$share/GROUP/FILTER`.
    pub fn full(&self) -> &str {
        &self.full
    }

    /// The inner (plain) filter.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// A name part that is the same on every node for this group and filter (two groups of
    /// the same name on different filters are different groups), made of
    /// characters NATS accepts in queue and consumer names.
    fn name(&self, prefix: &str) -> String {
        let mut readable = escape_token(&self.group);
        readable.truncate(NAME_PART);
        format!(
            "{prefix}_share_{readable}_{:016x}",
            fnv1a64(self.full.as_bytes())
        )
    }

    /// The NATS queue group that the nodes with a member follow the live subjects in.
    pub fn queue(&self, prefix: &str) -> String {
        self.name(prefix)
    }

    /// The live subject (QoS 0) the queue subscription follows.
    pub fn live_subject(&self, prefix: &str) -> Subject {
        encode_filter(&self.filter).under(&format!("{prefix}.live"))
    }

    /// The partitions whose messages the filter can match: a filter without wildcards is one
    /// topic, which lives in one partition; any other may match topics in all of them.
    pub fn partitions(&self, count: PartitionCount) -> Vec<Partition> {
        if self.filter.contains(['+', '#']) {
            count.all().collect()
        } else {
            vec![count.of(&self.filter)]
        }
    }

    /// The durable consumer's name in partition `p`'s stream.
    pub fn consumer(&self, prefix: &str, p: Partition) -> String {
        format!("{}_p{}", self.name(prefix), p.index())
    }

    /// The consumer's filter subject in partition `p`'s stream.
    pub fn stream_filter(&self, prefix: &str, p: Partition) -> Subject {
        encode_filter(&self.filter).under(&format!("{prefix}.p{}", p.index()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backend::subject_matches;

    #[test]
    fn names_depend_on_group_and_filter_and_are_nats_safe() {
        let a = ShareGroup::parse("$share/g/t/#").unwrap();
        let b = ShareGroup::parse("$share/g/u/#").unwrap();
        let c = ShareGroup::parse("$share/h/t/#").unwrap();
        assert_eq!(a.filter(), "t/#");
        assert_eq!(a.full(), "$share/g/t/#");
        assert_ne!(a.queue("mk"), b.queue("mk"));
        assert_ne!(a.queue("mk"), c.queue("mk"));
        // The same on every node.
        assert_eq!(
            a.queue("mk"),
            ShareGroup::parse("$share/g/t/#").unwrap().queue("mk")
        );
        let odd = ShareGroup::parse("$share/a.b c*>\u{e9}/x").unwrap();
        let p = PartitionCount::new(4).unwrap().partition(3).unwrap();
        for name in [odd.queue("mk"), odd.consumer("mk", p)] {
            assert!(
                name.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'),
                "{name}"
            );
        }
        let long = ShareGroup::parse(&format!("$share/{}/x", "g".repeat(300))).unwrap();
        assert!(long.consumer("mk", p).len() < 64);
        assert!(ShareGroup::parse("t/#").is_err());
        assert!(ShareGroup::parse("$share/g").is_err());
    }

    #[test]
    fn an_exact_filter_reaches_one_partition_a_wildcard_all() {
        let n = PartitionCount::new(16).unwrap();
        let exact = ShareGroup::parse("$share/g/a/b").unwrap();
        assert_eq!(exact.partitions(n), vec![n.of("a/b")]);
        assert_eq!(
            ShareGroup::parse("$share/g/a/+")
                .unwrap()
                .partitions(n)
                .len(),
            16
        );
        assert_eq!(
            ShareGroup::parse("$share/g/#").unwrap().partitions(n).len(),
            16
        );
    }

    #[test]
    fn subjects_match_the_topics_the_inner_filter_matches() {
        let n = PartitionCount::new(4).unwrap();
        let g = ShareGroup::parse("$share/g/t/#").unwrap();
        let live = g.live_subject("mk");
        let topic = |t: &str| crate::subject::encode_topic(t);
        assert!(subject_matches(
            live.as_str(),
            topic("t/1").under("mk.live").as_str()
        ));
        assert!(subject_matches(
            live.as_str(),
            topic("t").under("mk.live").as_str()
        ));
        assert!(!subject_matches(
            live.as_str(),
            topic("u/1").under("mk.live").as_str()
        ));
        let p = n.of("t/1");
        let in_stream = topic("t/1").under(&format!("mk.p{}", p.index()));
        assert!(subject_matches(
            g.stream_filter("mk", p).as_str(),
            in_stream.as_str()
        ));
        let other = n.all().find(|q| *q != p).unwrap();
        assert!(!subject_matches(
            g.stream_filter("mk", other).as_str(),
            in_stream.as_str()
        ));
    }
}
