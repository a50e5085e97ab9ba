//! `connection` sections: a corpus of bridge sections as sites write them (the manual's
//! examples, AWS IoT style, the kinds of configurations reported in Mosquitto's issues),
//! each checked for Mosquitto's defaults, the topic remapping and the errors; and the
//! `makelaar.toml` that `config convert` writes must read back to the same bridges.

use std::time::Duration;

use super::*;
use crate::config::*;
use makelaar_proto::QoS;

fn bridges(text: &str) -> Vec<BridgeConfig> {
    match convert(text) {
        Ok((_, config, _)) => config.bridges,
        Err(e) => panic!("{text}\n{e}"),
    }
}

fn one(text: &str) -> BridgeConfig {
    let mut b = bridges(text);
    assert_eq!(b.len(), 1, "{b:?}");
    b.remove(0)
}

/// `config convert`, then the TOML read back: the same bridges.
fn round_trip(text: &str) {
    let (c, config, dir) = convert(text).unwrap();
    let toml = c.to_toml(&dir.join("mosquitto.conf"));
    let back =
        Config::from_toml_str(&toml, "converted.toml").unwrap_or_else(|e| panic!("{toml}\n{e}"));
    assert_eq!(back.bridges, config.bridges, "{toml}");
    assert_eq!(back, config, "{toml}");
}

fn host() -> String {
    hostname()
}

#[test]
fn a_minimal_section_has_mosquittos_defaults() {
    let b = one("connection edge\naddress 192.0.2.10\ntopic sensors/#\n");
    let remote_id = format!("{}.edge", host());
    let expected = BridgeConfig {
        name: "edge".to_string(),
        addresses: vec![BridgeAddress {
            host: "192.0.2.10".to_string(),
            port: 1883,
        }],
        round_robin: false,
        topics: vec![BridgeTopic {
            pattern: "sensors/#".to_string(),
            direction: Direction::Out,
            qos: QoS::AtMostOnce,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }],
        protocol: BridgeProtocol::V311,
        try_private: true,
        clean_session: false,
        local_clean_session: false,
        local_client_id: format!("local.{remote_id}"),
        notification_topic: format!("$SYS/broker/connection/{remote_id}/state"),
        remote_client_id: remote_id,
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
            max_messages: DEFAULT_QUEUE_MESSAGES,
            max_bytes: DEFAULT_QUEUE_BYTES,
            max_age: None,
            when_full: OverflowPolicy::Reject,
        },
        loop_guard: LoopGuard {
            property: Some("makelaar-origin".to_string()),
            max_hops: 8,
        },
    };
    assert_eq!(b, expected);
}

/// The example of the manual's "Configuring Bridges": remapping with prefixes, in both
/// directions, and the remapping table it gives.
#[test]
fn the_manuals_remapping_examples() {
    let b = one("connection remap\n\
         address 127.0.0.1:1884\n\
         topic # in 0 local/topic/ remote/topic/\n\
         topic data/# out 1 \"\" site1/\n\
         topic cmd/# in 2 site1/ \"\"\n\
         topic \"\" both 1 local/state remote/state\n");
    let t = &b.topics;
    assert_eq!(t.len(), 4);
    // pattern, local prefix, remote prefix → the filters, and a topic each way.
    assert_eq!(
        (t[0].local_filter(), t[0].remote_filter()),
        ("local/topic/#".to_string(), "remote/topic/#".to_string())
    );
    assert_eq!(
        t[0].to_local("remote/topic/a/b").as_deref(),
        Some("local/topic/a/b")
    );
    assert_eq!(t[0].to_local("elsewhere/a"), None);
    assert_eq!(t[1].direction, Direction::Out);
    assert_eq!(t[1].qos, QoS::AtLeastOnce);
    assert_eq!(t[1].local_filter(), "data/#");
    assert_eq!(t[1].to_remote("data/t1").as_deref(), Some("site1/data/t1"));
    assert_eq!(t[2].remote_filter(), "cmd/#");
    assert_eq!(
        t[2].to_local("cmd/reboot").as_deref(),
        Some("site1/cmd/reboot")
    );
    assert_eq!(t[2].qos, QoS::ExactlyOnce);
    // An empty pattern: each prefix is the whole topic.
    assert_eq!(
        (t[3].local_filter(), t[3].remote_filter()),
        ("local/state".to_string(), "remote/state".to_string())
    );
    assert_eq!(
        t[3].to_remote("local/state").as_deref(),
        Some("remote/state")
    );
    assert_eq!(
        t[3].to_local("remote/state").as_deref(),
        Some("local/state")
    );
}

