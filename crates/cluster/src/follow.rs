//! Watching a partition consumer that has gone quiet: is the stream quiet too, or does it
//! hold messages the consumer is not delivering?
//!
//! A node reads each partition through an ephemeral consumer that lives on one NATS
//! server. When that server dies, the consumer dies with it, and the client library notices
//! only after two missed idle heartbeats (async-nats: 5 s each, fixed), so for ~10 s the
//! partition delivers nothing to this node: live messages come late, and a claim waiting for
//! the followers to pass a moved publisher's tails is refused meanwhile. A read-back (a
//! session's replay) was worse: it took 5 s of silence for the end of what the stream holds,
//! and returned short, so a resumed session could miss messages that were there.
//!
//! The rule here: after every [`SILENCE`] without a message, the shell reads the stream's
//! first and last sequence. A stream that holds a message at or past the consumer's next
//! one at two such looks in a row (so not just a message on its way) has a consumer that
//! is stuck: it is made again from that sequence. A read-back ends only when the stream no
//! longer holds what is left of its range.

use std::time::Duration;

/// How long a consumer may deliver nothing before the stream is looked at.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// How long the shell waits for the stream's bounds, or for a consumer to be made, before it
/// counts the request as failed and tries again (the engine's own timeout is longer).
pub const REQUEST_PATIENCE: Duration = Duration::from_secs(3);

/// How many looks in a row a read-back takes a stream's answer that ends before the
/// read's next message (an answer that is behind) before the read fails.
pub const READ_STALE_LOOKS: u32 = 10;

/// How many times in a row a read-back's consumer may be made again without delivering
/// anything before the read-back fails (the caller tries the whole read again later).
pub const READ_REMAKES: u32 = 5;

/// What to do after a silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSilence {
    /// Nothing missing (or not missing for long enough yet): keep waiting.
    Wait,
    /// The stream holds messages the consumer does not deliver: make it again from `from`.
    Remake {
        /// The first sequence the new consumer delivers.
        from: u64,
    },
    /// The rest of a read-back's range is no longer held by the stream (retention took
    /// it): it ends.
    End,
    /// A read-back's consumer was made again [`READ_REMAKES`] times without delivering:
    /// give up this read (it is tried again whole).
    Fail,
}

/// One consumer's watch: where it stands, and what the last look at the stream saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerWatch {
    /// The next sequence the consumer should deliver.
    next: u64,
    /// The last sequence a read-back wants (`None`: a live follower, no end).
    to: Option<u64>,
    /// The last look saw the stream ahead of the consumer.
    behind: bool,
    /// Remakes since the last delivered message.
    remakes: u32,
    /// A read-back's looks in a row whose answer ended before the read's next message.
    stale: u32,
}

impl ConsumerWatch {
    /// A live follower's watch, its consumer delivering from `next`.
    pub fn follower(next: u64) -> ConsumerWatch {
        ConsumerWatch {
            next,
            to: None,
            behind: false,
            remakes: 0,
            stale: 0,
        }
    }

    /// A read-back's watch: its consumer delivers from `from`, and `to` is the last wanted.
    pub fn read(from: u64, to: u64) -> ConsumerWatch {
        ConsumerWatch {
            next: from.max(1),
            to: Some(to),
            behind: false,
            remakes: 0,
            stale: 0,
        }
    }

    /// The next sequence the consumer should deliver.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The consumer delivered the message at `seq`.
    pub fn handle_message(&mut self, seq: u64) {
        self.next = self.next.max(seq + 1);
        self.behind = false;
        self.remakes = 0;
        self.stale = 0;
    }

    /// Whether a read-back has what it wants (its consumer can go).
    pub fn is_done(&self) -> bool {
        self.to.is_some_and(|to| self.next > to)
    }

