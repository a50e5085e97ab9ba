#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::config::Config;

fn bridges(text: &str) -> Result<Vec<BridgeConfig>, String> {
    Config::from_toml_str(text, "makelaar.toml")
        .map(|c| c.bridges)
        .map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    match bridges(text) {
        Ok(b) => panic!("expected an error for {text}, got {b:?}"),
        Err(e) => e,
    }
}

const HEAD: &str = "[[bridge]]\nname = \"cloud\"\naddresses = [\"cloud.example\"]\n";
const TOPIC: &str = "[[bridge.topic]]\npattern = \"a/#\"\n";
const MINIMAL: &str = "[[bridge]]\nname = \"cloud\"\naddresses = [\"cloud.example\"]\n\
                       [[bridge.topic]]\npattern = \"a/#\"\n";

/// Every key of a `[[bridge]]` at its documented default is the same bridge as one that
/// gives only what is required.
#[test]
fn documented_defaults_change_nothing() {
    let mut full = BridgeTable::defaults();
    full.name = "cloud".to_string();
    full.addresses = vec!["cloud.example".to_string()];
    full.topic[0].pattern = "a/#".to_string();
    #[derive(Serialize)]
    struct File {
        bridge: Vec<BridgeTable>,
    }
    let text = toml::to_string(&File { bridge: vec![full] }).unwrap();
    // The documented [bridge.tls] defaults are those of an empty [bridge.tls].
    let minimal_tls = format!("{MINIMAL}[bridge.tls]\n");
    assert_eq!(
        bridges(&text).unwrap(),
        bridges(&minimal_tls).unwrap(),
        "{text}"
    );
}

#[test]
fn tls_changes_the_default_port_and_trusts_the_system_without_a_ca() {
    let plain = &bridges(MINIMAL).unwrap()[0];
    assert_eq!(plain.addresses[0].port, 1883);
    assert_eq!(plain.tls, None);
    let tls = &bridges(&format!("{MINIMAL}[bridge.tls]\n")).unwrap()[0];
    assert_eq!(tls.addresses[0].port, 8883);
    assert!(tls.tls.as_ref().unwrap().use_os_certs);
    let ca = &bridges(&format!("{MINIMAL}[bridge.tls]\ncafile = \"/ca.pem\"\n")).unwrap()[0];
    assert!(!ca.tls.as_ref().unwrap().use_os_certs);
}

#[test]
fn makelaars_additions() {
    let b = &bridges(&format!(
        "{MINIMAL}[bridge.queue]\nmax_messages = 10\nmax_bytes = 0\nmax_age = 3600\n\
         when_full = \"drop-qos0-first\"\n[bridge.loop_guard]\nproperty = \"hop\"\n\
         max_hops = 3\n"
    ))
    .unwrap()[0];
    assert_eq!(
        b.queue,
        BridgeQueue {
            max_messages: 10,
            max_bytes: 0,
            max_age: Some(Duration::from_secs(3600)),
            when_full: OverflowPolicy::DropQos0First
        }
    );
    assert_eq!(
        b.loop_guard,
        LoopGuard {
            property: Some("hop".to_string()),
            max_hops: 3
        }
    );
    let b = &bridges(&format!(
        "{MINIMAL}[bridge.queue]\nwhen_full = \"drop-oldest\"\n[bridge.loop_guard]\n\
         enabled = false\n"
    ))
    .unwrap()[0];
    assert_eq!(b.queue.when_full, OverflowPolicy::DropOldest);
    assert_eq!(b.loop_guard.property, None);
}

