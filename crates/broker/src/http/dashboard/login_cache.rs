//! Remembers recent successful dashboard logins, so that the page's requests (a few a second,
//! each carrying the password with HTTP Basic) do not each cost a password hash: argon2id
//! takes tens of milliseconds and 46 MiB, from the pool MQTT logins use too.
//!
//! What is kept is a keyed SHA-256 of the whole `Authorization` header, under a key drawn at
//! start, never the password; an entry lasts [`LOGIN_TTL`] and only while the password files
//! are the ones it was checked against (a reload forgets them all).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a checked login is taken as good without checking it again.
pub(crate) const LOGIN_TTL: Duration = Duration::from_secs(300);
/// Logins remembered at most; when full, all are forgotten (they are checked again).
const MAX_ENTRIES: usize = 64;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct LoginCache {
    key: [u8; 32],
    /// False when no random key could be drawn: then nothing is remembered.
    enabled: bool,
    /// Keyed hash of the header → (when checked, password-file generation).
    entries: Mutex<HashMap<Vec<u8>, (Instant, u64)>>,
}

impl LoginCache {
    pub(crate) fn new() -> LoginCache {
        let mut key = [0u8; 32];
        let enabled = getrandom::fill(&mut key).is_ok();
        if !enabled {
            tracing::warn!("no random numbers for the dashboard's login cache: every request checks its password");
        }
        LoginCache {
            key,
            enabled,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, header: &[u8]) -> Vec<u8> {
        Sha256::new()
            .chain_update(self.key)
            .chain_update(header)
            .finalize()
            .to_vec()
    }

    /// Whether `header` was accepted within [`LOGIN_TTL`] under password-file `generation`.
    pub(crate) fn knows(&self, header: &[u8], generation: u64, now: Instant) -> bool {
        let digest = self.digest(header);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&digest).is_some_and(|&(at, g)| {
            g == generation && now.saturating_duration_since(at) < LOGIN_TTL
        })
    }

    /// Records that `header` was accepted now.
    pub(crate) fn remember(&self, header: &[u8], generation: u64, now: Instant) {
        if !self.enabled {
            return;
        }
        let digest = self.digest(header);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(digest, (now, generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_a_while_and_per_generation() {
        let c = LoginCache::new();
        let now = Instant::now();
        assert!(!c.knows(b"Basic abc", 1, now));
        c.remember(b"Basic abc", 1, now);
        assert!(c.knows(b"Basic abc", 1, now + Duration::from_secs(10)));
        assert!(!c.knows(b"Basic abd", 1, now), "another password");
        assert!(
            !c.knows(b"Basic abc", 2, now),
            "the password files were reloaded"
        );
        assert!(!c.knows(b"Basic abc", 1, now + LOGIN_TTL), "too old");
    }

    #[test]
    fn stays_bounded() {
        let c = LoginCache::new();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES * 3 {
            c.remember(format!("Basic {i}").as_bytes(), 1, now);
        }
        let n = c.entries.lock().map(|e| e.len()).unwrap_or(usize::MAX);
        assert!(n <= MAX_ENTRIES);
    }
}
