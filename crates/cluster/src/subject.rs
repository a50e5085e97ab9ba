//! MQTT topics and filters as NATS subjects: total, reversible, and matching alike.
//!
//! A NATS subject is a list of non-empty tokens separated by `.`; the tokens `*` (one token)
//! and `>` (one or more tokens, last) are wildcards, and whitespace is not allowed. An MQTT
//! topic is a list of levels separated by `/`, where a level may be empty and may hold any
//! UTF-8 character but U+0000. The encoding here maps one onto the other:
//!
//! ```text
//! topic                      subject tokens (after the caller's prefix)
//! sensor/temp                u.sensor.temp._T
//! /a//b                      u._.a._.b._T            (empty levels are `_`)
//! $SYS/broker/uptime         s._24SYS.broker.uptime._T
//! a.b c/ü                    u.a_2Eb_20c._C3_BC._T   (bytes outside [A-Za-z0-9-] as `_XX`)
//! filter a/#                 u.a.>                   (matches `a` itself: `>` takes `_T`)
//! filter +/x/+               u.*.x.*._T
//! filter $SYS/#              s._24SYS.>
//! ```
//!
//! - **The root token** is `u` for a topic whose first character is not `$` and `s` for one
//!   that starts with `$`. A filter whose first level is `+` or `#` encodes under `u` only,
//!   so it never matches a `$` topic ([MQTT-4.7.2-1]).
//! - **Every level is one token.** Bytes `A`–`Z`, `a`–`z`, `0`–`9` and `-` stand as they are;
//!   every other byte of the level's UTF-8 (`.`, `*`, `>`, space, `_`, `$`, `+`, `#`, control
//!   and non-ASCII bytes) is written `_XX`, two upper-case hex digits. An empty level is the
//!   token `_`. The form is canonical: exactly one token per level, so decoding is exact.
//! - **The terminator** `_T` ends every topic's subject (it is not a valid encoded level: `T`
//!   is not a hex digit). A filter ending in `#` ends in `>` instead, which takes the
//!   terminator when the topic is the parent level itself: `a/#` is ONE NATS subscription and
//!   matches `a`, `a/` and `a/b/c` ([MQTT-4.7.1-2]). A `+` becomes `*` ([MQTT-4.7.1-3]); it
//!   can never take the terminator, because the filter's own terminator must follow it.
//!
//! Encoding is total: every string encodes (validity of topics and filters is
//! [`makelaar_proto::topic`]'s to check, before). `$share/GROUP/` is not part of a subject:
//! the caller strips it ([`makelaar_proto::topic::parse_shared`]) and uses the group as the
//! NATS queue group. Subjects are at most about 3 bytes per topic byte long; the NATS server's
//! `max_control_line` (4 KiB by default) bounds what it accepts, which the backend checks.

use std::fmt;

/// The root token of topics that do not start with `$`.
pub const ROOT_PLAIN: &str = "u";
/// The root token of topics that start with `$` ([MQTT-4.7.2-1]).
pub const ROOT_DOLLAR: &str = "s";
/// The root token of a claim's barrier in a partition stream
/// ([`crate::cluster::Cluster::barriers_since`]): never a topic's, which encode under
/// [`ROOT_PLAIN`] or [`ROOT_DOLLAR`], so no subscription or share group's filter matches it.
pub const ROOT_BARRIER: &str = "b";
/// The token that ends every topic's subject.
pub const TERMINATOR: &str = "_T";
/// The token of an empty level.
pub const EMPTY_LEVEL: &str = "_";

/// A NATS subject, or the part of one that encodes a topic or filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    /// A subject given whole (a reply inbox, a control subject); the caller vouches for it.
    pub fn from_tokens(tokens: &str) -> Subject {
        Subject(tokens.to_owned())
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// `prefix.self`: the encoded topic under a prefix of the caller's (one or more tokens,
    /// such as `mk.live` or `mk.p.3`).
    pub fn under(&self, prefix: &str) -> Subject {
        let mut s = String::with_capacity(prefix.len() + 1 + self.0.len());
        s.push_str(prefix);
        s.push('.');
        s.push_str(&self.0);
        Subject(s)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a subject does not decode into a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The first token is neither `u` nor `s`.
    #[error("subject does not start with a root token ('u' or 's')")]
    BadRoot,
    /// The last token is not the terminator `_T`.
    #[error("subject does not end with the terminator token '_T'")]
    NoTerminator,
    /// No level between root and terminator.
    #[error("subject has no level")]
    NoLevel,
    /// A token is not a canonical encoded level (a wildcard, a bad escape, a raw byte that
    /// should have been escaped).
    #[error("subject token is not an encoded topic level")]
    BadToken,
    /// The escaped bytes are not UTF-8.
    #[error("subject token does not decode to UTF-8")]
    NotUtf8,
    /// The root token disagrees with the first level (`s` without `$`, or `u` with it).
    #[error("subject root token disagrees with the topic's first character")]
    RootMismatch,
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// The upper-case hex digit of the low four bits.
fn hex_digit(n: u8) -> char {
    let n = n & 0x0f;
    char::from(if n < 10 { b'0' + n } else { b'A' + n - 10 })
}

/// Appends one level, escaped, as one token.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL);
        return;
    }
    for &b in level.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b));
        }
    }
}

