//! The small binary writer and reader behind the records the cluster keeps in KV buckets:
//! LEB128 integers, length-prefixed bytes and strings. Reading never panics; every way a
//! record can be short or wrong is a [`DecodeError`].

use bytes::{BufMut, Bytes, BytesMut};

/// Why a stored record does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record ends early.
    #[error("record is truncated")]
    Truncated,
    /// Written by a format this version does not know.
    #[error("record format version {0} is not known")]
    UnknownVersion(u8),
    /// A string is not UTF-8.
    #[error("record holds a string that is not UTF-8")]
    NotUtf8,
    /// A field holds a value outside its range.
    #[error("record field {0} is out of range")]
    BadValue(&'static str),
    /// Bytes after the last field.
    #[error("record has trailing bytes")]
    Trailing,
}

/// Writes fields into a growing buffer.
#[derive(Debug, Default)]
pub struct Writer(BytesMut);

impl Writer {
    /// A writer that starts with the format version byte.
    pub fn new(version: u8) -> Writer {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(version);
        Writer(b)
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }

    /// A bool as one byte.
    pub fn bool(&mut self, v: bool) {
        self.0.put_u8(u8::from(v));
    }

    /// An unsigned integer, LEB128.
    pub fn uint(&mut self, mut v: u64) {
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.put_u8(low);
                return;
            }
            self.0.put_u8(low | 0x80);
        }
    }

    /// Bytes, prefixed by their length.
    pub fn bytes(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.0.put_slice(b);
    }

    /// A string, prefixed by its length.
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// An optional unsigned integer: a presence byte, then the value.
    pub fn opt_uint(&mut self, v: Option<u64>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.uint(v);
        }
    }

    /// An optional string.
    pub fn opt_str(&mut self, v: Option<&str>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.str(v);
        }
    }

    /// An optional byte string.
    pub fn opt_bytes(&mut self, v: Option<&[u8]>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.bytes(v);
        }
    }

    /// The encoded record.
    pub fn finish(self) -> Bytes {
        self.0.freeze()
    }
}

/// Reads fields from a record.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader over `data`, after checking its version byte against `known`.
    pub fn new(data: &'a [u8], known: u8) -> Result<Reader<'a>, DecodeError> {
        let (&v, rest) = data.split_first().ok_or(DecodeError::Truncated)?;
        if v != known {
            return Err(DecodeError::UnknownVersion(v));
        }
        Ok(Reader(rest))
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&v, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(v)
    }

    /// A bool; any byte other than 0 and 1 is refused.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue(field)),
        }
    }

    /// A LEB128 unsigned integer of at most 64 bits.
    pub fn uint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(DecodeError::BadValue(field));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadValue(field))
    }

    /// An integer that must fit `T`.
    pub fn int<T: TryFrom<u64>>(&mut self, field: &'static str) -> Result<T, DecodeError> {
        T::try_from(self.uint(field)?).map_err(|_| DecodeError::BadValue(field))
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.uint(field)?).map_err(|_| DecodeError::Truncated)?;
        if len > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (b, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(b)
    }

    /// A length-prefixed string.
    pub fn str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8)
    }

    /// An optional integer.
    pub fn opt_uint(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        if self.bool(field)? {
            self.uint(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An optional string.
    pub fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        if self.bool(field)? {
            self.str(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An optional byte string.
    pub fn opt_bytes(&mut self, field: &'static str) -> Result<Option<Bytes>, DecodeError> {
        if self.bool(field)? {
            self.bytes(field).map(|b| Some(Bytes::copy_from_slice(b)))
        } else {
            Ok(None)
        }
    }

    /// A count of items that follow, bounded by the bytes left (each item takes at least
    /// one byte), so a forged count cannot make the reader allocate much.
    pub fn count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n: usize = self.int(field)?;
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    /// Whether nothing is left: a field added at the end of a record is absent from records
    /// written before it existed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks that nothing is left.
    pub fn end(self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uints_round_trip(v in any::<u64>()) {
            let mut w = Writer::new(1);
            w.uint(v);
            let data = w.finish();
            let mut r = Reader::new(&data, 1).unwrap();
            prop_assert_eq!(r.uint("v"), Ok(v));
            prop_assert!(r.end().is_ok());
        }
    }

    #[test]
    fn overlong_uint_refused() {
        let data = [
            1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        let mut r = Reader::new(&data, 1).unwrap();
        assert_eq!(r.uint("v"), Err(DecodeError::BadValue("v")));
        assert_eq!(
            Reader::new(&[2], 1).err(),
            Some(DecodeError::UnknownVersion(2))
        );
        assert_eq!(Reader::new(&[], 1).err(), Some(DecodeError::Truncated));
    }
}
