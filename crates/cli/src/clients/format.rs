//! How `makelaar sub` and `makelaar rr` print a message: the payload, `topic payload` (-v), a
//! format string (-F, Mosquitto's `%`, `@` and `\` sequences) or one JSON object (--json).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use makelaar_client::{Message, Properties};

/// The chosen output form.
#[derive(Debug, Clone)]
pub enum Output {
    /// The payload only.
    Payload,
    /// `topic payload`.
    Verbose,
    /// A -F format string.
    Format(String),
    /// One JSON object per message (--json).
    Json,
}

#[derive(Debug, Clone)]
pub struct Printer {
    pub output: Output,
    /// Append a newline (not with -N).
    pub newline: bool,
}

impl Printer {
    /// The bytes to print for `m`.
    pub fn render(&self, m: &Message) -> Vec<u8> {
        let mut out = Vec::with_capacity(m.payload.len() + 64);
        match &self.output {
            Output::Payload => out.extend_from_slice(&m.payload),
            Output::Verbose => {
                out.extend_from_slice(m.topic.as_bytes());
                out.push(b' ');
                out.extend_from_slice(&m.payload);
            }
            Output::Format(f) => format_message(f, m, SystemTime::now(), &mut out),
            Output::Json => out.extend_from_slice(json(m).as_bytes()),
        }
        if self.newline {
            out.push(b'\n');
        }
        out
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The properties of a message as a JSON object (empty object when none).
fn json_properties(p: &Properties) -> String {
    let mut fields: Vec<String> = Vec::new();
    let mut field = |name: &str, value: String| {
        let mut s = String::new();
        json_str(name, &mut s);
        s.push(':');
        s.push_str(&value);
        fields.push(s);
    };
    let text = |s: &str| {
        let mut o = String::new();
        json_str(s, &mut o);
        o
    };
    if let Some(v) = p.payload_format_indicator {
        field("payload_format_indicator", v.to_string());
    }
    if let Some(v) = p.message_expiry_interval {
        field("message_expiry_interval", v.to_string());
    }
    if let Some(v) = &p.content_type {
        field("content_type", text(v));
    }
    if let Some(v) = &p.response_topic {
        field("response_topic", text(v));
    }
    if let Some(v) = &p.correlation_data {
        // Binary: always base64, so that it reads back exactly.
        field("correlation_data", text(&b64(v)));
    }
    if !p.subscription_identifiers.is_empty() {
        let ids: Vec<String> = p
            .subscription_identifiers
            .iter()
            .map(|i| i.to_string())
            .collect();
        field("subscription_identifiers", format!("[{}]", ids.join(",")));
    }
    if let Some(v) = p.topic_alias {
        field("topic_alias", v.to_string());
    }
    if !p.user_properties.is_empty() {
        // Pairs, not an object: keys may repeat.
        let pairs: Vec<String> = p
            .user_properties
            .iter()
            .map(|(k, v)| format!("[{},{}]", text(k), text(v)))
            .collect();
        field("user_properties", format!("[{}]", pairs.join(",")));
    }
    format!("{{{}}}", fields.join(","))
}

/// The --json form: topic, qos, retain, dup, properties, and the payload as text when it is
/// UTF-8 (`"payload_encoding":"utf-8"`) or else base64 (`"payload_encoding":"base64"`).
pub fn json(m: &Message) -> String {
    let mut s = String::with_capacity(m.payload.len() + 128);
    s.push_str("{\"topic\":");
    json_str(&m.topic, &mut s);
    let _ = write!(
        s,
        ",\"qos\":{},\"retain\":{},\"dup\":{},\"properties\":{},\"payload\":",
        m.qos as u8,
        m.retain,
        m.dup,
        json_properties(&m.properties)
    );
    match std::str::from_utf8(&m.payload) {
        Ok(text) => {
            json_str(text, &mut s);
            s.push_str(",\"payload_encoding\":\"utf-8\"}");
        }
        Err(_) => {
            json_str(&b64(&m.payload), &mut s);
            s.push_str(",\"payload_encoding\":\"base64\"}");
        }
    }
    s
}

/// Mosquitto's %j: timestamp, topic, qos, retain (0/1), payload length, properties in its
/// naming, and the payload as an escaped string.
fn mosquitto_json(m: &Message, now: SystemTime) -> String {
    let mut s = String::new();
    s.push_str("{\"tst\":");
    json_str(&iso8601_micros(now), &mut s);
    s.push_str(",\"topic\":");
    json_str(&m.topic, &mut s);
    let _ = write!(
        s,
        ",\"qos\":{},\"retain\":{},\"payloadlen\":{}",
        m.qos as u8,
        u8::from(m.retain),
        m.payload.len()
    );
    let p = &m.properties;
    if !p.is_empty() {
        let mut f: Vec<String> = Vec::new();
        let text = |s: &str| {
            let mut o = String::new();
            json_str(s, &mut o);
            o
        };
        if let Some(v) = &p.content_type {
            f.push(format!("\"content-type\":{}", text(v)));
        }
        if let Some(v) = &p.correlation_data {
            f.push(format!(
                "\"correlation-data\":{}",
                text(&String::from_utf8_lossy(v))
            ));
        }
        if !p.user_properties.is_empty() {
            let pairs: Vec<String> = p
                .user_properties
                .iter()
                .map(|(k, v)| format!("{}:{}", text(k), text(v)))
                .collect();
            f.push(format!("\"user-properties\":{{{}}}", pairs.join(",")));
        }
        if let Some(v) = p.payload_format_indicator {
            f.push(format!("\"payload-format-indicator\":{v}"));
        }
        if let Some(v) = &p.response_topic {
            f.push(format!("\"response-topic\":{}", text(v)));
        }
        if let Some(v) = p.message_expiry_interval {
            f.push(format!("\"message-expiry-interval\":{v}"));
        }
        if let Some(v) = p.subscription_identifiers.first() {
            f.push(format!("\"subscription-identifier\":{v}"));
        }
        if let Some(v) = p.topic_alias {
            f.push(format!("\"topic-alias\":{v}"));
        }
        let _ = write!(s, ",\"properties\":{{{}}}", f.join(","));
    }
    s.push_str(",\"payload\":");
    json_str(&String::from_utf8_lossy(&m.payload), &mut s);
    s.push('}');
    s
}

/// Flags, width and precision of one `%` sequence.
#[derive(Default)]
struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

impl Spec {
    /// Pads (and, with a precision, truncates) `value`; `numeric` allows zero padding.
    fn apply(&self, value: &[u8], numeric: bool, truncate: bool, out: &mut Vec<u8>) {
        let value = match self.precision {
            Some(p) if truncate => {
                // Cut at a character boundary when the value is text.
                match std::str::from_utf8(value) {
                    Ok(s) => {
                        let end = s.char_indices().nth(p).map_or(s.len(), |(i, _)| i);
                        s.as_bytes().get(..end).unwrap_or(value)
                    }
                    Err(_) => value.get(..p.min(value.len())).unwrap_or(value),
                }
            }
            _ => value,
        };
        let len = std::str::from_utf8(value).map_or(value.len(), |s| s.chars().count());
        let pad = self.width.saturating_sub(len);
        if self.left {
            out.extend_from_slice(value);
            out.resize(out.len() + pad, b' ');
        } else {
            let c = if self.zero && numeric { b'0' } else { b' ' };
            out.resize(out.len() + pad, c);
            out.extend_from_slice(value);
        }
    }
}

fn hex(bytes: &[u8], upper: bool) -> Vec<u8> {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        if upper {
            let _ = write!(s, "{b:02X}");
        } else {
            let _ = write!(s, "{b:02x}");
        }
    }
    s.into_bytes()
}

fn opt<T: ToString>(v: Option<T>) -> Vec<u8> {
    v.map(|v| v.to_string().into_bytes()).unwrap_or_default()
}

/// Renders a -F format string for one message.
pub fn format_message(f: &str, m: &Message, now: SystemTime, out: &mut Vec<u8>) {
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let mut spec = Spec::default();
                while let Some(&flag) = chars.peek() {
                    match flag {
                        '-' => spec.left = true,
                        '0' => spec.zero = true,
                        _ => break,
                    }
                    chars.next();
                }
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    spec.width = spec.width.saturating_mul(10).saturating_add(d as usize);
                    chars.next();
                }
                if chars.peek() == Some(&'.') {
                    chars.next();
                    let mut p = 0usize;
                    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                        p = p.saturating_mul(10).saturating_add(d as usize);
                        chars.next();
                    }
                    spec.precision = Some(p);
                }
                let Some(conv) = chars.next() else {
                    out.push(b'%');
                    break;
                };
                let p = &m.properties;
                match conv {
                    '%' => out.push(b'%'),
                    't' => spec.apply(m.topic.as_bytes(), false, true, out),
                    'p' => spec.apply(&m.payload, false, false, out),
                    'l' => spec.apply(m.payload.len().to_string().as_bytes(), true, false, out),
                    'm' => spec.apply(m.packet_id.to_string().as_bytes(), true, false, out),
                    'q' => out.extend_from_slice((m.qos as u8).to_string().as_bytes()),
                    'r' => out.push(if m.retain { b'1' } else { b'0' }),
                    'x' => spec.apply(&hex(&m.payload, false), true, false, out),
                    'X' => spec.apply(&hex(&m.payload, true), true, false, out),
                    'A' => spec.apply(&opt(p.topic_alias), true, false, out),
                    'C' => spec.apply(
                        p.content_type.as_deref().unwrap_or("").as_bytes(),
                        false,
                        true,
                        out,
                    ),
                    'D' => out.extend_from_slice(p.correlation_data.as_deref().unwrap_or(b"")),
                    'E' => spec.apply(&opt(p.message_expiry_interval), true, false, out),
                    'F' => spec.apply(&opt(p.payload_format_indicator), true, false, out),
                    'P' => {
                        let s: Vec<String> = p
                            .user_properties
                            .iter()
                            .map(|(k, v)| format!("{k}:{v}"))
                            .collect();
                        out.extend_from_slice(s.join(" ").as_bytes());
                    }
                    'R' => spec.apply(
                        p.response_topic.as_deref().unwrap_or("").as_bytes(),
                        false,
                        true,
                        out,
                    ),
                    'S' => {
                        let s: Vec<String> = p
                            .subscription_identifiers
                            .iter()
                            .map(|i| i.to_string())
                            .collect();
                        spec.apply(s.join(",").as_bytes(), true, false, out);
                    }
                    'I' => spec.apply(iso8601(now).as_bytes(), false, true, out),
                    'U' => {
                        let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
                        out.extend_from_slice(
                            format!("{}.{:09}", d.as_secs(), d.subsec_nanos()).as_bytes(),
                        );
                    }
                    'j' | 'J' => out.extend_from_slice(mosquitto_json(m, now).as_bytes()),
                    other => {
                        // Unknown: printed as written.
                        out.push(b'%');
                        let mut b = [0u8; 4];
                        out.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
                    }
                }
            }
            '@' => match chars.next() {
                Some('@') => out.push(b'@'),
                Some(c) => out.extend_from_slice(strftime(c, now).as_bytes()),
                None => out.push(b'@'),
            },
            '\\' => match chars.next() {
                Some('\\') => out.push(b'\\'),
                Some('0') => out.push(0),
                Some('a') => out.push(0x07),
                Some('e') => out.push(0x1b),
                Some('n') => out.push(b'\n'),
                Some('r') => out.push(b'\r'),
                Some('t') => out.push(b'\t'),
                Some('v') => out.push(0x0b),
                Some(other) => {
                    out.push(b'\\');
                    let mut b = [0u8; 4];
                    out.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
                }
                None => out.push(b'\\'),
            },
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

