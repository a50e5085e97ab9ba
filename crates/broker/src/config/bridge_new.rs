//! `BridgeConfig::new`: a bridge with Mosquitto's defaults, for code that builds one without
//! a configuration file (tests, embedding). Kept apart from `bridge.rs` so that the
//! configuration readers and the runtime can change independently.

use std::time::Duration;

use makelaar_proto::QoS;

use super::bridge::*;

impl BridgeConfig {
    /// A bridge named `name` to `addresses` carrying `topics`, with every other setting at
    /// Mosquitto's default (`mosquitto.conf(5)`): 3.1.1 with `try_private`, no clean session,
    /// keep-alive 60 s, `restart_timeout 5 30`, notifications on
    /// `$SYS/broker/connection/<remote_client_id>/state`, client ids
    /// `<hostname>.<name>` and `local.<hostname>.<name>`. Makelaar's additions: a queue
    /// without its own bound (the store's `max_stored_bytes` still applies), refusing when
    /// full, and the loop guard `makelaar-origin` with 8 hops.
    pub fn new(name: &str, addresses: Vec<BridgeAddress>, topics: Vec<BridgeTopic>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let remote_client_id = format!("{host}.{name}");
        BridgeConfig {
            name: name.to_owned(),
            addresses,
            round_robin: false,
            topics,
            protocol: BridgeProtocol::V311,
            try_private: true,
            clean_session: false,
            local_clean_session: false,
            local_client_id: format!("local.{remote_client_id}"),
            notification_topic: format!("$SYS/broker/connection/{remote_client_id}/state"),
            remote_client_id,
            remote_username: None,
            remote_password: None,
            local_username: None,
            local_password: None,
            keepalive: Duration::from_secs(60),
            restart: RestartTimeout::Backoff {
                base: Duration::from_secs(5),
                cap: Duration::from_secs(30),
                stable: None,
            },
            start: StartType::Automatic,
            threshold: 10,
            idle_timeout: Duration::from_secs(60),
            notifications: true,
            notifications_local_only: false,
            attempt_unsubscribe: true,
            outgoing_retain: true,
            max_packet_size: 0,
            max_topic_alias: 10,
            receive_maximum: 20,
            session_expiry_interval: 0,
            bind_address: None,
            tcp_keepalive: None,
            tcp_user_timeout: None,
            tls: None,
            reload: ReloadType::Lazy,
            queue: BridgeQueue {
                max_messages: 0,
                max_bytes: 0,
                max_age: None,
                when_full: OverflowPolicy::Reject,
            },
            loop_guard: LoopGuard {
                property: Some("makelaar-origin".to_owned()),
                max_hops: 8,
            },
        }
    }
}

impl BridgeTopic {
    /// A `topic pattern direction qos local-prefix remote-prefix` line.
    pub fn new(
        pattern: &str,
        direction: Direction,
        qos: QoS,
        local_prefix: &str,
        remote_prefix: &str,
    ) -> Self {
        BridgeTopic {
            pattern: pattern.to_owned(),
            direction,
            qos,
            local_prefix: local_prefix.to_owned(),
            remote_prefix: remote_prefix.to_owned(),
        }
    }
}
