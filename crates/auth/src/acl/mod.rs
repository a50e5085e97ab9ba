//! Mosquitto ACL files, checked with Mosquitto 2.0's rules.
//!
//! # The file
//!
//! ```text
//! # Rules before the first `user` line are for clients without a username.
//! topic read public/#
//!
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secrets
//! topic read $SYS/#
//!
//! # For every client, whatever `user` line came before:
//! pattern readwrite devices/%c/#
//! pattern read users/%u/inbox
//! ```
//!
//! - `topic [read|write|readwrite|deny] FILTER` adds a rule for the current `user` section;
//!   without an access word it is `readwrite`. If only one word follows `topic`, that word is
//!   the filter, even `read` or `deny`. The filter is the rest of the line, spaces included.
//! - `pattern [ACCESS] FILTER` adds a rule for every client, with `%c` replaced by the client
//!   id and `%u` by the username.
//! - `user NAME` starts the section of that username (the rest of the line); a name may have
//!   several sections, which add up.
//! - A line starting with `#` is a comment; blank lines are skipped. Words are separated by
//!   spaces (a tab is not a separator); trailing white space is ignored.
//! - Anything else is an error naming the file and the line: an unknown keyword (including an
//!   indented `#`), an unknown access word, a missing filter or username, a filter that is
//!   not a valid MQTT topic filter (a misplaced `+` or `#`, more than 65,535 bytes, more than
//!   200 `/`). Mosquitto 2.0.11 refuses the same lines. Makelaar also refuses a file that is
//!   not UTF-8 or contains U+0000, which Mosquitto accepts (a rule with either can never
//!   match an MQTT topic, or matches a truncated one).
//!
//! # The rules of [`Acl::check`]
//!
//! Determined by experiment against Debian's Mosquitto 2.0.11 (a broker with an ACL file
//! probed by clients publishing at QoS 1 with MQTT 5, where a refused PUBLISH is answered
//! "Not authorized", and by clients subscribing and seeing which messages arrive); the same
//! matrix runs in `tests/mosquitto_acl.rs`.
//!
//! 1. **Subscribe is always granted.** Mosquitto 2.0 does not check SUBSCRIBE against the ACL
//!    file at all, whatever the filter (`#`, `$SYS/#`, `$share/…`): the SUBACK grants it.
//!    What a client may receive is decided per message, by a `Read` check on the message's
//!    topic when it is delivered (retained messages included). So a subscription to a
//!    wildcard filter delivers exactly the matching messages whose topics the client may read.
//! 2. **`$SYS` and `$share`.** Writing to a topic whose first level is `$SYS` is refused,
//!    except `$SYS/broker/connection/+/state` (bridge status), which then still needs a rule.
//!    Reading or writing a topic starting with `$share` is refused. (Mosquitto 2.0.11 compares
//!    the characters `$SYS` as a prefix, so it also refuses `$SYSTEM/x`; `$SYS` is a topic level,
//!    and such topics are ordinary `$` topics here, as they are to the broker's own rule in
//!    `makelaar_core::topic::sys`.)
//! 3. **Which rules.** A client with a username gets the rules of that username's sections;
//!    a client without one (an empty username counts as none, as Mosquitto treats it) gets the
//!    rules before the first `user` line. Nobody gets both. Patterns apply to everybody.
//! 4. **User rules first.** If any `deny` rule of the client's section matches the topic, the
//!    answer is no. Otherwise, if a rule matching the topic grants the access (`read` for
//!    Read, `write` for Write, `readwrite` both), the answer is yes. Otherwise the patterns
//!    decide. So a user rule's grant beats a pattern's `deny`, and a user rule's `deny` beats
//!    a pattern's grant.
//! 5. **Patterns.** If there are patterns and the username or the client id contains `+` or
//!    `#`, the answer is no (CVE-2017-7650). Otherwise patterns are checked like user rules
//!    (any matching `deny` → no; a matching grant → yes), after substitution. A pattern with
//!    `%u` is skipped for a client without a username.
//! 6. **Substitution is textual.** `%c` and `%u` are replaced wherever they appear in one pass,
//!    even inside a level (`pre%c/x` becomes `preID/x`), and a `/` in the id or username is
//!    not refused: client id `a/b` matches `pattern write dev/%c/#` for `dev/a/b/x`.
//!    Mosquitto 1.4 refused `/` as well; 2.0.11 does not, and neither does this module, so
//!    that an ACL file means the same in both. Beware: a client that may pick its id can then
//!    reach into another client's tree (id `bob/x` gets `dev/bob/x/#`, inside `bob`'s
//!    `dev/bob/#`); where that matters, use `%u` with password-checked usernames.
//! 7. **Matching** is MQTT filter matching: `+` one level, `#` the rest including the parent
//!    (`a/#` matches `a`), and a filter starting with `+` or `#` does not match a topic
//!    starting with `$`.
//! 8. Anything else is refused: no rule, no access.

