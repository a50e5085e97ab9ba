//! Mosquitto password files: one `username:hash` per line.
//!
//! The file format, as Mosquitto's broker reads it and as this module does:
//!
//! - one entry per line, `username:hash`; spaces and tabs around the username and the hash
//!   are ignored, and so is a `\r` before the line end;
//! - blank lines and lines starting with `#` are skipped (and kept when the file is rewritten);
//! - the hash is `$6$…`, `$7$…` or `$argon2id$…` (see [`PasswordHash`]).
//!
//! Where Makelaar is stricter than Mosquitto, on purpose: Mosquitto skips a line it cannot
//! read (a line without `:`, an unknown hash, an over-long username) with a log message and
//! starts anyway, so a typo silently locks a user out; here every such line is an error
//! naming the file and the line. A file must be UTF-8 (MQTT usernames are), and a username
//! may appear only once (Mosquitto keeps both and one of them wins).

mod encoding;
mod hash;
mod save;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use hash::{
    argon2_defaults, hash_password, HashError, HashParams, PasswordHash, DEFAULT_PBKDF2_ITERATIONS,
    MAX_ARGON2_ITERATIONS, MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_PARALLELISM, MAX_PASSWORD_LEN,
    MAX_PBKDF2_ITERATIONS,
};

/// Longest username accepted, in bytes: an MQTT username is at most 65,535 bytes.
pub const MAX_USERNAME_LEN: usize = 65_535;

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read the password file {}: {source}", path.display())]
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

/// Why a username cannot go into a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Empty.
    #[error("the username is empty")]
    Empty,
    /// Over [`MAX_USERNAME_LEN`] bytes.
    #[error("the username is longer than 65,535 bytes")]
    TooLong,
    /// Contains `:`, the field separator.
    #[error("the username must not contain ':'")]
    Colon,
    /// Contains a control character (a newline would split the entry).
    #[error("the username must not contain control characters")]
    Control,
    /// Starts with `#` (the line would be a comment) or starts or ends with a space or tab
    /// (readers trim those, so the user could never log in).
    #[error("the username must not start with '#' or start or end with a space or tab")]
    Unreadable,
}

/// Checks that a username can be written to a password file and read back the same.
pub fn validate_username(username: &str) -> Result<(), UsernameError> {
    if username.is_empty() {
        return Err(UsernameError::Empty);
    }
    if username.len() > MAX_USERNAME_LEN {
        return Err(UsernameError::TooLong);
    }
    if username.contains(':') {
        return Err(UsernameError::Colon);
    }
    if username.chars().any(char::is_control) {
        return Err(UsernameError::Control);
    }
    if username.starts_with('#') || username.trim_matches(is_blank) != username {
        return Err(UsernameError::Unreadable);
    }
    Ok(())
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A password file in memory: its entries in file order, comments and blank lines included,
/// so that rewriting it changes only what was changed.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// Username → index into `lines`.
    index: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
enum Line {
    Entry {
        username: String,
        hash: PasswordHash,
    },
    /// A comment or blank line, as it was.
    Verbatim(String),
}

impl PasswordFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, PasswordFileError> {
        let bytes = std::fs::read(path).map_err(|source| PasswordFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses the contents of a password file; `path` names it in errors.
    pub fn parse(contents: &[u8], path: &Path) -> Result<Self, PasswordFileError> {
        let mut file = Self::new();
        for_each_line(contents, path, |_, line| {
            let Some(entry) = content_of(line) else {
                file.lines.push(Line::Verbatim(line.to_string()));
                return Ok(());
            };
            let (username, hash) = split_entry(entry)?;
            let hash = PasswordHash::parse(hash)
                .map_err(|e| format!("the hash of user '{}' is unusable: {e}", short(username)))?;
            if let Some(&first) = file.index.get(username) {
                return Err(format!(
                    "user '{}' already has a password on line {}",
                    short(username),
                    first + 1
                ));
            }
            file.index.insert(username.to_string(), file.lines.len());
            file.lines.push(Line::Entry {
                username: username.to_string(),
                hash,
            });
            Ok(())
        })?;
        Ok(file)
    }

    /// Whether `username` is in the file and `password` is theirs. CPU-heavy for a known user
    /// (see [`PasswordHash::verify`]); an unknown user is refused at once, as by Mosquitto.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.hash_of(username).is_some_and(|h| h.verify(password))
    }

    /// The stored hash of `username`: clone it to verify on another thread.
    pub fn hash_of(&self, username: &str) -> Option<&PasswordHash> {
        match self.lines.get(*self.index.get(username)?) {
            Some(Line::Entry { hash, .. }) => Some(hash),
            _ => None,
        }
    }

    /// Sets the password hash of `username`, in place if they are in the file, else at the
    /// end. Returns whether the user was already there.
    pub fn set(&mut self, username: &str, hash: PasswordHash) -> Result<bool, UsernameError> {
        validate_username(username)?;
        if let Some(&i) = self.index.get(username) {
            if let Some(line) = self.lines.get_mut(i) {
                *line = Line::Entry {
                    username: username.to_string(),
                    hash,
                };
                return Ok(true);
            }
        }
        self.index.insert(username.to_string(), self.lines.len());
        self.lines.push(Line::Entry {
            username: username.to_string(),
            hash,
        });
        Ok(false)
    }

    /// Removes `username`; returns whether they were there.
    pub fn remove(&mut self, username: &str) -> bool {
        let Some(i) = self.index.remove(username) else {
            return false;
        };
        self.lines.remove(i);
        for later in self.index.values_mut().filter(|j| **j > i) {
            *later -= 1;
        }
        true
    }

    /// The usernames, in file order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { username, .. } => Some(username.as_str()),
            Line::Verbatim(_) => None,
        })
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Writes the file to `path`: atomically where it can (a temporary file, then a rename),
    /// keeping an existing file's owner and permissions and following a symbolic link, else
    /// in place. A new file is readable by its owner only.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        save::write(path, self.to_string().as_bytes())
    }
}

