//! The text forms of the three hash formats: reading them (strictly: digits are digits,
//! base64 is base64, lengths are checked) and writing them as Mosquitto does (`$6$` and
//! `$7$` with padded base64, `$argon2id$` as libargon2's PHC string, without padding).

use std::fmt;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, STANDARD_PAD_INDIFFERENT};
use base64::Engine;

use super::hash::{
    check_pbkdf2_iterations, HashError, Kind, PasswordHash, MAX_ARGON2_ITERATIONS,
    MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_PARALLELISM, SHA512_LEN,
};

const MAX_SALT_LEN: usize = 1024;
const MAX_ARGON2_HASH_LEN: usize = 1024;

pub(super) fn parse_sha512(rest: &str) -> Result<PasswordHash, HashError> {
    const F: &str = "$6$";
    let (salt, hash) = rest.split_once('$').ok_or(HashError::Malformed {
        format: F,
        reason: "expected $6$SALT$HASH",
    })?;
    let salt = decode_salt(F, salt)?;
    let hash = decode_sha512_hash(F, hash)?;
    Ok(PasswordHash(Kind::Sha512 { salt, hash }))
}

pub(super) fn parse_pbkdf2(rest: &str) -> Result<PasswordHash, HashError> {
    const F: &str = "$7$";
    let mut parts = rest.split('$');
    let (Some(iterations), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HashError::Malformed {
            format: F,
            reason: "expected $7$ITERATIONS$SALT$HASH",
        });
    };
    let iterations = parse_decimal(iterations).ok_or(HashError::Malformed {
        format: F,
        reason: "the iteration count is not a number",
    })?;
    check_pbkdf2_iterations(iterations)?;
    let salt = decode_salt(F, salt)?;
    let hash = decode_sha512_hash(F, hash)?;
    Ok(PasswordHash(Kind::Pbkdf2 {
        iterations,
        salt,
        hash,
    }))
}

/// `v=19$m=47104,t=1,p=1$SALT$HASH`, or without `v=` (argon2 1.0, version 0x10), as libargon2
/// writes and reads it.
pub(super) fn parse_argon2id(rest: &str) -> Result<PasswordHash, HashError> {
    const F: &str = "$argon2id$";
    let malformed = |reason| HashError::Malformed { format: F, reason };
    let mut parts: Vec<&str> = rest.split('$').collect();
    let version = match parts.first().and_then(|p| p.strip_prefix("v=")) {
        Some(v) => {
            let version = match parse_decimal(v) {
                Some(0x10) => argon2::Version::V0x10,
                Some(0x13) => argon2::Version::V0x13,
                _ => return Err(malformed("the version must be v=16 or v=19")),
            };
            parts.remove(0);
            version
        }
        None => argon2::Version::V0x10,
    };
    let [params, salt, hash] = parts.as_slice() else {
        return Err(malformed("expected $argon2id$v=19$m=M,t=T,p=P$SALT$HASH"));
    };
    let mut values = [0u32; 3];
    let mut fields = params.split(',');
    for (value, key) in values.iter_mut().zip(["m=", "t=", "p="]) {
        *value = fields
            .next()
            .and_then(|f| f.strip_prefix(key))
            .and_then(parse_decimal)
            .ok_or(malformed("the parameters must be m=M,t=T,p=P"))?;
    }
    if fields.next().is_some() {
        return Err(malformed("only the parameters m, t and p are supported"));
    }
    let [memory_kib, iterations, parallelism] = values;
    if memory_kib > MAX_ARGON2_MEMORY_KIB
        || !(1..=MAX_ARGON2_ITERATIONS).contains(&iterations)
        || !(1..=MAX_ARGON2_PARALLELISM).contains(&parallelism)
        || memory_kib < 8 * parallelism
    {
        return Err(HashError::OutOfRange(format!(
            "argon2id parameters m={memory_kib},t={iterations},p={parallelism} are out of range \
             (m at most {MAX_ARGON2_MEMORY_KIB} KiB and at least 8*p, t 1 to \
             {MAX_ARGON2_ITERATIONS}, p 1 to {MAX_ARGON2_PARALLELISM})"
        )));
    }
    let salt = decode(F, salt, &STANDARD_PAD_INDIFFERENT)?;
    if !(8..=MAX_SALT_LEN).contains(&salt.len()) {
        return Err(malformed("the salt must be 8 to 1024 bytes"));
    }
    let hash = decode(F, hash, &STANDARD_PAD_INDIFFERENT)?;
    if !(4..=MAX_ARGON2_HASH_LEN).contains(&hash.len()) {
        return Err(malformed("the hash must be 4 to 1024 bytes"));
    }
    Ok(PasswordHash(Kind::Argon2id {
        version,
        memory_kib,
        iterations,
        parallelism,
        salt,
        hash,
    }))
}

/// Digits only: no sign, no spaces, no overflow.
fn parse_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn decode(format: &'static str, text: &str, engine: &impl Engine) -> Result<Vec<u8>, HashError> {
    engine.decode(text).map_err(|_| HashError::Malformed {
        format,
        reason: "the salt or hash is not valid base64",
    })
}

fn decode_salt(format: &'static str, text: &str) -> Result<Vec<u8>, HashError> {
    let salt = decode(format, text, &STANDARD_PAD_INDIFFERENT)?;
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        return Err(HashError::Malformed {
            format,
            reason: "the salt must be 1 to 1024 bytes",
        });
    }
    Ok(salt)
}

fn decode_sha512_hash(format: &'static str, text: &str) -> Result<Vec<u8>, HashError> {
    let hash = decode(format, text, &STANDARD_PAD_INDIFFERENT)?;
    if hash.len() != SHA512_LEN {
        return Err(HashError::Malformed {
            format,
            reason: "the hash must be 64 bytes (SHA-512)",
        });
    }
    Ok(hash)
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            Kind::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            Kind::Argon2id {
                version,
                memory_kib,
                iterations,
                parallelism,
                salt,
                hash,
            } => {
                f.write_str("$argon2id$")?;
                // libargon2 writes no `v=` for version 0x10.
                if *version == argon2::Version::V0x13 {
                    f.write_str("v=19$")?;
                }
                write!(
                    f,
                    "m={memory_kib},t={iterations},p={parallelism}${}${}",
                    STANDARD_NO_PAD.encode(salt),
                    STANDARD_NO_PAD.encode(hash)
                )
            }
        }
    }
}