/// The manual's table of pattern / prefix combinations: an empty pattern needs both
/// prefixes, any pattern works with either or none.
#[test]
fn the_manuals_validity_table() {
    for (line, valid) in [
        ("topic mytopic both 0 \"\" \"\"", true),
        ("topic mytopic both 0 \"\" remote/", true),
        ("topic mytopic both 0 local/ \"\"", true),
        ("topic mytopic both 0 local/ remote/", true),
        ("topic \"\" both 0 \"\" \"\"", false),
        ("topic \"\" both 0 local/topic \"\"", false),
        ("topic \"\" both 0 \"\" remote/topic", false),
        ("topic \"\" both 0 local/topic remote/topic", true),
    ] {
        let text = format!("connection t\naddress h\n{line}\n");
        match convert(&text) {
            Ok(_) => assert!(valid, "{line} was accepted"),
            Err(e) => {
                assert!(!valid, "{line}: {e}");
                assert!(
                    e.contains("mosquitto.conf:3: \"topic\" has an empty pattern"),
                    "{e}"
                );
            }
        }
    }
}

/// AWS IoT style: TLS on 443 with ALPN, a client certificate, a clean session, no bridge
/// bit (AWS refuses it), no notifications.
#[test]
fn an_aws_iot_style_bridge() {
    let b = one("# Bridge to AWS IoT\n\
         connection awsiot\n\
         address a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:443\n\
         bridge_protocol_version mqttv311\n\
         bridge_insecure false\n\
         cleansession true\n\
         clientid bridgeawsiot\n\
         start_type automatic\n\
         notifications false\n\
         log_type all\n\
         bridge_cafile /etc/mosquitto/certs/rootCA.pem\n\
         bridge_certfile /etc/mosquitto/certs/cert.crt\n\
         bridge_keyfile /etc/mosquitto/certs/private.key\n\
         bridge_alpn x-amzn-mqtt-ca\n\
         try_private false\n\
         topic awsiot_to_localgateway in 1\n\
         topic localgateway_to_awsiot out 1\n\
         topic both_directions both 1\n");
    assert_eq!(
        b.addresses,
        [BridgeAddress {
            host: "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com".to_string(),
            port: 443
        }]
    );
    assert_eq!(b.remote_client_id, "bridgeawsiot");
    assert_eq!(b.local_client_id, "local.bridgeawsiot");
    assert!(b.clean_session && b.local_clean_session);
    assert!(!b.try_private && !b.notifications);
    let tls = b.tls.unwrap();
    assert_eq!(
        tls,
        BridgeTls {
            cafile: Some("/etc/mosquitto/certs/rootCA.pem".into()),
            capath: None,
            use_os_certs: false,
            certfile: Some("/etc/mosquitto/certs/cert.crt".into()),
            keyfile: Some("/etc/mosquitto/certs/private.key".into()),
            insecure: false,
            min_version: TlsVersion::Tls12,
            alpn: Some("x-amzn-mqtt-ca".to_string()),
        }
    );
    let dirs: Vec<_> = b.topics.iter().map(|t| (t.direction, t.qos)).collect();
    assert_eq!(
        dirs,
        [
            (Direction::In, QoS::AtLeastOnce),
            (Direction::Out, QoS::AtLeastOnce),
            (Direction::Both, QoS::AtLeastOnce)
        ]
    );
}

