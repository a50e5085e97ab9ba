//! WebSocket frames (RFC 6455 section 5), sans-IO, for the server side: [`Reader`] turns the
//! client's masked frames back into the byte stream they carry, in place and without
//! buffering a frame or a message; [`data_header`] and [`control_frame`] build the server's
//! unmasked frames.
//!
//! MQTT rides in binary frames, and its packets need not line up with them: one frame may
//! hold several packets or part of one [MQTT-6.0.0-2], so the payloads are simply
//! concatenated into one stream for the MQTT decoder.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// Close codes (RFC 6455 section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
pub const CLOSE_TOO_BIG: u16 = 1009;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The longest payload of a control frame.
pub const MAX_CONTROL: usize = 125;
/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Why the client's frames end the connection: the close code to send, and a reason for
/// the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Decodes the client's frames.
#[derive(Debug)]
pub struct Reader {
    /// Header bytes gathered so far (a header may be split across reads).
    head: [u8; MAX_HEADER],
    head_len: u8,
    /// Within a frame's payload (the header is complete).
    in_payload: bool,
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes of the frame already seen (the mask's position).
    seen: u64,
    left: u64,
    /// A data message was started by a frame without FIN: continuations follow.
    in_message: bool,
    message_len: u64,
    max_message: u64,
    /// The payload of the control frame being read.
    control: [u8; MAX_CONTROL],
    control_len: u8,
    /// The payload of the last ping not yet answered.
    ping: Option<([u8; MAX_CONTROL], u8)>,
    /// The client's close frame: its status code, if it gave one. Nothing after it is read.
    close: Option<Option<u16>>,
}

impl Reader {
    /// A reader refusing data messages longer than `max_message` bytes (close code 1009).
    pub fn new(max_message: u64) -> Reader {
        Reader {
            head: [0; MAX_HEADER],
            head_len: 0,
            in_payload: false,
            opcode: 0,
            fin: false,
            mask: [0; 4],
            seen: 0,
            left: 0,
            in_message: false,
            message_len: 0,
            max_message,
            control: [0; MAX_CONTROL],
            control_len: 0,
            ping: None,
            close: None,
        }
    }

