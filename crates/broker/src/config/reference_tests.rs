use std::path::PathBuf;

use super::*;
use crate::config::Config;

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// The committed file must be what the generator prints now.
fn assert_committed(relative: &str, generated: &str, command: &str) {
    let path = repo_file(relative);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{relative} is not what the configuration types say (first difference at line \
             {line}); regenerate it from the repository root with:\n    cargo run -p makelaar \
             -- {}\nand commit it.",
            command.trim_start_matches("makelaar ")
        );
    }
}

#[test]
fn committed_reference_is_current() {
    assert_committed(
        "docs/config-reference.md",
        &reference_markdown(),
        REFERENCE_COMMAND,
    );
}

#[test]
fn committed_example_is_current() {
    assert_committed("makelaar.example.toml", &example_toml(), EXAMPLE_COMMAND);
}

/// Every key says what it is for: a new key without a doc comment fails here.
#[test]
fn every_key_is_documented() {
    for table in tables() {
        assert!(
            !table.description.is_empty() || table.path.is_empty(),
            "the table {} has no doc comment on its field",
            table.header()
        );
        for k in &table.keys {
            assert!(
                !k.description.is_empty(),
                "key \"{}\" in the {} has no doc comment; write one for users (it is the \
                 configuration reference)",
                k.name,
                table.header()
            );
            assert!(
                !k.ty.is_empty() && k.ty != "any",
                "{}: type {}",
                k.name,
                k.ty
            );
        }
    }
}

#[test]
fn tables_and_keys_are_found() {
    let tables = tables();
    let headers: Vec<String> = tables.iter().map(TableDoc::header).collect();
    assert_eq!(
        headers,
        [
            "top level",
            "[[listener]]",
            "[limits]",
            "[dashboard]",
            "[[bridge]]",
            "[[bridge.topic]]",
            "[bridge.tls]",
            "[bridge.queue]",
            "[bridge.loop_guard]",
            "[cluster]"
        ]
    );
    let top = &tables[0];
    let key = |name: &str| top.keys.iter().find(|k| k.name == name).unwrap();
    assert_eq!(key("listen").ty, "list of strings");
    assert_eq!(
        key("listen").default.as_deref(),
        Some("[\"mqtt://127.0.0.1:1883\"]")
    );
    assert_eq!(key("sys_interval").ty, "integer");
    assert_eq!(key("sys_interval").default.as_deref(), Some("10"));
    assert_eq!(key("cert").default, None);
    assert_eq!(key("log_format").ty, "\"text\" or \"json\"");
    assert_eq!(key("log_format").default.as_deref(), Some("\"text\""));
    let listener = &tables[1];
    assert!(listener.array);
    assert!(listener.keys.iter().any(|k| k.name == "url" && k.required));
    let limits = &tables[2];
    let max_qos = limits.keys.iter().find(|k| k.name == "max_qos").unwrap();
    assert_eq!(max_qos.default.as_deref(), Some("2"));
}

/// Uncommenting every key of the example that has a default (outside the repeated tables,
/// and but for `batch_max_delay_ms`, which only goes with "batch") changes nothing.
#[test]
fn example_uncommented_gives_the_defaults() {
    let mut text = String::new();
    let mut in_repeated = false;
    let mut uncommented = 0;
    for line in example_toml().lines() {
        if line.starts_with("# [[") {
            in_repeated = true;
        } else if line.starts_with('[') {
            in_repeated = false;
        }
        let key_line = line
            .strip_prefix("# ")
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, v)| is_key(k) && !v.starts_with('<'))
            })
            .filter(|l| !l.starts_with("batch_max_delay_ms "));
        match key_line {
            Some(l) if !in_repeated => {
                text.push_str(l);
                uncommented += 1;
            }
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    assert!(uncommented > 30, "only {uncommented} keys found:\n{text}");
    assert_eq!(
        Config::from_toml_str(&text, "example").unwrap(),
        Config::default(),
        "{text}"
    );
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn comments_are_wrapped() {
    let mut out = String::new();
    comment_block(&mut out, &"word ".repeat(50));
    assert!(out.lines().count() > 1);
    assert!(out.lines().all(|l| l.len() <= 96 && l.starts_with("# ")));
}