/// Site to cloud with failover addresses, credentials both sides, 5.0 limits, a lazy start
/// and the queue bounds taken from the broker-wide ones (the kind of configuration of
/// Mosquitto issues about queues filling, #2256 and #3657).
#[test]
fn a_site_bridge_with_failover_credentials_and_queue_bounds() {
    let b = one("max_queued_messages 200000\n\
         max_queued_bytes 50000000\n\
         listener 1883\n\
         allow_anonymous true\n\
         connection site-a\n\
         addresses primary.example:1883 backup.example 10.0.0.5:11883\n\
         round_robin false\n\
         remote_username site-a\n\
         remote_password s3cret with space\n\
         local_username bridge\n\
         local_clientid site-a-local\n\
         bridge_protocol_version mqttv50\n\
         bridge_receive_maximum 100\n\
         bridge_max_topic_alias 0\n\
         bridge_session_expiry_interval 86400\n\
         bridge_max_packet_size 1048576\n\
         cleansession false\n\
         local_cleansession true\n\
         start_type lazy\n\
         threshold 50\n\
         idle_timeout 120\n\
         restart_timeout 2 60\n\
         keepalive_interval 30\n\
         notification_topic site-a/bridge/state\n\
         notifications_local_only true\n\
         bridge_outgoing_retain false\n\
         bridge_attempt_unsubscribe false\n\
         bridge_bind_address 10.0.0.2\n\
         bridge_tcp_keepalive 30 10 3\n\
         bridge_tcp_user_timeout 20000\n\
         bridge_reload_type immediate\n\
         topic telemetry/# out 1 \"\" sites/a/\n\
         topic commands/a/# in 2\n");
    let hosts: Vec<(String, u16)> = b
        .addresses
        .iter()
        .map(|a| (a.host.clone(), a.port))
        .collect();
    assert_eq!(
        hosts,
        [
            ("primary.example".to_string(), 1883),
            ("backup.example".to_string(), 1883),
            ("10.0.0.5".to_string(), 11883)
        ]
    );
    assert_eq!(b.remote_username.as_deref(), Some("site-a"));
    assert_eq!(b.remote_password.as_deref(), Some("s3cret with space"));
    assert_eq!(b.local_username.as_deref(), Some("bridge"));
    assert_eq!(b.local_client_id, "site-a-local");
    assert_eq!(b.protocol, BridgeProtocol::V5);
    assert_eq!(
        (
            b.receive_maximum,
            b.max_topic_alias,
            b.session_expiry_interval
        ),
        (100, 0, 86400)
    );
    assert_eq!(b.max_packet_size, 1_048_576);
    assert!(!b.clean_session && b.local_clean_session);
    assert_eq!(b.start, StartType::Lazy);
    assert_eq!(
        (b.threshold, b.idle_timeout),
        (50, Duration::from_secs(120))
    );
    assert_eq!(
        b.restart,
        RestartTimeout::Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
            stable: None
        }
    );
    assert_eq!(b.keepalive, Duration::from_secs(30));
    assert_eq!(b.notification_topic, "site-a/bridge/state");
    assert!(b.notifications && b.notifications_local_only);
    assert!(!b.outgoing_retain && !b.attempt_unsubscribe);
    assert_eq!(b.bind_address, Some("10.0.0.2".parse().unwrap()));
    assert_eq!(
        b.tcp_keepalive,
        Some(TcpKeepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3
        })
    );
    assert_eq!(b.tcp_user_timeout, Some(Duration::from_millis(20_000)));
    assert_eq!(b.reload, ReloadType::Immediate);
    assert_eq!(b.queue.max_messages, 200_000);
    assert_eq!(b.queue.max_bytes, 50_000_000);
    assert_eq!(b.queue.when_full, OverflowPolicy::Reject);
}

/// Two bridges in one file, a constant restart timeout, IPv6 addresses, quoted topics and a
/// repeated topic line (skipped, as by Mosquitto), `include_dir`-free: as in the reports of
/// Mosquitto #1301 and #3472 (several bridges, one of them local-only).
#[test]
fn two_bridges_ipv6_quotes_and_repeats() {
    let (c, config, _) = convert(
        "listener 1883\n\
         connection east\n\
         address [2001:db8::1]:1883 ::1:8883\n\
         restart_timeout 10\n\
         topic \"rooms/living room/#\" both 1 east/ \"\"\n\
         topic alarms/# out 2\n\
         topic alarms/# out 2\n\
         connection west\n\
         address west.example\n\
         remote_clientid west-bridge\n\
         keepalive_interval 2\n\
         topic # in 1 west/ \"\"\n",
    )
    .unwrap();
    let [east, west] = &config.bridges[..] else {
        panic!("{:?}", config.bridges)
    };
    assert_eq!(
        east.addresses,
        [
            BridgeAddress {
                host: "2001:db8::1".to_string(),
                port: 1883
            },
            BridgeAddress {
                host: "::1".to_string(),
                port: 8883
            }
        ]
    );
    assert_eq!(
        east.restart,
        RestartTimeout::Constant(Duration::from_secs(10))
    );
    assert_eq!(east.topics.len(), 2);
    assert_eq!(east.topics[0].pattern, "rooms/living room/#");
    assert_eq!(
        east.topics[0]
            .to_remote("east/rooms/living room/lamp")
            .as_deref(),
        Some("rooms/living room/lamp")
    );
    assert_eq!(west.local_client_id, "local.west-bridge");
    assert_eq!(
        west.notification_topic,
        "$SYS/broker/connection/west-bridge/state"
    );
    // Mosquitto raises a keep-alive under 5 s to 5 s; the note says so, at its line.
    assert_eq!(west.keepalive, Duration::from_secs(5));
    let notes = c.notes.join("\n");
    assert!(
        notes.contains("mosquitto.conf:11: \"keepalive_interval\""),
        "{notes}"
    );
    assert!(
        notes.contains("mosquitto.conf:7: \"topic\" repeats"),
        "{notes}"
    );
}

