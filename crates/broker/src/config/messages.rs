//! Error messages about the configuration file: TOML errors turned into one sentence naming
//! the place and the fix, with a guess for a mistyped key.

/// The `io::Error` text without the trailing " (os error N)".
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s.get(..i).unwrap_or(&s).to_string(),
        _ => s,
    }
}

/// Where in the file an error points: line and column (1-based), the `[table]` it is in and
/// the key on that line, when they can be found.
struct Position {
    line: usize,
    column: usize,
    table: Option<String>,
    key: Option<String>,
}

fn position(src: &str, offset: usize) -> Position {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    let line_text = src
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let table = before.lines().rev().find_map(|l| {
        let t = l.trim();
        let inner = t.strip_prefix('[')?;
        let end = inner.find(']')?;
        Some(inner.get(..end)?.trim_matches(['[', ']', ' ']).to_string())
    });
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    Position {
        line,
        column,
        table,
        key,
    }
}

pub(crate) fn describe_toml_error(err: &toml::de::Error, src: &str, source_name: &str) -> String {
    let msg = err.message().trim();
    let pos = err.span().map(|s| position(src, s.start));
    let prefix = match &pos {
        Some(p) => format!("{source_name}:{}:{}", p.line, p.column),
        None => source_name.to_string(),
    };
    let table = pos.as_ref().and_then(|p| p.table.clone());
    let key_path = |key: &str| match &table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    };
    let value_key = pos.as_ref().and_then(|p| p.key.clone());

    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, known) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = known
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|k| !k.is_empty())
            .collect();
        // Which struct rejected the key tells the table, more reliably than the text above it.
        let place = if known.contains(&"max_packet_size") {
            "in [limits]".to_string()
        } else if known.contains(&"listen") {
            "at the top level".to_string()
        } else {
            match &table {
                Some(t) => format!("in [{t}]"),
                None => "at the top level".to_string(),
            }
        };
        return match closest(name, &known) {
            Some(guess) => format!(
                "{prefix}: unknown key \"{name}\" {place}; did you mean \"{guess}\"? (every key \
                 is listed in docs/config-reference.md)"
            ),
            None => format!(
                "{prefix}: unknown key \"{name}\" {place}; the known keys are {} (see \
                 docs/config-reference.md)",
                known.join(", ")
            ),
        };
    }

    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let what = match &value_key {
            Some(k) => key_path(k),
            None => "this value".to_string(),
        };
        return format!(
            "{prefix}: {what} must be {}, not {}",
            describe_expected(expected),
            found.replace('`', "")
        );
    }

    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another value"));
        let value = found
            .split('`')
            .nth(1)
            .map_or_else(|| found.to_string(), str::to_string);
        let what = match &value_key {
            Some(k) => format!("{} = {value}", key_path(k)),
            None => value,
        };
        return format!(
            "{prefix}: {what} is out of range; use {}",
            describe_expected(expected)
        );
    }

    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("{prefix}: the key \"{name}\" is missing; add it");
    }

    // A TOML syntax error; its text may span several lines.
    let text: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!(
        "{prefix}: this is not valid TOML ({}); see makelaar.example.toml for the syntax",
        text.join("; ")
    )
}

/// serde's name for a type → words a user understands.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" => format!("a whole number from 0 to {}", u8::MAX),
        "u16" => format!("a whole number from 0 to {}", u16::MAX),
        "u32" => format!("a whole number from 0 to {}", u32::MAX),
        "u64" | "usize" => format!("a whole number from 0 to {}", i64::MAX),
        "i64" => "a whole number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" => "a string in quotes".to_string(),
        "a sequence" => "a list".to_string(),
        other => other.to_string(),
    }
}

/// The known key closest to `name`, if it is close enough to be a likely typo.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let best = known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .min_by_key(|(d, _)| *d)?;
    let allowed = (name.chars().count() / 3).clamp(1, 4);
    if best.0 <= allowed {
        return Some(best.1);
    }
    // A key with a word left off or added, e.g. "max_packets" for "max_packet_size".
    let stem = name.trim_end_matches('s');
    if stem.len() >= 6 {
        return known
            .iter()
            .copied()
            .find(|k| k.starts_with(stem) || stem.starts_with(*k));
    }
    None
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let subst = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(subst.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("max_packets", "max_packet_size"), 4);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(closest("lisen", &["listen", "cert"]), Some("listen"));
    }
}
