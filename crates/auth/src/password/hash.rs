//! One password hash in any of Mosquitto's three formats: making and verifying it. The text
//! forms are read and written in [`super::encoding`].
//!
//! | Format | Written by | Layout |
//! |---|---|---|
//! | `$6$salt$hash` | Mosquitto 1.x | SHA-512 over password ‖ salt, once; base64 with padding |
//! | `$7$iterations$salt$hash` | Mosquitto 2.0 | PBKDF2-HMAC-SHA512, 64-byte output; base64 with padding |
//! | `$argon2id$v=19$m=M,t=T,p=P$salt$hash` | Mosquitto 2.1 | the PHC string of libargon2; base64 without padding |
//!
//! The `$6$` layout (password first, then salt) was confirmed against a hash written by
//! Debian's `mosquitto_passwd -H sha512`; the `$7$` layout against `mosquitto_passwd -b`.

use std::fmt;

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::encoding;

/// Longest password accepted, in bytes: an MQTT password is at most 65,535 bytes.
pub const MAX_PASSWORD_LEN: usize = 65_535;

/// PBKDF2 iterations `mosquitto_passwd` 2.0 writes when `-I` is not given.
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 101;

/// Most PBKDF2 iterations accepted. A hash is computed for every CONNECT, so an absurd count
/// from a typo must not turn each login into minutes of CPU.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// Mosquitto 2.1's argon2id parameters, from `libcommon/password_common.c`
/// (`MOSQ_ARGON2_T`, `MOSQ_ARGON2_M`, `MOSQ_ARGON2_P`; salt and output are `HASH_LEN`, which
/// is OpenSSL's `EVP_MAX_MD_SIZE`, 64 bytes). They are also OWASP's first recommended argon2id
/// configuration (46 MiB, one pass, one lane).
pub mod argon2_defaults {
    /// Memory in KiB (46 MiB).
    pub const MEMORY_KIB: u32 = 47_104;
    /// Passes over the memory.
    pub const ITERATIONS: u32 = 1;
    /// Lanes.
    pub const PARALLELISM: u32 = 1;
    /// Random salt, in bytes.
    pub const SALT_LEN: usize = 64;
    /// Hash output, in bytes.
    pub const HASH_LEN: usize = 64;
}

/// Largest argon2id memory accepted from a file (1 GiB): every login allocates this much.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
/// Most argon2id passes accepted from a file.
pub const MAX_ARGON2_ITERATIONS: u32 = 1024;
/// Most argon2id lanes accepted from a file.
pub const MAX_ARGON2_PARALLELISM: u32 = 64;

/// Salt length `mosquitto_passwd` 2.0 uses for `$6$` and `$7$`.
const SHA512_SALT_LEN: usize = 12;
pub(super) const SHA512_LEN: usize = 64;

/// How to hash a new password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashParams {
    /// `$argon2id$` with Mosquitto 2.1's parameters (see [`argon2_defaults`]).
    #[default]
    Argon2id,
    /// `$7$`: PBKDF2-HMAC-SHA512 with a 12-byte salt, readable by Mosquitto 2.0 and later.
    Sha512Pbkdf2 {
        /// PBKDF2 iterations, 1 to [`MAX_PBKDF2_ITERATIONS`].
        iterations: u32,
    },
}

/// Why a hash could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Not one of the three formats.
    #[error("the hash is not in a known format: it must start with $6$, $7$ or $argon2id$")]
    UnknownFormat,
    /// The right prefix, but a broken body.
    #[error("the {format} hash is malformed: {reason}")]
    Malformed {
        /// `$6$`, `$7$` or `$argon2id$`.
        format: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A cost parameter outside the accepted range.
    #[error("{0}")]
    OutOfRange(String),
    /// The password is longer than an MQTT password can be.
    #[error("the password is longer than 65,535 bytes")]
    PasswordTooLong,
    /// The operating system gave no random bytes for the salt.
    #[error("no random bytes for the salt from the operating system: {0}")]
    Random(String),
}

/// A parsed password hash. `Display` gives the encoded form that goes into the file.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(pub(super) Kind);

#[derive(Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Argon2id {
        version: argon2::Version,
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl PasswordHash {
    /// Reads an encoded hash (the part after `username:`).
    pub fn parse(encoded: &str) -> Result<Self, HashError> {
        if let Some(rest) = encoded.strip_prefix("$6$") {
            encoding::parse_sha512(rest)
        } else if let Some(rest) = encoded.strip_prefix("$7$") {
            encoding::parse_pbkdf2(rest)
        } else if let Some(rest) = encoded.strip_prefix("$argon2id$") {
            encoding::parse_argon2id(rest)
        } else {
            Err(HashError::UnknownFormat)
        }
    }

    /// Whether `password` is the one this hash was made from. CPU-heavy (argon2id: 46 MiB and
    /// tens of milliseconds with Mosquitto's parameters): run it off the async runtime. The
    /// final comparison takes the same time wherever the bytes differ.
    pub fn verify(&self, password: &[u8]) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        let (expected, computed) = match &self.0 {
            Kind::Sha512 { salt, hash } => (hash, sha512_salted(password, salt).to_vec()),
            Kind::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => (hash, pbkdf2_sha512(password, salt, *iterations).to_vec()),
            Kind::Argon2id {
                version,
                memory_kib,
                iterations,
                parallelism,
                salt,
                hash,
            } => {
                let params = Argon2Cost {
                    version: *version,
                    memory_kib: *memory_kib,
                    iterations: *iterations,
                    parallelism: *parallelism,
                };
                match argon2id(password, salt, params, hash.len()) {
                    Ok(computed) => (hash, computed),
                    Err(_) => return false,
                }
            }
        };
        // Lengths are part of the stored format, not a secret.
        expected.len() == computed.len() && bool::from(expected.ct_eq(&computed))
    }

    /// The format's name as `mosquitto_passwd -H` spells it (`sha512` for `$6$`).
    pub fn algorithm(&self) -> &'static str {
        match self.0 {
            Kind::Sha512 { .. } => "sha512",
            Kind::Pbkdf2 { .. } => "sha512-pbkdf2",
            Kind::Argon2id { .. } => "argon2id",
        }
    }
}