/// Any text as one token, escaped as a topic level is: for keys built the same way
/// (client ids). Total; [`unescape_token`] reverses it.
pub fn escape_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_level(&mut out, text);
    out
}

/// The inverse of [`escape_token`].
pub fn unescape_token(token: &str) -> Result<String, SubjectError> {
    if token == EMPTY_LEVEL {
        return Ok(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = bytes.iter();
    while let Some(&b) = i.next() {
        if is_plain(b) {
            out.push(b);
        } else if b == b'_' {
            let hi = i.next().and_then(|&h| hex_value(h));
            let lo = i.next().and_then(|&l| hex_value(l));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(SubjectError::BadToken),
            }
        } else {
            return Err(SubjectError::BadToken);
        }
    }
    if out.is_empty() {
        return Err(SubjectError::BadToken);
    }
    String::from_utf8(out).map_err(|_| SubjectError::NotUtf8)
}

fn hex_value(h: u8) -> Option<u8> {
    match h {
        b'0'..=b'9' => Some(h - b'0'),
        b'A'..=b'F' => Some(h - b'A' + 10),
        _ => None,
    }
}

fn root_of(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        ROOT_DOLLAR
    } else {
        ROOT_PLAIN
    }
}

/// The subject tokens of a topic name: root, one token per level, terminator.
pub fn encode_topic(topic: &str) -> Subject {
    let mut out = String::with_capacity(topic.len() + 8);
    out.push_str(root_of(topic));
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out.push('.');
    out.push_str(TERMINATOR);
    Subject(out)
}

/// The subject tokens of a plain topic filter (no `$share/GROUP/`): `+` → `*`, a last `#` →
/// `>` (in place of the terminator), every other level as in [`encode_topic`]. A filter that
/// starts with a wildcard encodes under the plain root only ([MQTT-4.7.2-1]).
pub fn encode_filter(filter: &str) -> Subject {
    let mut out = String::with_capacity(filter.len() + 8);
    out.push_str(root_of(filter));
    let mut levels = filter.split('/').peekable();
    let mut ends_in_hash = false;
    while let Some(level) = levels.next() {
        out.push('.');
        match level {
            "+" => out.push('*'),
            "#" if levels.peek().is_none() => {
                out.push('>');
                ends_in_hash = true;
            }
            _ => push_level(&mut out, level),
        }
    }
    if !ends_in_hash {
        out.push('.');
        out.push_str(TERMINATOR);
    }
    Subject(out)
}

/// The topic name a subject's topic tokens (root to terminator, no prefix) stand for.
pub fn decode_topic(tokens: &str) -> Result<String, SubjectError> {
    let mut parts = tokens.split('.');
    let root = parts.next().ok_or(SubjectError::BadRoot)?;
    if root != ROOT_PLAIN && root != ROOT_DOLLAR {
        return Err(SubjectError::BadRoot);
    }
    let mut levels: Vec<&str> = parts.collect();
    if levels.pop() != Some(TERMINATOR) {
        return Err(SubjectError::NoTerminator);
    }
    if levels.is_empty() {
        return Err(SubjectError::NoLevel);
    }
    let mut topic = String::with_capacity(tokens.len());
    for (n, token) in levels.iter().enumerate() {
        if n > 0 {
            topic.push('/');
        }
        topic.push_str(&unescape_token(token)?);
    }
    if root_of(&topic) != root {
        return Err(SubjectError::RootMismatch);
    }
    Ok(topic)
}

/// Strips `prefix.` from a whole subject and decodes the rest ([`decode_topic`]).
pub fn decode_under(prefix: &str, subject: &str) -> Result<String, SubjectError> {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(SubjectError::BadRoot)?;
    decode_topic(rest)
}

#[cfg(test)]
mod tests;
