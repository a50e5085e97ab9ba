//! Reading an ACL file, line by line, the way Mosquitto 2.0.11 does (see the module
//! documentation of [`super`] for the format and where Makelaar is stricter).

use std::path::{Path, PathBuf};

use super::{Acl, Grant, Rules};

/// Longest topic filter, in bytes ([MQTT-4.7.3-3]).
const MAX_FILTER_LEN: usize = 65_535;
/// Most `/` in a filter: Mosquitto's `TOPIC_HIERARCHY_LIMIT`.
const MAX_FILTER_SEPARATORS: usize = 200;

/// Why an ACL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read the ACL file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// One line is broken.
    #[error("{}, line {line}: {problem}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it, as a sentence fragment.
        problem: String,
    },
}

/// Where rules go while the file is read.
enum Section {
    Anonymous,
    User(String),
}

pub(super) fn parse(contents: &[u8], path: &Path) -> Result<Acl, AclError> {
    let mut acl = Acl::default();
    let mut section = Section::Anonymous;
    // A final newline ends the last line rather than starting an empty one.
    let contents = contents.strip_suffix(b"\n").unwrap_or(contents);
    for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let error = |problem: String| AclError::Line {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let text = std::str::from_utf8(raw)
            .map_err(|_| error("the line is not valid UTF-8".to_string()))?;
        if text.contains('\0') {
            return Err(error("the line contains U+0000".to_string()));
        }
        parse_line(text, &mut acl, &mut section).map_err(error)?;
    }
    Ok(acl)
}

fn parse_line(text: &str, acl: &mut Acl, section: &mut Section) -> Result<(), String> {
    // Mosquitto trims trailing white space (`isspace`, so `\r` too), skips a `#` in the first
    // column only, and splits words on spaces alone.
    let text = text.trim_end_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    if text.starts_with('#') {
        return Ok(());
    }
    let text = text.trim_start_matches(' ');
    if text.is_empty() {
        return Ok(());
    }
    let (keyword, rest) = split_word(text);
    match keyword {
        "topic" | "pattern" => {
            let (first, rest) = split_word(rest);
            if first.is_empty() {
                return Err(format!("'{keyword}' needs a topic filter"));
            }
            let remainder = rest.trim_matches(is_blank);
            let (grant, filter) = if remainder.is_empty() {
                // One word only: it is the filter, with read and write access.
                (Some(Grant::ReadWrite), first)
            } else {
                let grant = match first {
                    "read" => Some(Grant::Read),
                    "write" => Some(Grant::Write),
                    "readwrite" => Some(Grant::ReadWrite),
                    "deny" => None,
                    other => {
                        return Err(format!(
                            "unknown access '{}': expected read, write, readwrite or deny",
                            short(other)
                        ))
                    }
                };
                (grant, remainder)
            };
            check_filter(filter)?;
            let rules = if keyword == "pattern" {
                &mut acl.patterns
            } else {
                match section {
                    Section::Anonymous => &mut acl.anonymous,
                    Section::User(name) => acl.users.entry(name.clone()).or_default(),
                }
            };
            add_rule(rules, grant, filter);
            Ok(())
        }
        "user" => {
            let name = rest.trim_matches(is_blank);
            if name.is_empty() {
                return Err("'user' needs a username".to_string());
            }
            *section = Section::User(name.to_string());
            Ok(())
        }
        other => Err(format!(
            "unknown keyword '{}': a line is 'topic', 'pattern' or 'user', or a comment starting \
             with '#' in the first column",
            short(other)
        )),
    }
}

fn add_rule(rules: &mut Rules, grant: Option<Grant>, filter: &str) {
    match grant {
        Some(grant) => rules.grant.push((filter.to_string(), grant)),
        None => rules.deny.push(filter.to_string()),
    }
}

/// The first space-separated word and what follows the space after it.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches(' ');
    match text.split_once(' ') {
        Some((word, rest)) => (word, rest),
        None => (text, ""),
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A topic filter as Mosquitto's `mosquitto_sub_topic_check` accepts it: `+` and `#` occupy a
/// whole level, `#` only the last one, at most 65,535 bytes and 200 separators. `%c` and `%u`
/// are ordinary characters here.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.len() > MAX_FILTER_LEN {
        return Err("the topic filter is longer than 65,535 bytes".to_string());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    if levels.len() > MAX_FILTER_SEPARATORS + 1 {
        return Err("the topic filter has more than 200 '/' separators".to_string());
    }
    let last = levels.len().saturating_sub(1);
    for (i, level) in levels.iter().enumerate() {
        let misplaced = (level.contains('+') && *level != "+")
            || (level.contains('#') && (*level != "#" || i != last));
        if misplaced {
            return Err(format!(
                "'{}' is not a valid topic filter: '+' and '#' must occupy a whole level, and \
                 '#' must be the last",
                short(filter)
            ));
        }
    }
    Ok(())
}

/// A word for an error message, cut short.
fn short(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text.to_string(),
    }
}