impl fmt::Display for PasswordFile {
    /// The file's text, one line each, ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            match line {
                Line::Entry { username, hash } => writeln!(f, "{username}:{hash}")?,
                Line::Verbatim(text) => writeln!(f, "{text}")?,
            }
        }
        Ok(())
    }
}

/// Turns a plain-text `username:password` file into a hashed one, as `mosquitto_passwd -U`
/// does: every password is hashed with `params`, comments and blank lines stay. Spaces and
/// tabs around the username and the password are dropped (as Mosquitto does); everything after
/// the first `:` is the password. A line that already holds a hash is refused rather than
/// hashed again, which would lock its user out. CPU-heavy: one hash per user.
pub fn upgrade_plaintext(
    contents: &[u8],
    path: &Path,
    params: HashParams,
) -> Result<PasswordFile, PasswordFileError> {
    let mut file = PasswordFile::new();
    for_each_line(contents, path, |_, line| {
        let Some(entry) = content_of(line) else {
            file.lines.push(Line::Verbatim(line.to_string()));
            return Ok(());
        };
        let (username, password) = split_entry(entry)?;
        if PasswordHash::parse(password).is_ok() {
            return Err(format!(
                "user '{}' already has a hashed password: -U is for plain-text files only",
                short(username)
            ));
        }
        let hash = hash_password(password.as_bytes(), params).map_err(|e| e.to_string())?;
        match file.set(username, hash) {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("user '{}' appears twice", short(username))),
            Err(e) => Err(e.to_string()),
        }
    })?;
    Ok(file)
}

/// Calls `f` with each line's number and text (without `\r\n`), turning its error into a
/// [`PasswordFileError::Line`].
fn for_each_line(
    contents: &[u8],
    path: &Path,
    mut f: impl FnMut(usize, &str) -> Result<(), String>,
) -> Result<(), PasswordFileError> {
    let error = |line, problem| PasswordFileError::Line {
        path: path.to_path_buf(),
        line,
        problem,
    };
    // A final newline ends the last line rather than starting an empty one.
    let contents = contents.strip_suffix(b"\n").unwrap_or(contents);
    if contents.is_empty() {
        return Ok(());
    }
    for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
        let number = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw)
            .map_err(|_| error(number, "the line is not valid UTF-8".to_string()))?;
        f(number, line).map_err(|problem| error(number, problem))?;
    }
    Ok(())
}

/// The trimmed entry of a line, or `None` for a blank line or a comment.
fn content_of(line: &str) -> Option<&str> {
    let trimmed = line.trim_matches(is_blank);
    (!trimmed.is_empty() && !trimmed.starts_with('#')).then_some(trimmed)
}

/// `username:rest`, both trimmed and checked for length.
fn split_entry(entry: &str) -> Result<(&str, &str), String> {
    let Some((username, rest)) = entry.split_once(':') else {
        return Err("expected username:password, found no ':'".to_string());
    };
    let (username, rest) = (username.trim_matches(is_blank), rest.trim_matches(is_blank));
    if username.is_empty() {
        return Err("the username before ':' is empty".to_string());
    }
    if username.len() > MAX_USERNAME_LEN {
        return Err("the username is longer than 65,535 bytes".to_string());
    }
    if rest.is_empty() {
        return Err(format!("user '{}' has nothing after ':'", short(username)));
    }
    if rest.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the entry of user '{}' is longer than 65,535 bytes",
            short(username)
        ));
    }
    Ok((username, rest))
}

/// A username for an error message: a 60 KiB name does not belong in one.
fn short(username: &str) -> String {
    match username.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", username.get(..cut).unwrap_or_default()),
        None => username.to_string(),
    }
}
