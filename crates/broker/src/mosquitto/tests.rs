#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::{Config, ListenerKind};

#[path = "bridge_tests.rs"]
mod bridge;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("makelaar-mconf-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn convert(text: &str) -> Result<(Converted, Config, PathBuf), String> {
    let dir = Dir::new();
    let path = dir.write("mosquitto.conf", text);
    let c = read_mosquitto_conf(&path).map_err(|e| e.to_string())?;
    let config = c
        .file
        .clone()
        .into_config("mosquitto.conf")
        .map_err(|e| e.to_string())?;
    Ok((c, config, dir.0.clone()))
}

fn err(text: &str) -> String {
    match convert(text) {
        Ok((c, ..)) => panic!("expected an error for {text:?}, got {:?}", c.file),
        Err(e) => e,
    }
}

#[test]
fn no_listener_is_local_only_with_anonymous_clients() {
    let (_, config, _) = convert("persistence false\n").unwrap();
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].addr, "127.0.0.1:1883".parse().unwrap());
    assert!(config.listeners[0].auth.allow_anonymous);
    assert!(config.in_memory);
}

#[test]
fn a_mosquitto_conf_takes_mosquittos_will_on_takeover_rule() {
    let (c, config, _) = convert("persistence false\n").unwrap();
    assert_eq!(
        config.will_on_takeover,
        makelaar_core::broker::WillOnTakeover::Mosquitto
    );
    let toml = c.to_toml(std::path::Path::new("mosquitto.conf"));
    assert!(toml.contains("will_on_takeover = \"mosquitto\""), "{toml}");
    assert_eq!(
        crate::config::Config::default().will_on_takeover,
        makelaar_core::broker::WillOnTakeover::Spec
    );
}

#[test]
fn a_listener_means_every_interface_and_no_anonymous_clients() {
    let (_, config, _) = convert("listener 1884\n").unwrap();
    assert_eq!(config.listeners[0].addr, "0.0.0.0:1884".parse().unwrap());
    assert!(!config.listeners[0].auth.allow_anonymous);
    let (_, config, _) = convert("port 1885\nbind_address 127.0.0.1\n").unwrap();
    assert_eq!(config.listeners[0].addr, "127.0.0.1:1885".parse().unwrap());
}

#[test]
fn a_typical_file_converts() {
    let (c, config, dir) = convert(
        "# a comment\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         password_file passwd\n\
         acl_file /etc/mosquitto/acl\n\
         persistence true\n\
         persistence_location /var/lib/mosquitto/\n\
         log_dest syslog\n\
         pid_file /run/mosquitto.pid\n\
         max_queued_messages 500\n\
         max_inflight_messages 10\n\
         persistent_client_expiration 2d\n\
         \n\
         listener 1883 127.0.0.1\n\
         max_connections 100\n\
         \n\
         listener 8883\n\
         certfile /etc/mosquitto/certs/server.crt\n\
         keyfile /etc/mosquitto/certs/server.key\n\
         cafile /etc/mosquitto/ca_certificates/ca.crt\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         max_connections -1\n",
    )
    .unwrap();
    assert_eq!(config.listeners.len(), 2);
    let (plain, tls) = (&config.listeners[0], &config.listeners[1]);
    assert_eq!(plain.max_connections, 100);
    assert_eq!(plain.auth.password_file, Some(dir.join("passwd")));
    assert!(!plain.auth.allow_anonymous);
    assert_eq!(tls.kind, ListenerKind::Mqtts);
    assert_eq!(tls.addr.port(), 8883);
    assert_eq!(tls.max_connections, 0);
    assert!(tls.auth.use_identity_as_username);
    assert!(tls.tls.as_ref().unwrap().require_certificate);
    assert_eq!(
        config.acl_file.as_deref(),
        Some(Path::new("/etc/mosquitto/acl"))
    );
    assert!(!config.in_memory);
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/mosquitto/"));
    assert_eq!(config.limits.max_queued_messages, 500);
    assert_eq!(config.limits.max_inflight_messages, 10);
    assert_eq!(config.limits.receive_maximum, 10);
    assert_eq!(config.limits.persistent_session_expiry, 2 * 86_400);
    assert_eq!(config.limits.max_packet_size, 268_435_455);
    // The harmless directives are noted, with their place.
    assert!(
        c.notes.iter().any(|n| n.contains(":8: \"log_dest\"")),
        "{:?}",
        c.notes
    );
    assert!(c.notes.iter().any(|n| n.contains("\"pid_file\"")));
}