    /// Decodes the bytes just received, `buf`, in place: the data they carry is moved to the
    /// front of `buf`, unmasked, and its length returned. Pings and a close frame are noted
    /// (see [`Reader::take_ping`] and [`Reader::close_received`]); bytes after a close frame
    /// are ignored.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<usize, Violation> {
        let (mut r, mut w) = (0usize, 0usize);
        while r < buf.len() && self.close.is_none() {
            if !self.in_payload {
                r += self.gather_header(buf.get(r..).unwrap_or_default())?;
                continue;
            }
            let avail = buf.len() - r;
            let n = usize::try_from(self.left).map_or(avail, |left| left.min(avail));
            if self.opcode == OP_BINARY || self.opcode == OP_CONTINUATION {
                buf.copy_within(r..r + n, w);
                if let Some(data) = buf.get_mut(w..w + n) {
                    self.unmask(data);
                }
                w += n;
            } else {
                let start = usize::from(self.control_len);
                let (control, mask, seen) = (&mut self.control, self.mask, self.seen);
                if let (Some(dst), Some(src)) =
                    (control.get_mut(start..start + n), buf.get(r..r + n))
                {
                    for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
                        *d = s ^ mask_byte(mask, seen + i as u64);
                    }
                }
                self.control_len = u8::try_from(start + n).unwrap_or(u8::MAX);
            }
            r += n;
            self.seen += n as u64;
            self.left -= n as u64;
            if self.left == 0 {
                self.end_frame()?;
            }
        }
        Ok(w)
    }

    /// The payload of a ping to answer with a pong, once.
    pub fn take_ping(&mut self) -> Option<([u8; MAX_CONTROL], u8)> {
        self.ping.take()
    }

    /// The client sent a close frame (with this status code, if any).
    pub fn close_received(&self) -> Option<Option<u16>> {
        self.close
    }

    fn unmask(&self, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask_byte(self.mask, self.seen + i as u64);
        }
    }

    /// Takes header bytes from `input`; returns how many it used.
    fn gather_header(&mut self, input: &[u8]) -> Result<usize, Violation> {
        let have = usize::from(self.head_len);
        // The second byte tells the header's length: gather two bytes first.
        let want = match self.head.get(1) {
            Some(&b1) if have >= 2 => header_len(b1),
            _ => 2,
        };
        let take = (want - have).min(input.len());
        if let (Some(dst), Some(src)) = (self.head.get_mut(have..have + take), input.get(..take)) {
            dst.copy_from_slice(src);
        }
        self.head_len = (have + take) as u8;
        if have + take == want && want > 2 {
            self.start_frame()?;
        }
        Ok(take)
    }

    /// Checks a complete header and starts its frame.
    fn start_frame(&mut self) -> Result<(), Violation> {
        let [b0, b1, rest @ ..] = self.head;
        let (len, mask) = match (b1 & 0x7F, rest) {
            (126, [a, b, m0, m1, m2, m3, ..]) => {
                (u64::from(u16::from_be_bytes([a, b])), [m0, m1, m2, m3])
            }
            (127, [a, b, c, d, e, f, g, h, m0, m1, m2, m3]) => (
                u64::from_be_bytes([a, b, c, d, e, f, g, h]),
                [m0, m1, m2, m3],
            ),
            (n, [m0, m1, m2, m3, ..]) => (u64::from(n), [m0, m1, m2, m3]),
        };
        self.mask = mask;
        self.head_len = 0;
        self.fin = b0 & 0x80 != 0;
        self.opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(violation(
                CLOSE_PROTOCOL_ERROR,
                "reserved bits set (no extension was agreed)",
            ));
        }
        if b1 & 0x80 == 0 {
            return Err(violation(
                CLOSE_PROTOCOL_ERROR,
                "unmasked frame from the client",
            ));
        }
        match self.opcode {
            OP_BINARY if self.in_message => {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    "new message before the last one ended",
                ))
            }
            OP_CONTINUATION if !self.in_message => {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    "continuation frame without a message",
                ))
            }
            OP_BINARY | OP_CONTINUATION => {
                if self.opcode == OP_BINARY {
                    self.message_len = 0;
                }
                self.message_len = self.message_len.saturating_add(len);
                if self.message_len > self.max_message {
                    return Err(violation(
                        CLOSE_TOO_BIG,
                        "message larger than max_packet_size",
                    ));
                }
                self.in_message = !self.fin;
            }
            // [MQTT-6.0.0-1] MQTT packets come in binary frames; any other data frame closes
            // the connection.
            OP_TEXT => {
                return Err(violation(
                    CLOSE_UNSUPPORTED_DATA,
                    "text frame (MQTT needs binary frames)",
                ))
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !self.fin || len > MAX_CONTROL as u64 {
                    return Err(violation(
                        CLOSE_PROTOCOL_ERROR,
                        "fragmented or oversized control frame",
                    ));
                }
                self.control_len = 0;
            }
            _ => return Err(violation(CLOSE_PROTOCOL_ERROR, "unknown opcode")),
        }
        self.in_payload = true;
        self.seen = 0;
        self.left = len;
        if len == 0 {
            self.end_frame()?;
        }
        Ok(())
    }

    fn end_frame(&mut self) -> Result<(), Violation> {
        self.in_payload = false;
        let payload = self
            .control
            .get(..usize::from(self.control_len))
            .unwrap_or_default();
        match self.opcode {
            OP_PING => self.ping = Some((self.control, self.control_len)),
            OP_CLOSE => {
                let code = match payload {
                    [] => None,
                    [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
                    [_] => return Err(violation(CLOSE_PROTOCOL_ERROR, "close frame of one byte")),
                };
                self.close = Some(code);
            }
            _ => {}
        }
        Ok(())
    }
}

fn mask_byte(mask: [u8; 4], at: u64) -> u8 {
    mask.get((at % 4) as usize).copied().unwrap_or(0)
}

/// The length of a client frame's header (always masked) from its second byte.
fn header_len(b1: u8) -> usize {
    4 + match b1 & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// The header of an unmasked binary frame (FIN set) of `len` bytes, and its length.
pub fn data_header(len: usize) -> ([u8; 10], usize) {
    let b0 = 0x80 | OP_BINARY;
    let [a, b, c, d, e, f, g, h] = (len as u64).to_be_bytes();
    if len < 126 {
        ([b0, len as u8, 0, 0, 0, 0, 0, 0, 0, 0], 2)
    } else if len <= usize::from(u16::MAX) {
        ([b0, 126, g, h, 0, 0, 0, 0, 0, 0], 4)
    } else {
        ([b0, 127, a, b, c, d, e, f, g, h], 10)
    }
}

/// What the server has to send between data frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The answer to a ping, with its payload.
    Pong([u8; MAX_CONTROL], u8),
    /// The closing frame, with its status code.
    Close(u16),
}

/// An unmasked control frame, and its length.
pub fn control_frame(c: &Control) -> ([u8; 2 + MAX_CONTROL], usize) {
    let code;
    let (opcode, payload): (u8, &[u8]) = match c {
        Control::Pong(data, len) => (OP_PONG, data.get(..usize::from(*len)).unwrap_or_default()),
        Control::Close(c) => {
            code = c.to_be_bytes();
            (OP_CLOSE, &code)
        }
    };
    let n = payload.len().min(MAX_CONTROL);
    let mut f = [0u8; 2 + MAX_CONTROL];
    let [b0, b1, rest @ ..] = &mut f;
    *b0 = 0x80 | opcode;
    *b1 = n as u8;
    if let (Some(dst), Some(src)) = (rest.get_mut(..n), payload.get(..n)) {
        dst.copy_from_slice(src);
    }
    (f, 2 + n)
}

#[cfg(test)]
mod tests;