    /// After a [`SILENCE`], the stream holds `first..=last` (`last < first`: empty).
    pub fn handle_silence(&mut self, first: u64, last: u64) -> AfterSilence {
        if let Some(to) = self.to {
            // What is left of the range is gone (retention): nothing more can come.
            if first > to {
                return AfterSilence::End;
            }
            // The stream says it ends before what the read still wants, though all of it
            // was appended: the answer is behind (a server that still takes itself for the
            // stream's leader while it is cut off, found by the fault harness: ending the
            // read there lost a resumed session 90 messages). Looked at again; after
            // [`READ_STALE_LOOKS`] such answers the read fails and is tried again whole.
            if last < self.next {
                self.behind = false;
                self.stale += 1;
                if self.stale > READ_STALE_LOOKS {
                    return AfterSilence::Fail;
                }
                return AfterSilence::Wait;
            }
            self.stale = 0;
        }
        if last < self.next {
            // The stream is as quiet as the consumer.
            self.behind = false;
            return AfterSilence::Wait;
        }
        if !self.behind {
            // Ahead: a message may just be on its way; the next look decides.
            self.behind = true;
            return AfterSilence::Wait;
        }
        self.behind = false;
        if self.to.is_some() && self.remakes >= READ_REMAKES {
            return AfterSilence::Fail;
        }
        self.remakes += 1;
        // Below the stream's first sequence nothing is held any more.
        let from = self.next.max(first);
        self.next = from;
        AfterSilence::Remake { from }
    }

    /// Making the consumer again failed (its stream's servers unreachable); whether the read
    /// gives up now (a live follower never does).
    pub fn handle_remake_failed(&mut self) -> bool {
        if self.to.is_none() {
            return false;
        }
        self.remakes += 1;
        self.remakes > READ_REMAKES
    }