#[test]
fn per_listener_settings_give_each_listener_its_own_authentication() {
    let (_, config, _) = convert(
        "per_listener_settings true\n\
         listener 1883\n\
         allow_anonymous true\n\
         listener 1884\n\
         password_file /pw\n\
         acl_file /acl\n\
         listener 1885\n\
         acl_file /acl\n",
    )
    .unwrap();
    let auth: Vec<_> = config.listeners.iter().map(|l| l.auth.clone()).collect();
    assert!(auth[0].allow_anonymous && auth[0].password_file.is_none());
    assert!(!auth[1].allow_anonymous && auth[1].password_file.is_some());
    assert!(!auth[2].allow_anonymous && auth[2].password_file.is_none());
    assert_eq!(config.acl_file.as_deref(), Some(Path::new("/acl")));
    let e = err("per_listener_settings true\nlistener 1\nacl_file /a\nlistener 2\nacl_file /b\n");
    assert!(
        e.contains(":5: \"acl_file\" differs from the one at"),
        "{e}"
    );
    assert!(e.contains("mosquitto.conf:3"), "{e}");
}

#[test]
fn websocket_listeners_serve_every_path_as_in_mosquitto() {
    let (_, config, _) = convert(
        "listener 1883\nlistener 9001 127.0.0.1\nprotocol websockets\n\
         listener 9443\nprotocol websockets\ncertfile /c.pem\nkeyfile /k.pem\n",
    )
    .unwrap();
    let kinds: Vec<_> = config.listeners.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [ListenerKind::Mqtt, ListenerKind::Ws, ListenerKind::Wss]
    );
    assert_eq!(config.listeners[1].url, "ws://127.0.0.1:9001/*");
    let ws = config.listeners[1].websocket.as_ref().unwrap();
    assert_eq!(ws.path, None);
    assert!(config.listeners[2].tls.is_some());
}

#[test]
fn unsupported_directives_name_file_line_and_fix() {
    for (line, needle) in [
        (
            "address cloud.example:1883",
            ":1: \"address\" belongs to a bridge, but no \"connection\" line comes before it",
        ),
        ("auth_plugin /usr/lib/x.so", "plugins are not supported"),
        (
            "listener 8883\ncapath /etc/ssl/certs",
            "one PEM file for cafile",
        ),
        (
            "max_queud_messages 10",
            "\"max_queud_messages\" is not a directive Makelaar knows",
        ),
        ("allow_anonymous yes", "must be true or false, not \"yes\""),
        ("max_queued_messages 0", "every queue is bounded"),
        (
            "listener 1883\ncafile /ca.pem",
            "TLS option is on a listener without certfile",
        ),
        (
            "listener 8883\ncertfile /c.pem",
            "has certfile but no keyfile",
        ),
        ("persistent_client_expiration 10s", "h, d, w, m or y"),
        ("listener 0 /tmp/sock", "Unix socket"),
    ] {
        let e = err(&format!("{line}\n"));
        assert!(e.contains(needle), "{line:?}: {e}");
        assert!(e.contains("mosquitto.conf:"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn include_dir_files_are_read_in_order() {
    let dir = Dir::new();
    dir.write("conf.d/b.conf", "max_queued_messages 300\n");
    dir.write("conf.d/a.conf", "max_queued_messages 200\nlistener 1999\n");
    dir.write("conf.d/skip.txt", "nonsense here\n");
    let main = dir.write("mosquitto.conf", "include_dir conf.d\n");
    let c = read_mosquitto_conf(&main).unwrap();
    assert_eq!(c.file.limits.max_queued_messages, 300);
    assert_eq!(c.file.listener.len(), 1);
    dir.write("conf.d/c.conf", "include_dir elsewhere\n");
    let e = read_mosquitto_conf(&main).unwrap_err().to_string();
    assert!(
        e.contains("c.conf:1: \"include_dir\" is only read from the main"),
        "{e}"
    );
}

#[test]
fn message_size_limit_becomes_a_packet_size_limit() {
    let (c, config, _) = convert("message_size_limit 1000\n").unwrap();
    assert_eq!(config.limits.max_packet_size, 1000 + 65_535 + 1_024);
    assert!(c.notes.iter().any(|n| n.contains("message_size_limit")));
}

#[test]
fn the_toml_output_reads_back_to_the_same_configuration() {
    let (c, config, dir) = convert(
        "allow_anonymous true\n\
         listener 1883\n\
         listener 8883 ::1\n\
         certfile s.crt\n\
         keyfile s.key\n\
         cafile ca.crt\n\
         crlfile crl.pem\n\
         max_packet_size 2048\n\
         sys_interval 0\n\
         autosave_interval 60\n",
    )
    .unwrap();
    let text = c.to_toml(&dir.join("mosquitto.conf"));
    assert!(
        text.contains("# Note:") && text.contains("autosave_interval"),
        "{text}"
    );
    assert!(text.contains("url = \"mqtts://[::1]:8883\""), "{text}");
    assert!(text.contains("[limits]\nmax_packet_size = 2048"), "{text}");
    let back = Config::from_toml_str(&text, "converted.toml").unwrap();
    assert_eq!(back, config);
}
