//! Reading `mosquitto.conf` into directives: one per line, with the file and line they came
//! from, `include_dir` followed as Mosquitto does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{io_reason, ConfigError};

/// Where a directive was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    pub file: Arc<Path>,
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One line: the directive's name and the rest of the line.
#[derive(Debug, Clone)]
pub(super) struct Directive {
    pub name: String,
    /// Everything after the name, trimmed (paths may contain spaces).
    pub value: String,
    pub place: Place,
}

impl Directive {
    /// The error for this line: `FILE:LINE: directive "NAME" PROBLEM; FIX`.
    pub fn error(&self, problem_and_fix: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid(format!(
            "{}: \"{}\" {problem_and_fix}",
            self.place, self.name
        ))
    }

    /// The value's words (separated by spaces or tabs).
    pub fn words(&self) -> Vec<&str> {
        self.value
            .split([' ', '\t'])
            .filter(|w| !w.is_empty())
            .collect()
    }
}

/// Reads the file at `path`, then the `*.conf` files of its `include_dir` directories in the
/// order Mosquitto reads them (byte order of their names, so capitals first). `include_dir`
/// is honoured in the main file only, as by Mosquitto.
pub(super) fn read_all(path: &Path) -> Result<Vec<Directive>, ConfigError> {
    let mut out = read_file(path)?;
    let includes: Vec<Directive> = out
        .iter()
        .filter(|d| d.name == "include_dir")
        .cloned()
        .collect();
    for inc in includes {
        if inc.value.is_empty() {
            return Err(inc.error("needs a directory; give the directory of the extra files"));
        }
        let dir = resolve(&inc.place.file, Path::new(&inc.value));
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            inc.error(format_args!(
                "names {}, which cannot be read ({}); fix the path or remove the line",
                dir.display(),
                io_reason(&e)
            ))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let more = read_file(&file)?;
            if let Some(nested) = more.iter().find(|d| d.name == "include_dir") {
                return Err(nested.error(
                    "is only read from the main configuration file (as by Mosquitto); move it \
                     there",
                ));
            }
            out.extend(more);
        }
    }
    Ok(out)
}

/// A path in a configuration file: relative ones are taken relative to the file's directory
/// (Mosquitto takes them relative to its working directory; where it was started from is
/// unknown here, and the file's directory is what `makelaar.toml` does).
pub(super) fn resolve(file: &Path, value: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if value.is_relative() && !dir.as_os_str().is_empty() => dir.join(value),
        _ => value.to_path_buf(),
    }
}

fn read_file(path: &Path) -> Result<Vec<Directive>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::Read(format!(
            "cannot read the Mosquitto configuration \"{}\": {}; check the path given to \
             --mosquitto-conf",
            path.display(),
            io_reason(&e)
        ))
    })?;
    let file: Arc<Path> = Arc::from(path);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let place = Place {
            file: file.clone(),
            line: i + 1,
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err(ConfigError::Invalid(format!(
                "{place}: the line is not valid UTF-8; write the file in UTF-8"
            )));
        };
        let text = text.trim_matches([' ', '\t', '\r']);
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let (name, value) = match text.split_once([' ', '\t']) {
            Some((n, v)) => (n, v.trim_matches([' ', '\t'])),
            None => (text, ""),
        };
        out.push(Directive {
            name: name.to_string(),
            value: value.to_string(),
            place,
        });
    }
    Ok(out)
}
