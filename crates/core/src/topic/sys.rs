//! The broker's own `$SYS` tree: which topics are in it, and which of them clients may write.
//!
//! A topic is in `$SYS` when its first level is exactly `$SYS`: levels are compared, not
//! prefixes, so `$SYSTEM/x` or `$SYSX` are ordinary `$` topics (not matched by wildcards at
//! the first level [MQTT-4.7.2-1], but written and kept like any other).

/// Whether the topic name `topic` is in the broker's `$SYS` tree (first level `$SYS`).
pub fn is_sys(topic: &str) -> bool {
    topic.split_once('/').map_or(topic, |(first, _)| first) == "$SYS"
}

/// Whether clients may write to the topic name `topic` (PUBLISH or will): anywhere but in
/// `$SYS`, and there only `$SYS/broker/connection/<client id>/state`, where a Mosquitto
/// bridge reports its state on the broker it connects to (a retained `1`, and a will `0`).
/// Such a write is still checked by the authorizer like any other.
pub fn writable_by_clients(topic: &str) -> bool {
    !is_sys(topic) || is_bridge_state(topic)
}

/// `$SYS/broker/connection/+/state`: one level, any, for the bridge's client id.
fn is_bridge_state(topic: &str) -> bool {
    let mut levels = topic.split('/');
    let expected = [Some("$SYS"), Some("broker"), Some("connection")];
    expected.iter().all(|&e| levels.next() == e)
        && levels.next().is_some()
        && levels.next() == Some("state")
        && levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_is_a_first_level_not_a_prefix() {
        for sys in ["$SYS", "$SYS/", "$SYS/broker/uptime", "$SYS//x"] {
            assert!(is_sys(sys), "{sys}");
        }
        for other in [
            "$SYSTEM/x",
            "$SYSX",
            "$SYSTEM",
            "$sys/x",
            "a/$SYS",
            "/$SYS",
            "$SY",
        ] {
            assert!(!is_sys(other), "{other}");
            assert!(writable_by_clients(other), "{other}");
        }
    }

    #[test]
    fn clients_write_only_bridge_state_in_sys() {
        for ok in [
            "$SYS/broker/connection/bridge-1/state",
            "$SYS/broker/connection/host.name/state",
            "$SYS/broker/connection//state",
        ] {
            assert!(writable_by_clients(ok), "{ok}");
        }
        for refused in [
            "$SYS",
            "$SYS/broker/uptime",
            "$SYS/broker/connection/state",
            "$SYS/broker/connection/a/b/state",
            "$SYS/broker/connection/a/state/x",
            "$SYS/broker/connection/a/State",
            "$SYS/broker/connection/a/state/",
        ] {
            assert!(!writable_by_clients(refused), "{refused}");
        }
    }
}
