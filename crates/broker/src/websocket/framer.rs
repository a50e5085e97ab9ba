//! The server's data frames, sans-IO: [`Framer`] cuts the byte stream the connection task
//! writes at MQTT packet boundaries and gives each packet a binary frame of its own.
//!
//! [MQTT-6.0.0-2] allows several packets in one frame, but clients built on Eclipse Paho C
//! (and Paho C++) read the next packet only when the socket turns readable again: a PUBACK
//! behind a PUBLISH in the same frame waits there until something else arrives. No other
//! common broker puts two packets in a frame, so neither does Makelaar. The connection task
//! still writes everything it has ready in one write: the frames are laid out one after the
//! other in one buffer.
//!
//! The framer needs no help from the caller: a packet's length is in its fixed header (the
//! type byte and the Remaining Length, [MQTT-2.2.3]), which it reads as the bytes pass. A
//! packet handed over in several writes still gets one frame, whose header announces the
//! whole packet; a fixed header cut in two is held (at most four bytes) until the rest comes.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use makelaar_proto::Decoder;

use super::frame;

/// The longest fixed header: the type byte and a Remaining Length of four bytes.
const MAX_FIXED_HEADER: usize = 5;

/// Where the byte stream stands (see the module documentation).
#[derive(Debug, Default)]
pub struct Framer {
    /// Bytes of the current packet still to come; its frame header is already out.
    left: usize,
    /// The current packet's fixed header while it is incomplete.
    head: [u8; MAX_FIXED_HEADER],
    head_len: u8,
}

impl Framer {
    /// Whether the stream is between two packets, so that every frame started is complete
    /// and a control frame may follow.
    pub fn at_boundary(&self) -> bool {
        self.left == 0 && self.head_len == 0
    }

    /// Bytes of the packet being framed still to come (0 between packets, and while its
    /// fixed header is incomplete).
    pub fn left(&self) -> usize {
        self.left
    }

    /// Frames up to `limit` bytes of `input` into `out`: each packet that starts there gets
    /// a binary frame header before its first byte. Returns how many bytes of `input` were
    /// taken (at least one when neither is zero); the bytes of a fixed header that is not
    /// complete yet are taken but kept back, not put into `out`.
    pub fn frame(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> usize {
        let input = input.get(..limit.min(input.len())).unwrap_or_default();
        let mut taken = 0;
        while let Some(rest) = input.get(taken..).filter(|r| !r.is_empty()) {
            if self.left > 0 {
                let n = self.left.min(rest.len());
                out.extend_from_slice(rest.get(..n).unwrap_or_default());
                self.left -= n;
                taken += n;
                continue;
            }
            let (used, remaining) = self.gather_header(rest);
            taken += used;
            let Some(remaining) = remaining else {
                break; // the fixed header goes on in the next write
            };
            let head = self
                .head
                .get(..usize::from(self.head_len))
                .unwrap_or_default();
            let (frame_head, frame_head_len) = frame::data_header(head.len() + remaining);
            out.extend_from_slice(frame_head.get(..frame_head_len).unwrap_or_default());
            out.extend_from_slice(head);
            self.head_len = 0;
            self.left = remaining;
        }
        taken
    }

    /// Takes fixed-header bytes from `input`: how many it used, and the Remaining Length once
    /// the header is complete (read by the codec's own fixed-header parser).
    fn gather_header(&mut self, input: &[u8]) -> (usize, Option<usize>) {
        let mut used = 0;
        for &b in input {
            let at = usize::from(self.head_len);
            let Some(slot) = self.head.get_mut(at) else {
                break;
            };
            *slot = b;
            self.head_len += 1;
            used += 1;
            let head = self.head.get(..=at).unwrap_or_default();
            if let Some(total) = Decoder::pending_packet_len(head) {
                return (used, Some(total.saturating_sub(head.len())));
            }
            if head.len() == MAX_FIXED_HEADER {
                // [MQTT-1.5.5] at most four length bytes: the connection task encodes nothing
                // longer, so this is a broken invariant; the header ends here all the same
                // rather than running on.
                debug_assert!(false, "fixed header longer than {MAX_FIXED_HEADER} bytes");
                return (used, Some(0));
            }
        }
        (used, None)
    }
}

#[cfg(test)]
mod tests;
