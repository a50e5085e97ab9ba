//! `[limits]` as written in `makelaar.toml` (feature `config`): the range checks made while
//! reading, and durations in seconds. An out-of-range value is a serde "invalid value" error
//! naming the range ("expected a number of seconds from 1 to 86400"), which the broker turns
//! into a sentence with the file, line and key.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::de::{self, Deserializer, Unexpected};
use serde::Deserialize;

use super::Limits;

/// Deserializes an unsigned integer and checks that it is in `min..=max`; the error names the
/// range, as "`what` from MIN to MAX".
fn de_ranged<'de, D, T>(d: D, (min, max): (u64, u64), what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    // Read as i64 (TOML's integer type) so negative numbers get the same range message.
    let v = i64::deserialize(d)?;
    let expected = format!("{what} from {min} to {max}");
    let out_of_range = || de::Error::invalid_value(Unexpected::Signed(v), &expected.as_str());
    let u = u64::try_from(v).map_err(|_| out_of_range())?;
    if u < min || u > max {
        return Err(out_of_range());
    }
    T::try_from(u).map_err(|_| out_of_range())
}

/// A range of [`Limits`] as `(min, max)` in `u64`.
fn bounds<T: Copy + TryInto<u64>>(range: &RangeInclusive<T>) -> (u64, u64) {
    let wide = |n: T| n.try_into().unwrap_or(u64::MAX);
    (wide(*range.start()), wide(*range.end()))
}

pub(super) fn de_max_packet_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    de_ranged(d, bounds(&Limits::MAX_PACKET_SIZE_RANGE), "a size in bytes")
}

pub(super) fn de_window<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    de_ranged(d, bounds(&Limits::WINDOW_RANGE), "a whole number")
}

pub(super) fn de_max_client_id_len<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    de_ranged(
        d,
        bounds(&Limits::MAX_CLIENT_ID_LEN_RANGE),
        "a length in bytes",
    )
}

pub(super) fn de_max_qos<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    de_ranged(d, bounds(&Limits::MAX_QOS_RANGE), "a QoS")
}

/// `connect_timeout`: a [`Duration`] written as whole seconds.
pub(super) mod connect_timeout {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let range = bounds(&Limits::CONNECT_TIMEOUT_SECS_RANGE);
        let secs: u64 = de_ranged(d, range, "a number of seconds")?;
        Ok(Duration::from_secs(secs))
    }

    pub fn serialize<S: serde::Serializer>(t: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.as_secs())
    }
}