/// Hashes a new password with a fresh random salt. CPU-heavy: see [`PasswordHash::verify`].
pub fn hash_password(password: &[u8], params: HashParams) -> Result<PasswordHash, HashError> {
    let salt_len = match params {
        HashParams::Argon2id => argon2_defaults::SALT_LEN,
        HashParams::Sha512Pbkdf2 { .. } => SHA512_SALT_LEN,
    };
    let mut salt = vec![0u8; salt_len];
    getrandom::fill(&mut salt).map_err(|e| HashError::Random(e.to_string()))?;
    hash_with_salt(password, params, salt)
}

/// [`hash_password`] with a given salt: deterministic, for tests.
pub(crate) fn hash_with_salt(
    password: &[u8],
    params: HashParams,
    salt: Vec<u8>,
) -> Result<PasswordHash, HashError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(HashError::PasswordTooLong);
    }
    let kind = match params {
        HashParams::Sha512Pbkdf2 { iterations } => {
            check_pbkdf2_iterations(iterations)?;
            let hash = pbkdf2_sha512(password, &salt, iterations).to_vec();
            Kind::Pbkdf2 {
                iterations,
                salt,
                hash,
            }
        }
        HashParams::Argon2id => {
            let cost = Argon2Cost {
                version: argon2::Version::V0x13,
                memory_kib: argon2_defaults::MEMORY_KIB,
                iterations: argon2_defaults::ITERATIONS,
                parallelism: argon2_defaults::PARALLELISM,
            };
            let hash = argon2id(password, &salt, cost, argon2_defaults::HASH_LEN)?;
            Kind::Argon2id {
                version: cost.version,
                memory_kib: cost.memory_kib,
                iterations: cost.iterations,
                parallelism: cost.parallelism,
                salt,
                hash,
            }
        }
    };
    Ok(PasswordHash(kind))
}

/// A `$6$` hash, for tests: Makelaar does not write this weak format.
#[cfg(test)]
pub(crate) fn sha512_with_salt(password: &[u8], salt: Vec<u8>) -> PasswordHash {
    let hash = sha512_salted(password, &salt).to_vec();
    PasswordHash(Kind::Sha512 { salt, hash })
}

/// An argon2id hash with chosen costs, for tests: small costs keep property tests fast.
#[cfg(test)]
pub(crate) fn argon2id_with_cost(
    password: &[u8],
    salt: Vec<u8>,
    (memory_kib, iterations, parallelism): (u32, u32, u32),
    hash_len: usize,
) -> Result<PasswordHash, HashError> {
    let cost = Argon2Cost {
        version: argon2::Version::V0x13,
        memory_kib,
        iterations,
        parallelism,
    };
    let hash = argon2id(password, &salt, cost, hash_len)?;
    Ok(PasswordHash(Kind::Argon2id {
        version: cost.version,
        memory_kib,
        iterations,
        parallelism,
        salt,
        hash,
    }))
}

pub(super) fn check_pbkdf2_iterations(iterations: u32) -> Result<(), HashError> {
    if (1..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(HashError::OutOfRange(format!(
            "PBKDF2 iterations must be between 1 and {MAX_PBKDF2_ITERATIONS}, not {iterations}"
        )))
    }
}

fn sha512_salted(password: &[u8], salt: &[u8]) -> [u8; SHA512_LEN] {
    let mut digest = Sha512::new();
    digest.update(password);
    digest.update(salt);
    digest.finalize().into()
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; SHA512_LEN] {
    let mut out = [0u8; SHA512_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

#[derive(Debug, Clone, Copy)]
struct Argon2Cost {
    version: argon2::Version,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

fn argon2id(
    password: &[u8],
    salt: &[u8],
    cost: Argon2Cost,
    out_len: usize,
) -> Result<Vec<u8>, HashError> {
    let out_of_range = |e: argon2::Error| HashError::OutOfRange(format!("argon2id: {e}"));
    let params = argon2::Params::new(
        cost.memory_kib,
        cost.iterations,
        cost.parallelism,
        Some(out_len),
    )
    .map_err(out_of_range)?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, cost.version, params);
    let mut out = vec![0u8; out_len];
    hasher
        .hash_password_into(password, salt, &mut out)
        .map_err(out_of_range)?;
    Ok(out)
}

/// Names the format only: a hash is not for logs.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({})", self.algorithm())
    }
}

impl std::str::FromStr for PasswordHash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
