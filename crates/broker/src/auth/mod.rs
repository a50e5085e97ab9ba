//! Authentication and the ACL, as the shell applies them.
//!
//! - [`Authenticator`]: decides each CONNECT in its connection task, before it reaches the
//!   router. Passwords are checked against Mosquitto password files on a bounded blocking pool
//!   (hashing is slow on purpose and must not stall the async workers), with repeated
//!   failures from one address slowed down ([`throttle`]).
//! - [`AclAuthorizer`]: a Mosquitto ACL file as the core's [`Authorizer`].
//!
//! Refusals, as the specification words them [MQTT-3.1.4-2]: a wrong password, an unknown
//! user or a missing certificate name is CONNACK 4 "bad user name or password" (5.0: 0x86); a
//! client without a username where anonymous clients are not allowed is 5 "not authorized"
//! (5.0: 0x87). Mosquitto 2.0 answers 5 / 0x87 to all of these; who gets in is the same.
//!
//! No secret is logged: the password is taken out of the CONNECT before anything else
//! happens, and never formatted.

pub(crate) mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use makelaar_auth::{Acl, AclError, PasswordFile, PasswordFileError, PasswordHash};
use makelaar_core::{Access, Authorizer};
use makelaar_proto::{Connect, ReasonCode};
use tokio::sync::Semaphore;

use crate::config::{ConfigError, ListenerAuth};
use crate::counters::AuthFailure;
use throttle::{Slot, Throttle};

/// A Mosquitto ACL file as the core's authorizer.
pub(crate) struct AclAuthorizer(pub Arc<Acl>);

impl Authorizer for AclAuthorizer {
    fn allowed(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        let access = match access {
            Access::Read => makelaar_auth::Access::Read,
            Access::Write => makelaar_auth::Access::Write,
            Access::Subscribe => makelaar_auth::Access::Subscribe,
        };
        self.0.check(client_id, username, topic, access)
    }
}

/// Reads an ACL file; the error names the file and the line.
pub(crate) fn load_acl(path: &Path) -> Result<Acl, ConfigError> {
    Acl::load(path).map_err(|e| match e {
        AclError::Read { path, source } => ConfigError::Auth(format!(
            "cannot read the ACL file \"{}\": {}; check acl_file in the configuration",
            path.display(),
            crate::config::io_reason(&source)
        )),
        line @ AclError::Line { .. } => ConfigError::Auth(format!(
            "the ACL file {line}; fix that line or remove it (the format is described in \
             docs/migrating-from-mosquitto.md)"
        )),
    })
}

/// A password file with the hash that stands in for unknown users.
struct Passwords {
    file: PasswordFile,
    /// An unknown user's password is checked against this (and refused whatever the result),
    /// so that an unknown user costs the same time as a wrong password: the answer's timing
    /// does not tell which usernames exist.
    decoy: Option<PasswordHash>,
}