#[test]
fn a_full_table() {
    let b = &bridges(
        "[[bridge]]\nname = \"site\"\naddresses = [\"[::1]:1884\", \"b.example:1883\"]\n\
         round_robin = true\nprotocol_version = \"5.0\"\ntry_private = false\n\
         clean_session = true\nremote_client_id = \"r\"\nlocal_client_id = \"l\"\n\
         remote_username = \"u\"\nremote_password = \"p\"\nkeepalive = 30\n\
         restart_timeout = [1, 10, 60]\nstart_type = \"once\"\nnotification_topic = \"s/state\"\n\
         tcp_keepalive = [5, 5, 2]\ntcp_user_timeout_ms = 9000\nbind_address = \"::1\"\n\
         [[bridge.topic]]\npattern = \"#\"\ndirection = \"both\"\nqos = 1\n\
         local_prefix = \"here/\"\nremote_prefix = \"there/\"\n\
         [[bridge.topic]]\npattern = \"#\"\ndirection = \"both\"\nqos = 1\n\
         local_prefix = \"here/\"\nremote_prefix = \"there/\"\n",
    )
    .unwrap()[0];
    assert_eq!(b.addresses[0].host, "::1");
    assert_eq!(b.protocol, BridgeProtocol::V5);
    assert!(b.round_robin && !b.try_private && b.clean_session && b.local_clean_session);
    assert_eq!(
        (b.remote_client_id.as_str(), b.local_client_id.as_str()),
        ("r", "l")
    );
    assert_eq!(b.notification_topic, "s/state");
    assert_eq!(b.start, StartType::Once);
    assert_eq!(
        b.restart,
        RestartTimeout::Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
            stable: Some(Duration::from_secs(60))
        }
    );
    // The repeated topic is left out.
    assert_eq!(b.topics.len(), 1);
    assert_eq!(b.topics[0].to_remote("here/x").as_deref(), Some("there/x"));
}

#[test]
fn errors_name_the_bridge_and_the_fix() {
    for (text, needle) in [
        (
            "[[bridge]]\nname = \"c\"\naddresses = []\n[[bridge.topic]]\npattern = \"a\"\n",
            "makelaar.toml: [[bridge]] \"c\" has no address",
        ),
        (
            "[[bridge]]\nname = \"c\"\naddresses = [\"h\"]\n",
            "[[bridge]] \"c\" carries no topic; add a [[bridge.topic]] table",
        ),
        (
            &format!("{HEAD}keepalive = 4\n{TOPIC}"),
            "[[bridge]] \"cloud\" has keepalive = 4; give 5 to 65535 seconds",
        ),
        (
            &format!("{HEAD}restart_timeout = []\n{TOPIC}"),
            "[[bridge]] \"cloud\" has a restart_timeout [] that is not seconds above 0",
        ),
        (
            &format!("{MINIMAL}[bridge.tls]\nuse_os_certs = false\n"),
            "has TLS without a CA to check the remote with",
        ),
        (
            &format!("{MINIMAL}[bridge.loop_guard]\nmax_hops = 0\n"),
            "has loop_guard max_hops = 0",
        ),
        (
            &format!("{MINIMAL}{MINIMAL}"),
            "two [[bridge]] tables are named \"cloud\"",
        ),
        (
            &format!(
                "{HEAD}remote_client_id = \"x\"\n{TOPIC}[[bridge]]\nname = \"other\"\n\
                 addresses = [\"h\"]\nlocal_client_id = \"local.x\"\n{TOPIC}"
            ),
            "[[bridge]] \"other\" has the local client id \"local.x\" of bridge \"cloud\"",
        ),
        (
            "[[bridge]]\nname = \"c\"\naddresses = [\"h\"]\n[[bridge.topic]]\npattern = \"\"\n\
             local_prefix = \"a/\"\n",
            "has an empty pattern",
        ),
        (&format!("{HEAD}queue = 5\n{TOPIC}"), "makelaar.toml:4"),
        (
            &format!("{MINIMAL}[bridge.queue]\nwhen_full = \"drop-newest\"\n"),
            "drop-newest",
        ),
    ] {
        let e = err(text);
        assert!(e.contains(needle), "{text}\n{e}\nlacks {needle}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