/// A UTC calendar time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// Days since 1970-01-01.
    days: i64,
    secs: u64,
}

fn civil(t: SystemTime) -> Civil {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (proleptic Gregorian), after Howard Hinnant's public algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
        nanos: d.subsec_nanos(),
        days,
        secs,
    }
}

/// `2016-08-10T09:47:38+0000` (times are UTC).
fn iso8601(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+0000",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

fn iso8601_micros(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z+0000",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanos / 1000
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// The common strftime conversions, in UTC; `@N` is the nanoseconds.
fn strftime(c: char, t: SystemTime) -> String {
    let v = civil(t);
    let month_name = MONTHS
        .get(v.month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("");
    let day_name = DAYS
        .get(v.days.rem_euclid(7) as usize)
        .copied()
        .unwrap_or("");
    match c {
        'Y' => format!("{:04}", v.year),
        'y' => format!("{:02}", v.year.rem_euclid(100)),
        'm' => format!("{:02}", v.month),
        'd' => format!("{:02}", v.day),
        'e' => format!("{:2}", v.day),
        'H' => format!("{:02}", v.hour),
        'I' => format!("{:02}", (v.hour + 11) % 12 + 1),
        'p' => (if v.hour < 12 { "AM" } else { "PM" }).to_string(),
        'M' => format!("{:02}", v.minute),
        'S' => format!("{:02}", v.second),
        's' => v.secs.to_string(),
        'N' => format!("{:09}", v.nanos),
        'z' => "+0000".to_string(),
        'Z' => "UTC".to_string(),
        'F' => format!("{:04}-{:02}-{:02}", v.year, v.month, v.day),
        'T' => format!("{:02}:{:02}:{:02}", v.hour, v.minute, v.second),
        'D' => format!("{:02}/{:02}/{:02}", v.month, v.day, v.year.rem_euclid(100)),
        'b' | 'h' => month_name.to_string(),
        'a' => day_name.to_string(),
        other => format!("@{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use makelaar_client::QoS;
    use std::time::Duration;

    fn msg() -> Message {
        let mut m = Message::new("a/b", "hello").with_qos(QoS::AtLeastOnce);
        m.packet_id = 7;
        m.properties.content_type = Some("text/plain".into());
        m.properties.user_properties = vec![("k".into(), "v".into())];
        m
    }

    fn fmt(f: &str, m: &Message) -> String {
        let mut out = Vec::new();
        // 2020-05-06T22:12:00.5Z
        let t = UNIX_EPOCH + Duration::from_millis(1_588_803_120_500);
        format_message(f, m, t, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn percent_sequences() {
        let m = msg();
        assert_eq!(fmt("%t %p %q %r %l %m", &m), "a/b hello 1 0 5 7");
        assert_eq!(fmt("%x|%X", &m), "68656c6c6f|68656C6C6F");
        assert_eq!(
            fmt("[%5t][%-5t][%05l][%.1t]", &m),
            "[  a/b][a/b  ][00005][a]"
        );
        assert_eq!(fmt("%C %P %% %R|", &m), "text/plain k:v % |");
        assert_eq!(fmt("%I", &m), "2020-05-06T22:12:00+0000");
        assert_eq!(fmt("%U", &m), "1588803120.500000000");
        assert_eq!(
            fmt("@Y-@m-@d @H:@M:@S @@ @a", &m),
            "2020-05-06 22:12:00 @ Wed"
        );
        assert_eq!(fmt("a\\tb\\n\\\\", &m), "a\tb\n\\");
    }

    #[test]
    fn json_is_text_or_base64() {
        let m = msg();
        assert_eq!(
            json(&m),
            "{\"topic\":\"a/b\",\"qos\":1,\"retain\":false,\"dup\":false,\"properties\":\
             {\"content_type\":\"text/plain\",\"user_properties\":[[\"k\",\"v\"]]},\
             \"payload\":\"hello\",\"payload_encoding\":\"utf-8\"}"
        );
        let bin = Message::new("t", Bytes::from_static(&[0xff, 0x00]));
        assert!(json(&bin).ends_with("\"payload\":\"/wA=\",\"payload_encoding\":\"base64\"}"));
        let mut q = String::new();
        json_str("a\"b\\\u{1}", &mut q);
        assert_eq!(q, "\"a\\\"b\\\\\\u0001\"");
    }

    #[test]
    fn mosquitto_json() {
        let m = msg();
        let s = fmt("%j", &m);
        assert!(s.starts_with("{\"tst\":\"2020-05-06T22:12:00.500000Z+0000\",\"topic\":\"a/b\",\"qos\":1,\"retain\":0,\"payloadlen\":5,"), "{s}");
        assert!(s.ends_with(",\"payload\":\"hello\"}"), "{s}");
    }
}
