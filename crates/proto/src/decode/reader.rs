//! A bounds-checked cursor over the body of one packet.
//!
//! Every read checks what is left first and reports a short body as a malformed packet: the
//! remaining length must cover every field it announces.

use bytes::{Buf, Bytes};

use crate::error::DecodeError;

/// The body of one packet (or of one property block), consumed front to back.
pub(crate) struct Reader {
    buf: Bytes,
}

const SHORT: DecodeError = DecodeError::Malformed("packet is shorter than its fields");

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer: at most four bytes, in the fewest bytes that hold the value
    /// [MQTT-1.5.5-1].
    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4u32 {
            let byte = self.u8()?;
            if i > 0 && byte == 0 {
                // A trailing zero continuation byte adds nothing: not the minimum encoding.
                return Err(DecodeError::Malformed(
                    "variable byte integer is not minimally encoded",
                ));
            }
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than four bytes",
        ))
    }

    /// The next `n` bytes, sharing the packet's buffer (no copy).
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.remaining() < n {
            return Err(SHORT);
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: a two-byte length and that many bytes (no copy).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A UTF-8 Encoded String that must be well-formed UTF-8 [MQTT-1.5.4-1] (Rust's `str`
    /// refuses the surrogates U+D800..U+DFFF too) and must not contain U+0000 [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let s = utf8(&raw)?;
        if raw.contains(&0) {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        Ok(s.to_owned())
    }

    /// Everything left (no copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// The remaining length must be consumed exactly by the packet's fields.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "remaining length is longer than the packet's fields",
            ))
        }
    }
}

/// Checks UTF-8 [MQTT-1.5.4-1].
pub(crate) fn utf8(raw: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(raw).map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))
}
