#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

fn request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn status(o: &Outcome) -> u16 {
    match o {
        Outcome::Upgrade { .. } => 101,
        Outcome::Refuse { response, .. } => {
            let text = String::from_utf8_lossy(response);
            text[9..12].parse().unwrap()
        }
        Outcome::Incomplete => 0,
    }
}

#[test]
fn rfc_6455_sample_key() {
    // RFC 6455 section 1.3's example.
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn a_good_request_is_upgraded_with_mqtt() {
    let mut req = request("/mqtt?x=1", &["Sec-WebSocket-Protocol: chat, mqtt"]);
    let len = req.len();
    req.extend(b"\x82\x80");
    let Outcome::Upgrade {
        response,
        len: got,
        subprotocol,
        forwarded_for,
    } = respond(&req, Some("/mqtt"))
    else {
        panic!("not upgraded");
    };
    assert_eq!(
        (got, subprotocol, forwarded_for.as_str()),
        (len, "mqtt", "")
    );
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(response.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    assert!(response.ends_with("\r\n\r\n"));
}

#[test]
fn mqtt_3_1_clients_and_forwarded_headers() {
    let req = request(
        "/",
        &[
            "Sec-WebSocket-Protocol: mqttv3.1",
            "X-Forwarded-For: 203.0.113.9, 10.0.0.2",
            "x-forwarded-for: 10.0.0.3",
        ],
    );
    let Outcome::Upgrade {
        subprotocol,
        forwarded_for,
        ..
    } = respond(&req, None)
    else {
        panic!("not upgraded");
    };
    assert_eq!(subprotocol, "mqttv3.1");
    assert_eq!(forwarded_for, "203.0.113.9, 10.0.0.2,10.0.0.3");
}

#[test]
fn refusals() {
    let mqtt = "Sec-WebSocket-Protocol: mqtt";
    assert_eq!(
        status(&respond(&request("/other", &[mqtt]), Some("/mqtt"))),
        404
    );
    assert_eq!(status(&respond(&request("/mqtt", &[]), Some("/mqtt"))), 400);
    assert_eq!(
        status(&respond(
            &request("/mqtt", &["Sec-WebSocket-Protocol: MQTT-ish"]),
            Some("/mqtt")
        )),
        400
    );
    let post = String::from_utf8(request("/mqtt", &[mqtt]))
        .unwrap()
        .replacen("GET", "POST", 1);
    assert_eq!(status(&respond(post.as_bytes(), Some("/mqtt"))), 405);
    let plain = b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(status(&respond(plain, Some("/mqtt"))), 426);
    let v8 = String::from_utf8(request("/mqtt", &[mqtt]))
        .unwrap()
        .replace("Version: 13", "Version: 8");
    assert_eq!(status(&respond(v8.as_bytes(), Some("/mqtt"))), 426);
    let badkey = String::from_utf8(request("/mqtt", &[mqtt]))
        .unwrap()
        .replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    assert_eq!(status(&respond(badkey.as_bytes(), Some("/mqtt"))), 400);
    let http10 = String::from_utf8(request("/mqtt", &[mqtt]))
        .unwrap()
        .replace("HTTP/1.1", "HTTP/1.0");
    assert_eq!(status(&respond(http10.as_bytes(), Some("/mqtt"))), 400);
    assert_eq!(
        status(&respond(
            b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
            None
        )),
        400
    );
}

#[test]
fn incomplete_and_oversized_requests() {
    let req = request("/mqtt", &["Sec-WebSocket-Protocol: mqtt"]);
    for cut in 0..req.len() {
        assert_eq!(
            respond(&req[..cut], Some("/mqtt")),
            Outcome::Incomplete,
            "cut at {cut}"
        );
    }
    let cookie = format!("Cookie: {}", "c".repeat(MAX_REQUEST));
    let big = request("/mqtt", &["Sec-WebSocket-Protocol: mqtt", &cookie]);
    assert_eq!(status(&respond(&big, Some("/mqtt"))), 431);
    assert_eq!(status(&respond(&big[..MAX_REQUEST], Some("/mqtt"))), 431);
    let many: Vec<String> = (0..100).map(|i| format!("X-{i}: y")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        status(&respond(&request("/mqtt", &many), Some("/mqtt"))),
        431
    );
}
