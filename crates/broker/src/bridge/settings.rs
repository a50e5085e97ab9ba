//! A bridge's configuration in the relay's terms, and this broker's id for the loop guard.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use makelaar_core::bridge::{Lazy, LoopGuard, Notifications, Restart, Route, Settings};
use makelaar_proto::ProtocolVersion;

use crate::config::{BridgeConfig, BridgeProtocol, ConfigError, RestartTimeout, StartType};

/// The file in the data directory holding this broker's id.
const BROKER_ID_FILE: &str = "broker-id";

/// The relay's settings for `c`; `broker_id` names this broker in the loop guard;
/// `max_inflight` is the broker's `max_inflight_messages`, which bounds a lazy bridge's
/// threshold (the waiting local side is handed at most that many messages).
pub(crate) fn relay_settings(c: &BridgeConfig, broker_id: &str, max_inflight: u16) -> Settings {
    let routes = c
        .topics
        .iter()
        .map(|t| Route {
            pattern: t.pattern.clone(),
            out: t.direction.is_out(),
            inward: t.direction.is_in(),
            qos: t.qos,
            local_prefix: t.local_prefix.clone(),
            remote_prefix: t.remote_prefix.clone(),
        })
        .collect();
    Settings {
        name: c.name.clone(),
        routes,
        protocol: match c.protocol {
            BridgeProtocol::V31 => ProtocolVersion::V31,
            BridgeProtocol::V311 => ProtocolVersion::V311,
            BridgeProtocol::V5 => ProtocolVersion::V5,
        },
        try_private: c.try_private,
        clean_session: c.clean_session,
        local_clean_session: c.local_clean_session,
        remote_client_id: c.remote_client_id.clone(),
        local_client_id: c.local_client_id.clone(),
        remote_username: c.remote_username.clone(),
        remote_password: c.remote_password.clone().map(Bytes::from),
        local_username: c.local_username.clone(),
        keepalive: c.keepalive,
        notifications: c.notifications.then(|| Notifications {
            topic: c.notification_topic.clone(),
            local_only: c.notifications_local_only,
        }),
        attempt_unsubscribe: c.attempt_unsubscribe,
        outgoing_retain: c.outgoing_retain,
        max_packet_size: c.max_packet_size,
        receive_maximum: c.receive_maximum,
        session_expiry_interval: c.session_expiry_interval,
        loop_guard: c.loop_guard.property.as_ref().map(|p| LoopGuard {
            property: p.clone(),
            max_hops: c.loop_guard.max_hops,
            broker_id: broker_id.to_owned(),
        }),
        lazy: matches!(c.start, StartType::Lazy).then(|| Lazy {
            threshold: u16::try_from(c.threshold)
                .unwrap_or(u16::MAX)
                .clamp(1, max_inflight.max(1)),
            idle_timeout: c.idle_timeout,
        }),
    }
}

/// `restart_timeout` in the core's terms.
pub(crate) fn restart(r: RestartTimeout) -> Restart {
    match r {
        RestartTimeout::Constant(d) => Restart::Constant(d),
        RestartTimeout::Backoff { base, cap, stable } => Restart::Jitter { base, cap, stable },
    }
}

/// A random id: 16 hex digits.
fn random_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        b = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// This broker's id for the loop guard: kept in `<data_dir>/broker-id` so that it survives
/// restarts (made at the first start), or a new one per run without a data directory.
pub(crate) fn broker_id(data_dir: Option<&Path>) -> Result<String, ConfigError> {
    let Some(dir) = data_dir else {
        return Ok(random_id());
    };
    let path = dir.join(BROKER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ConfigError::Store(format!(
                "cannot read the broker id in {}: {e}; check its permissions or remove it to have a new one made",
                path.display()
            )))
        }
    }
    let id = random_id();
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, format!("{id}\n")))
        .map_err(|e| {
            ConfigError::Store(format!(
                "cannot write the broker id to {}: {e}; check that the data directory is writable",
                path.display()
            ))
        })?;
    Ok(id)
}