fn load_passwords(path: &Path) -> Result<Passwords, ConfigError> {
    let file = PasswordFile::load(path).map_err(|e| match e {
        PasswordFileError::Read { path, source } => ConfigError::Auth(format!(
            "cannot read the password file \"{}\": {}; check password_file in the configuration",
            path.display(),
            crate::config::io_reason(&source)
        )),
        line @ PasswordFileError::Line { .. } => ConfigError::Auth(format!(
            "the password file {line}; fix that line, or set the user's password again with \
             `makelaar passwd FILE USER`"
        )),
    })?;
    let decoy = file
        .usernames()
        .next()
        .and_then(|u| file.hash_of(u))
        .cloned();
    Ok(Passwords { file, decoy })
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Login {
    Accepted,
    /// Unknown user or wrong password (which one, for the metrics).
    Refused(AuthFailure),
    /// Too many failed attempts from this address are already waiting: refused unchecked.
    Throttled,
    /// The password file is not loaded (cannot happen once started).
    Unavailable,
}

/// Decides CONNECTs: shared by every connection task.
pub(crate) struct Authenticator {
    /// The policy of each listener, by index.
    listeners: Vec<ListenerAuth>,
    /// Every password file in use, by path; replaced whole on reload.
    passwords: RwLock<Arc<HashMap<PathBuf, Arc<Passwords>>>>,
    /// Bounds the hashes computed at once (CPU and, for argon2id, 46 MiB each).
    pool: Arc<Semaphore>,
    throttle: Throttle,
    /// Counts the reloads of the password files (what was checked before may not hold).
    generation: std::sync::atomic::AtomicU64,
}

impl Authenticator {
    /// Loads the password files the listeners name. Any unreadable file or broken line is an
    /// error naming it.
    pub(crate) fn new(listeners: Vec<ListenerAuth>) -> Result<Authenticator, ConfigError> {
        let passwords = load_all(&listeners)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Authenticator {
            listeners,
            passwords: RwLock::new(Arc::new(passwords)),
            // Half the cores, at least one: the broker's own work keeps a core.
            pool: Arc::new(Semaphore::new((cores / 2).max(1))),
            throttle: Throttle::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Reads every password file again; on any error the files in use stay as they were.
    pub(crate) fn reload(&self) -> Result<usize, ConfigError> {
        let fresh = load_all(&self.listeners)?;
        let count = fresh.len();
        let mut current = self.passwords.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(fresh);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(count)
    }

    /// Decides the CONNECT received on listener `listener` from `peer`, whose verified client
    /// certificate (if any) is named `cert_name`. Takes the password out of `connect`; on
    /// success `connect.username` is the authenticated identity, on failure the reason code
    /// to refuse with and what went wrong (for the metrics).
    pub(crate) async fn authenticate(
        &self,
        listener: usize,
        peer: IpAddr,
        connect: &mut Connect,
        cert_name: Option<String>,
    ) -> Result<(), (ReasonCode, AuthFailure)> {
        let password = connect.password.take();
        let Some(policy) = self.listeners.get(listener) else {
            return Err((ReasonCode::SERVER_UNAVAILABLE, AuthFailure::Unavailable));
        };
        if policy.use_identity_as_username {
            // As Mosquitto: the CONNECT's username and password are ignored; the name comes
            // from the verified certificate, and a client without one is refused.
            connect.username = cert_name;
            return match connect.username {
                Some(_) => Ok(()),
                None => Err((
                    ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                    AuthFailure::NoCertificateName,
                )),
            };
        }
        let anonymous = || {
            if policy.allow_anonymous {
                Ok(())
            } else {
                Err((ReasonCode::NOT_AUTHORIZED, AuthFailure::Anonymous))
            }
        };
        let (Some(username), Some(path)) = (connect.username.as_deref(), &policy.password_file)
        else {
            // No username, or no password file to check one against (then, as in Mosquitto
            // 2.0, the username is taken as given, and allowed where anonymous clients are).
            return anonymous();
        };
        match self.check_password(path, peer, username, password).await {
            Login::Accepted => Ok(()),
            Login::Throttled => Err((ReasonCode::CONNECTION_RATE_EXCEEDED, AuthFailure::Throttled)),
            Login::Unavailable => Err((ReasonCode::SERVER_UNAVAILABLE, AuthFailure::Unavailable)),
            Login::Refused(why) => {
                tracing::debug!(%peer, client_id = %connect.client_id, "login failed: unknown user or wrong password");
                Err((ReasonCode::BAD_USER_NAME_OR_PASSWORD, why))
            }
        }
    }

    /// How many times the password files were reloaded.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The password file listener `listener` checks logins against, if any (the dashboard
    /// uses its HTTP listener's).
    pub(crate) fn password_file(&self, listener: usize) -> Option<&Path> {
        self.listeners
            .get(listener)
            .and_then(|l| l.password_file.as_deref())
    }

    /// Checks `username` and `password` against the password file at `path`, as every login
    /// is checked: slowed down after failures from `peer`'s address, hashed on the blocking
    /// pool, an unknown user costing as much as a wrong password.
    pub(crate) async fn check_password(
        &self,
        path: &Path,
        peer: IpAddr,
        username: &str,
        password: Option<Bytes>,
    ) -> Login {
        let passwords = {
            let all = self.passwords.read().unwrap_or_else(|e| e.into_inner());
            all.get(path).cloned()
        };
        let Some(passwords) = passwords else {
            return Login::Unavailable;
        };
        match self.throttle.reserve(peer, Instant::now()) {
            Slot::After(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Slot::After(_) => {}
            Slot::Refused => {
                tracing::debug!(%peer, "login refused unchecked: too many failed attempts queued from this address");
                return Login::Throttled;
            }
        }
        let hash = passwords.file.hash_of(username).cloned();
        let why = match hash {
            Some(_) => AuthFailure::WrongPassword,
            None => AuthFailure::UnknownUser,
        };
        let known = hash.is_some() && password.is_some();
        let ok = match hash.or_else(|| passwords.decoy.clone()) {
            Some(hash) => {
                let checked = self.verify(hash, password.unwrap_or_default()).await;
                checked && known
            }
            None => false,
        };
        if ok {
            self.throttle.succeeded(peer);
            Login::Accepted
        } else {
            self.throttle.failed(peer, Instant::now());
            Login::Refused(why)
        }
    }

    /// Checks a password on the blocking pool, at most `pool` at once. The permit goes into
    /// the blocking job, so a connection that gives up waiting does not free a slot that is
    /// still hashing.
    async fn verify(&self, hash: PasswordHash, password: Bytes) -> bool {
        let Ok(permit) = self.pool.clone().acquire_owned().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(&password)
        })
        .await
        .unwrap_or(false)
    }
}

fn load_all(listeners: &[ListenerAuth]) -> Result<HashMap<PathBuf, Arc<Passwords>>, ConfigError> {
    let mut files = HashMap::new();
    for path in listeners.iter().filter_map(|l| l.password_file.as_ref()) {
        if !files.contains_key(path) {
            files.insert(path.clone(), Arc::new(load_passwords(path)?));
        }
    }
    Ok(files)
}