#[test]
fn os_certificates_and_tls_13() {
    let b = one(
        "connection c\naddress mqtt.example:8883\nbridge_tls_use_os_certs true\n\
         bridge_tls_version tlsv1.3\nbridge_insecure true\ntopic a out 1\n",
    );
    let tls = b.tls.unwrap();
    assert!(tls.use_os_certs && tls.insecure);
    assert_eq!((tls.cafile, tls.min_version), (None, TlsVersion::Tls13));
    // False values of TLS options alone leave the bridge on plain TCP, as in Mosquitto.
    let b = one(
        "connection c\naddress h\nbridge_insecure false\nbridge_tls_use_os_certs false\n\
         topic a\n",
    );
    assert_eq!(b.tls, None);
}

#[test]
fn errors_name_the_line_and_the_fix() {
    for (text, needle) in [
        (
            "topic a/# out 1",
            ":1: \"topic\" belongs to a bridge, but no \"connection\" line comes before it",
        ),
        (
            "connection c\naddress h\ntopic a/# sideways",
            ":3: \"topic\" has the direction \"sideways\"; use out, in or both",
        ),
        (
            "connection c\naddress h\ntopic a/# out 3",
            ":3: \"topic\" has the QoS \"3\"; use 0, 1 or 2",
        ),
        (
            "connection c\naddress h\ntopic a/# out 1 loc/+/",
            ":3: \"topic\" has a local prefix without a remote prefix",
        ),
        (
            "connection c\naddress h\ntopic a/# out 1 loc/+/ \"\"",
            ":3: \"topic\" has the local prefix \"loc/+/\", which is not a topic name",
        ),
        (
            "connection c\naddress h\ntopic # out 1 \"\" remote/#",
            ":3: \"topic\" has the remote prefix \"remote/#\"",
        ),
        (
            "connection c\naddress h\ntopic a/#/b out 1",
            ":3: \"topic\" has the topic \"a/#/b\", which here becomes \"a/#/b\", not a topic \
             filter",
        ),
        (
            "connection c\naddress h\ntopic \"a/b out 1",
            ":3: \"topic\" has a quote without its closing quote",
        ),
        ("connection c\naddress h:99999\ntopic a", ":2: \"address\" has the address \"h:99999\" with the invalid port"),
        ("connection c\naddress [::1\ntopic a", ":2: \"address\" has the address \"[::1\" without its closing ']'"),
        ("connection c\ntopic a", ":1: bridge \"c\" has no address"),
        ("connection c\naddress h", ":1: bridge \"c\" carries no topic"),
        ("connection a/b", ":1: \"connection\" has the name \"a/b\""),
        (
            "connection c\naddress h\ntopic a\nconnection c",
            ":4: \"connection\" names \"c\" again (the first is at",
        ),
        (
            "connection c\naddress h\ntopic a\nremote_password p",
            ":1: bridge \"c\" has remote_password without remote_username",
        ),
        (
            "connection c\naddress h\ntopic a\nlocal_clientid same\n\
             connection d\naddress h\ntopic a\nlocal_clientid same",
            ":5: bridge \"d\" has the local client id \"same\" of the bridge at",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_psk 0123abcd",
            ":4: \"bridge_psk\" is TLS-PSK, which is not supported",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_identity me",
            ":4: \"bridge_identity\" is TLS-PSK",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_ciphers ECDHE-RSA-AES256-GCM-SHA384",
            ":4: \"bridge_ciphers\" is not supported: Makelaar offers TLS 1.2 and 1.3",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_ciphers_tls1.3 TLS_AES_256_GCM_SHA384",
            ":4: \"bridge_ciphers_tls1.3\" is not supported",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_cafile ca.pem\nbridge_require_ocsp true",
            ":5: \"bridge_require_ocsp\" true is not supported",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_cafile ca.pem\nbridge_tls_version tlsv1.1",
            ":5: \"bridge_tls_version\" asks for a TLS version older than 1.2",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_certfile c.pem\nbridge_keyfile k.pem",
            ":4: \"bridge_certfile\" needs TLS, which a bridge has only with bridge_cafile",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_cafile ca.pem\nbridge_certfile c.pem",
            ":1: bridge \"c\" has a TLS certfile (mosquitto.conf: bridge_certfile) without its keyfile",
        ),
        (
            "connection c\naddress h\ntopic a\nstart_type manual",
            ":4: \"start_type\" manual is not supported",
        ),
        (
            "connection c\naddress h\ntopic a\nrestart_timeout 30 10",
            ":4: \"restart_timeout\" has a value whose cap 10 is below its base 30",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_protocol_version mqttv6",
            ":4: \"bridge_protocol_version\" must be mqttv31, mqttv311 or mqttv50",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_receive_maximum 0",
            ":4: \"bridge_receive_maximum\" must be a whole number from 1 to 65535",
        ),
        (
            "connection c\naddress h\ntopic a\nnotification_topic state/#",
            ":4: \"notification_topic\" \"state/#\" is not a topic name",
        ),
        (
            "connection c\naddress h\ntopic a\nbridge_bind_address eth0",
            ":4: \"bridge_bind_address\" \"eth0\" is not an IP address",
        ),
    ] {
        let e = err(&format!("{text}\n"));
        assert!(e.contains(needle), "{text:?}:\n{e}\nlacks\n{needle}");
        assert!(e.contains("mosquitto.conf:"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// Every section of the corpus, through `config convert` and back.
#[test]
fn converted_bridges_read_back_the_same() {
    for text in [
        "connection edge\naddress 192.0.2.10\ntopic sensors/#\n",
        "connection remap\naddress 127.0.0.1:1884\ntopic # in 0 local/topic/ remote/topic/\n\
         topic \"\" both 1 local/state remote/state\ntopic \"a b/#\" out 2 \"\" r/\n",
        "connection awsiot\naddress x-ats.iot.eu-west-1.amazonaws.com:443\ncleansession true\n\
         clientid thing\nbridge_cafile ca.pem\nbridge_certfile c.pem\nbridge_keyfile k.pem\n\
         bridge_alpn x-amzn-mqtt-ca\ntry_private false\nnotifications false\ntopic t both 1\n",
        "max_queued_messages 200000\nmax_queued_bytes 5000\nconnection s\n\
         addresses [::1]:1883 b.example\nround_robin true\nremote_username u\nremote_password p\n\
         local_username l\nlocal_password lp\nbridge_protocol_version mqttv50\n\
         bridge_receive_maximum 7\nbridge_max_topic_alias 3\n\
         bridge_session_expiry_interval 4294967295\nstart_type once\nrestart_timeout 1 9 300\n\
         keepalive_interval 1\nnotification_topic s/state\nbridge_outgoing_retain false\n\
         bridge_attempt_unsubscribe false\nbridge_bind_address ::1\nbridge_tcp_keepalive 1 2 3\n\
         bridge_tcp_user_timeout 500\nbridge_reload_type immediate\nbridge_capath /etc/ssl/certs\n\
         bridge_tls_use_os_certs true\nbridge_tls_version tlsv1.3\nbridge_insecure true\n\
         topic x/# in 2 a/ b/\nlocal_cleansession false\ncleansession true\n\
         connection t\naddress t.example\ntopic y out\n",
    ] {
        round_trip(text);
    }
}

#[test]
fn warnings_for_loops_and_qos_0() {
    let b = one("connection c\naddress h\ntopic # both 1\ntopic a/# out\ntopic b/# both 2 l/ r/\n");
    let w = bridge_warnings(&b);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("topic \"#\" goes both ways") && w[0].contains("loop"),
        "{w:?}"
    );
    assert!(w[1].contains("topic \"a/#\" is carried at QoS 0"), "{w:?}");
}
