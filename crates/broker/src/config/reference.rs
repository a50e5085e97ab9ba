//! The configuration reference, generated from the configuration types so that it cannot
//! drift: every key of `makelaar.toml` with its type (from the types, through their JSON
//! schema), its default ([`ConfigFile::defaults`]) and its description (the field's doc
//! comment). `makelaar config reference` prints it as Markdown (docs/config-reference.md),
//! `makelaar config example` as a commented `makelaar.toml` (makelaar.example.toml).
//!
//! A key added to [`ConfigFile`], [`super::ListenerTable`], [`makelaar_core::Limits`] (`[limits]`)
//! or a new table appears here by itself; its doc comment is its documentation.

use serde_json::{Map, Value};

use super::ConfigFile;

/// The command that regenerates docs/config-reference.md.
pub const REFERENCE_COMMAND: &str = "makelaar config reference > docs/config-reference.md";
/// The command that regenerates makelaar.example.toml.
pub const EXAMPLE_COMMAND: &str = "makelaar config example > makelaar.example.toml";

/// One key of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDoc {
    pub name: String,
    /// What the value is, in words: "integer", "list of strings", `"text" or "json"`.
    pub ty: String,
    /// The default as TOML, `None` when the key is not set by default.
    pub default: Option<String>,
    /// The doc comment, paragraphs separated by blank lines, lines joined.
    pub description: String,
    /// Must be given (a table's `url`).
    pub required: bool,
}

/// One table of the file: the top level, `[limits]`, `[[listener]]`, ...
#[derive(Debug, Clone, PartialEq)]
pub struct TableDoc {
    /// The TOML path: "" for the top level, else e.g. "limits" or "listener".
    pub path: String,
    /// Written `[[path]]`: a table that may be repeated.
    pub array: bool,
    pub description: String,
    pub keys: Vec<KeyDoc>,
}

impl TableDoc {
    /// The table's header as written in TOML (`[limits]`, `[[listener]]`), or "top level".
    pub fn header(&self) -> String {
        match (self.path.is_empty(), self.array) {
            (true, _) => "top level".to_string(),
            (false, true) => format!("[[{}]]", self.path),
            (false, false) => format!("[{}]", self.path),
        }
    }
}

/// Every table of `makelaar.toml` with its keys, the top level first.
pub fn tables() -> Vec<TableDoc> {
    let schema = schemars::schema_for!(ConfigFile);
    let root = schema.as_value();
    let defs = root.get("$defs").and_then(Value::as_object);
    let defaults = toml::Value::try_from(ConfigFile::defaults()).ok();
    let mut out = Vec::new();
    walk_table(
        root,
        defs,
        defaults.as_ref(),
        (String::new(), false, String::new()),
        &mut out,
    );
    out
}

/// Adds the table described by `schema` (and the tables under it) to `out`.
fn walk_table(
    schema: &Value,
    defs: Option<&Map<String, Value>>,
    defaults: Option<&toml::Value>,
    (path, array, description): (String, bool, String),
    out: &mut Vec<TableDoc>,
) {
    let empty = Map::new();
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let index = out.len();
    out.push(TableDoc {
        path: path.clone(),
        array,
        description,
        keys: Vec::new(),
    });
    let mut keys = Vec::new();
    for (name, prop) in props {
        let description = text(prop.get("description"));
        let default = defaults.and_then(|d| d.get(name));
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        if let Some(sub) = table_schema(prop, defs) {
            walk_table(sub, defs, default, (sub_path, false, description), out);
            continue;
        }
        if let Some(sub) = prop.get("items").and_then(|i| table_schema(i, defs)) {
            // Documented with the first table of the defaults, if they give one.
            let first = default.and_then(|d| d.as_array()).and_then(|a| a.first());
            walk_table(sub, defs, first, (sub_path, true, description), out);
            continue;
        }
        let required = required.contains(&name.as_str());
        keys.push(KeyDoc {
            name: name.clone(),
            ty: type_name(prop, defs),
            default: default.filter(|_| !required).map(toml::Value::to_string),
            description,
            required,
        });
    }
    if let Some(t) = out.get_mut(index) {
        t.keys = keys;
    }
}

/// The schema of a table (an object with properties), following a `$ref`.
fn table_schema<'a>(schema: &'a Value, defs: Option<&'a Map<String, Value>>) -> Option<&'a Value> {
    let s = resolve(schema, defs);
    s.get("properties").is_some().then_some(s)
}

/// Follows a `$ref` into `$defs`, and an `Option`'s `anyOf: [T, null]` to `T`.
fn resolve<'a>(schema: &'a Value, defs: Option<&'a Map<String, Value>>) -> &'a Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        if let Some(def) = defs.and_then(|d| d.get(name)) {
            return resolve(def, defs);
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let not_null: Vec<&Value> = any.iter().filter(|s| !is_null_type(s)).collect();
        if let [only] = not_null.as_slice() {
            return resolve(only, defs);
        }
    }
    schema
}

