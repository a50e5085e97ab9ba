//! Mosquitto-compatible authentication files for Makelaar.
//!
//! - [`password`]: password files (`username:hash` lines) in Mosquitto's three hash formats,
//!   `$6$` (1.x), `$7$` (2.0) and `$argon2id$` (2.1), read and written;
//! - [`acl`]: ACL files (`user`, `topic`, `pattern` lines) with Mosquitto 2.0's checking rules.
//!
//! Nothing here does I/O beyond reading and writing those files, and nothing is async: hashing
//! is CPU-heavy by design, so the broker runs [`password::PasswordHash::verify`] on a bounded
//! blocking pool.

pub mod acl;
pub mod password;

pub use acl::{Access, Acl, AclError};
pub use password::{hash_password, HashParams, PasswordFile, PasswordFileError, PasswordHash};