    /// The stream could not be looked at (its server is unreachable too): says nothing, and
    /// the next look starts afresh.
    pub fn handle_unknown(&mut self) {
        self.behind = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_stream_and_a_quiet_follower_wait() {
        let mut w = ConsumerWatch::follower(11);
        for _ in 0..5 {
            assert_eq!(w.handle_silence(1, 10), AfterSilence::Wait);
        }
    }

    #[test]
    fn a_follower_behind_at_two_looks_in_a_row_is_made_again_from_its_next_message() {
        let mut w = ConsumerWatch::follower(11);
        // Message 11 may be on its way at the first look.
        assert_eq!(w.handle_silence(1, 11), AfterSilence::Wait);
        assert_eq!(w.handle_silence(1, 12), AfterSilence::Remake { from: 11 });
        // A follower is made again as often as it takes.
        for _ in 0..10 {
            assert_eq!(w.handle_silence(1, 12), AfterSilence::Wait);
            assert_eq!(w.handle_silence(1, 12), AfterSilence::Remake { from: 11 });
        }
    }

    #[test]
    fn a_message_between_two_looks_clears_the_suspicion() {
        let mut w = ConsumerWatch::follower(11);
        assert_eq!(w.handle_silence(1, 11), AfterSilence::Wait);
        w.handle_message(11);
        assert_eq!(w.next(), 12);
        assert_eq!(w.handle_silence(1, 12), AfterSilence::Wait);
        assert_eq!(w.handle_silence(1, 12), AfterSilence::Remake { from: 12 });
    }

    #[test]
    fn an_unreadable_stream_starts_the_looks_afresh() {
        let mut w = ConsumerWatch::follower(5);
        assert_eq!(w.handle_silence(1, 9), AfterSilence::Wait);
        w.handle_unknown();
        assert_eq!(w.handle_silence(1, 9), AfterSilence::Wait);
        assert_eq!(w.handle_silence(1, 9), AfterSilence::Remake { from: 5 });
    }

    #[test]
    fn a_remake_starts_no_lower_than_what_the_stream_still_holds() {
        let mut w = ConsumerWatch::follower(5);
        w.handle_silence(20, 30);
        assert_eq!(w.handle_silence(20, 30), AfterSilence::Remake { from: 20 });
        assert_eq!(w.next(), 20);
    }

    #[test]
    fn a_read_back_whose_range_is_held_is_made_again_not_ended() {
        // The old rule ended a read after a silence, short of its range: a resumed session
        // then missed messages the stream still held.
        let mut w = ConsumerWatch::read(3, 9);
        w.handle_message(3);
        w.handle_message(4);
        assert_eq!(w.handle_silence(1, 40), AfterSilence::Wait);
        assert_eq!(w.handle_silence(1, 40), AfterSilence::Remake { from: 5 });
        assert!(!w.is_done());
        for s in 5..=9 {
            w.handle_message(s);
        }
        assert!(w.is_done());
    }

    #[test]
    fn a_read_back_ends_when_the_rest_of_its_range_is_no_longer_held() {
        let mut w = ConsumerWatch::read(3, 9);
        w.handle_message(3);
        // Retention dropped everything up to 12.
        assert_eq!(w.handle_silence(13, 40), AfterSilence::End);
    }

    #[test]
    fn a_stream_answer_that_ends_before_the_read_is_behind_and_never_ends_it() {
        // The read wants 4..=9, all appended; a cut-off server that still takes itself for
        // the leader says the stream ends at 3.
        let mut w = ConsumerWatch::read(3, 9);
        w.handle_message(3);
        for _ in 0..READ_STALE_LOOKS {
            assert_eq!(w.handle_silence(1, 3), AfterSilence::Wait);
        }
        assert_eq!(w.handle_silence(1, 3), AfterSilence::Fail);
        // A current answer in between starts the count afresh.
        let mut w = ConsumerWatch::read(3, 9);
        for _ in 0..READ_STALE_LOOKS {
            assert_eq!(w.handle_silence(1, 2), AfterSilence::Wait);
        }
        assert_eq!(w.handle_silence(1, 40), AfterSilence::Wait);
        for _ in 0..READ_STALE_LOOKS {
            assert_eq!(w.handle_silence(1, 2), AfterSilence::Wait);
        }
        // A follower's quiet stream is just quiet.
        let mut f = ConsumerWatch::follower(4);
        for _ in 0..3 * READ_STALE_LOOKS {
            assert_eq!(f.handle_silence(1, 3), AfterSilence::Wait);
        }
    }

    #[test]
    fn a_read_back_whose_consumer_cannot_be_made_again_fails_a_follower_never_does() {
        let mut w = ConsumerWatch::read(3, 9);
        for _ in 0..READ_REMAKES {
            assert!(!w.handle_remake_failed());
        }
        assert!(w.handle_remake_failed());
        let mut w = ConsumerWatch::follower(3);
        for _ in 0..100 {
            assert!(!w.handle_remake_failed());
        }
    }

    #[test]
    fn a_read_back_starting_below_the_stream_skips_to_what_it_holds() {
        let mut w = ConsumerWatch::read(3, 30);
        w.handle_silence(10, 40);
        assert_eq!(w.handle_silence(10, 40), AfterSilence::Remake { from: 10 });
    }

    #[test]
    fn a_read_back_that_never_delivers_fails_after_its_remakes() {
        let mut w = ConsumerWatch::read(3, 9);
        for _ in 0..READ_REMAKES {
            assert_eq!(w.handle_silence(1, 40), AfterSilence::Wait);
            assert!(matches!(
                w.handle_silence(1, 40),
                AfterSilence::Remake { from: 3 }
            ));
        }
        assert_eq!(w.handle_silence(1, 40), AfterSilence::Wait);
        assert_eq!(w.handle_silence(1, 40), AfterSilence::Fail);
        // A delivery resets the count.
        let mut w = ConsumerWatch::read(3, 9);
        for _ in 0..READ_REMAKES {
            w.handle_silence(1, 40);
            w.handle_silence(1, 40);
        }
        w.handle_message(3);
        w.handle_silence(1, 40);
        assert_eq!(w.handle_silence(1, 40), AfterSilence::Remake { from: 4 });
    }
}