mod parse;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use makelaar_proto::topic::filter_matches;

pub use parse::AclError;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receive a message published to this topic name.
    Read,
    /// Publish to this topic name (a will message included).
    Write,
    /// Subscribe to this topic filter: always granted, as by Mosquitto 2.0 (rule 1); what
    /// the subscription delivers is checked message by message with `Read`.
    Subscribe,
}

/// The rules of one ACL file. Cheap to share: checks take `&self`.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Rules before the first `user` line, for clients without a username.
    anonymous: Rules,
    /// Rules of each `user` section.
    users: HashMap<String, Rules>,
    patterns: Rules,
}

#[derive(Debug, Clone, Default)]
struct Rules {
    /// Filters of `deny` rules: checked before any grant.
    deny: Vec<String>,
    /// Filters with what they grant.
    grant: Vec<(String, Grant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::Read | Grant::ReadWrite, Access::Read)
                | (Grant::Write | Grant::ReadWrite, Access::Write)
        )
    }
}

/// What a matching rule says.
enum Verdict {
    Deny,
    Allow,
    /// No rule decided: look further.
    Continue,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.grant.is_empty()
    }

    /// Rule 4 of the module documentation, with `filter_of` turning a stored filter into the
    /// one to match (the identity for user rules, substitution for patterns).
    fn decide(
        &self,
        topic: &str,
        access: Access,
        filter_of: impl Fn(&str) -> Option<String>,
    ) -> Verdict {
        let matches = |stored: &str| filter_of(stored).is_some_and(|f| filter_matches(&f, topic));
        if self.deny.iter().any(|f| matches(f)) {
            return Verdict::Deny;
        }
        if self
            .grant
            .iter()
            .any(|(f, grant)| grant.allows(access) && matches(f))
        {
            return Verdict::Allow;
        }
        Verdict::Continue
    }
}

impl Acl {
    /// Reads and parses the ACL file at `path`.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let bytes = std::fs::read(path).map_err(|source| AclError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses the contents of an ACL file; `path` names it in errors.
    pub fn parse(contents: &[u8], path: &Path) -> Result<Self, AclError> {
        parse::parse(contents, path)
    }

    /// Whether the client may `access` `topic` (a topic name for Read and Write, a filter for
    /// Subscribe), by Mosquitto 2.0's rules: see the [module documentation](self).
    /// `username` is `None` for a client that gave none.
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        if access == Access::Subscribe {
            // Rule 1: Mosquitto 2.0 leaves subscriptions unchecked; delivery is checked.
            return true;
        }
        if topic.is_empty() || topic.contains(['+', '#']) {
            return false;
        }
        // Rule 2: `$SYS` by its first level; `$share` as Mosquitto compares it, as a prefix.
        let sys = topic.split('/').next() == Some("$SYS");
        if sys
            && access == Access::Write
            && !filter_matches("$SYS/broker/connection/+/state", topic)
        {
            return false;
        }
        if topic.starts_with("$share") {
            return false;
        }
        // Rule 3.
        let username = username.filter(|u| !u.is_empty());
        let section = match username {
            Some(name) => self.users.get(name),
            None => Some(&self.anonymous),
        };
        if let Some(rules) = section {
            match rules.decide(topic, access, |f| Some(f.to_string())) {
                Verdict::Deny => return false,
                Verdict::Allow => return true,
                Verdict::Continue => {}
            }
        }
        if self.patterns.is_empty() {
            return false;
        }
        // Rule 5.
        if username.is_some_and(|u| u.contains(['+', '#'])) || client_id.contains(['+', '#']) {
            return false;
        }
        let substitute = |pattern: &str| substitute(pattern, client_id, username);
        matches!(
            self.patterns.decide(topic, access, substitute),
            Verdict::Allow
        )
    }
}

/// Rule 6: replaces `%c` and `%u` in one left-to-right pass (so an id containing `%u` is not
/// substituted again). `None` when the pattern has `%u` and there is no username.
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    if !pattern.contains('%') {
        return Some(pattern.to_string());
    }
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        if let Some(after) = from.strip_prefix("%c") {
            out.push_str(client_id);
            rest = after;
        } else if let Some(after) = from.strip_prefix("%u") {
            out.push_str(username?);
            rest = after;
        } else {
            out.push('%');
            rest = from.get(1..).unwrap_or_default();
        }
    }
    out.push_str(rest);
    Some(out)
}