fn is_null_type(s: &Value) -> bool {
    s.get("type").and_then(Value::as_str) == Some("null")
}

/// A type in words.
fn type_name(schema: &Value, defs: Option<&Map<String, Value>>) -> String {
    let s = resolve(schema, defs);
    let consts: Vec<String> = match (s.get("enum"), s.get("oneOf")) {
        (Some(Value::Array(values)), _) => values.iter().map(Value::to_string).collect(),
        (_, Some(Value::Array(variants))) => variants
            .iter()
            .filter_map(|v| v.get("const").map(Value::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if !consts.is_empty() {
        return join_or(&consts);
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("any"),
        _ => "any",
    };
    match ty {
        "array" => match s.get("items") {
            Some(items) => format!("list of {}s", type_name(items, defs)),
            None => "list".to_string(),
        },
        "object" => "table".to_string(),
        other => other.to_string(),
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// A doc comment as prose: lines of a paragraph joined, paragraphs separated by a blank line.
fn text(description: Option<&Value>) -> String {
    let raw = description.and_then(Value::as_str).unwrap_or("");
    raw.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// docs/config-reference.md: every table and key, as Markdown.
pub fn reference_markdown() -> String {
    let mut md = String::new();
    md.push_str("# makelaar.toml reference\n\n");
    md.push_str(&format!(
        "<!-- Generated from the configuration types by `{REFERENCE_COMMAND}`; do not edit: \
         change the doc comments in crates/broker/src/config and regenerate. -->\n\n"
    ));
    md.push_str(
        "Every key of the file given to `makelaar serve --config FILE`. Every key is optional; \
         a key left out has the default shown (\"not set\": no value, see its description). \
         Unknown keys are errors. Relative paths are relative to the file's directory. Flags \
         of `makelaar serve` override the file; see [configuration.md](configuration.md) for \
         the flags and a guide, and `makelaar config example` (makelaar.example.toml) for a \
         commented file with every key.\n",
    );
    for table in tables() {
        md.push_str(&format!("\n## {}\n\n", code_header(&table)));
        if !table.description.is_empty() {
            md.push_str(&table.description);
            md.push_str("\n\n");
        }
        md.push_str("| Key | Type | Default | Description |\n|---|---|---|---|\n");
        for k in &table.keys {
            let default = match (&k.default, k.required) {
                (_, true) => "required".to_string(),
                (Some(d), false) => format!("`{d}`"),
                (None, false) => "not set".to_string(),
            };
            md.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.name,
                cell(&k.ty),
                cell(&default),
                cell(&k.description)
            ));
        }
    }
    md
}

fn code_header(t: &TableDoc) -> String {
    if t.path.is_empty() {
        "Top level".to_string()
    } else {
        format!("`{}`", t.header())
    }
}

/// Text for a Markdown table cell: one line, `|` escaped.
fn cell(s: &str) -> String {
    s.replace("\n\n", "<br><br>")
        .replace('\n', " ")
        .replace('|', "\\|")
}

/// makelaar.example.toml: every key with its description, at its default, commented out.
pub fn example_toml() -> String {
    let mut out = String::new();
    for line in [
        "# makelaar.example.toml: every key of makelaar.toml, at its default, commented out.",
        &format!("# Generated by `{EXAMPLE_COMMAND}`; do not edit."),
        "# Copy it to makelaar.toml and uncomment what you change. Flags on the command line",
        "# override the file. Relative paths are taken relative to the directory of the file.",
        "# Reference: docs/config-reference.md; guide: docs/configuration.md.",
    ] {
        out.push_str(line);
        out.push('\n');
    }
    let tables = tables();
    let repeated: Vec<&str> = tables
        .iter()
        .filter(|t| t.array)
        .map(|t| t.path.as_str())
        .collect();
    for table in &tables {
        if !table.path.is_empty() {
            out.push('\n');
            comment_block(&mut out, &table.description);
            let header = table.header();
            // A repeated table needs keys of its own (its url), and so does a table inside
            // one ([bridge.tls] belongs to a [[bridge]]): left commented out.
            let inside_repeated = repeated
                .iter()
                .any(|r| table.path.starts_with(&format!("{r}.")));
            match table.array || inside_repeated {
                true => out.push_str(&format!("# {header}\n")),
                false => out.push_str(&format!("{header}\n")),
            }
        }
        for k in &table.keys {
            out.push('\n');
            comment_block(&mut out, &k.description);
            let value = match &k.default {
                Some(d) => d.clone(),
                None => format!("<{}>", k.ty.replace('"', "")),
            };
            out.push_str(&format!("# {} = {value}\n", k.name));
        }
    }
    out
}

/// Writes `text` as `# ` comment lines of at most 96 characters.
fn comment_block(out: &mut String, text: &str) {
    for (i, paragraph) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str("#\n");
        }
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() + 1 + word.len() > 96 && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        if line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
        }
    }
}

#[cfg(test)]
#[path = "reference_tests.rs"]
mod tests;
