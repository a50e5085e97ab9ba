//! The modules of this crate depend on each other one way only: the graph of `crate::`
//! paths between top-level modules has no cycle (docs/architecture.md, "Inside
//! `crates/broker`"). This reads the sources, so a new import that closes a cycle fails here,
//! naming the files that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it names, each with the files that name it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn modules_depend_one_way() {
    // Cargo sets it when it runs the test too; read then, another tree can be checked.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let src = dir.join("src");
    let graph = module_graph(&src);
    assert!(
        graph.contains_key("router") && graph.contains_key("http"),
        "the scan found no imports: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let files = &graph[&w[0]][&w[1]];
                format!("{} -> {} ({})", w[0], w[1], join(files))
            })
            .collect();
        panic!(
            "the modules of crates/broker import each other in a cycle: {}; move what both \
             need into the lower one (see docs/architecture.md)",
            steps.join(", ")
        );
    }
}

/// A cycle closed on purpose is found, with its path.
#[test]
fn a_cycle_is_found() {
    fn edge(g: &mut Graph, a: &str, b: &str) {
        g.entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .insert(format!("{a}.rs"));
    }
    let mut g = Graph::new();
    edge(&mut g, "http", "metrics");
    edge(&mut g, "metrics", "router");
    edge(&mut g, "admin", "router");
    assert_eq!(find_cycle(&g), None);
    edge(&mut g, "router", "http");
    let cycle = find_cycle(&g).unwrap_or_default();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
}

#[test]
fn paths_are_read_past_comments_strings_and_braces() {
    let code = r##"
        // use crate::comment;
        /* crate::block /* nested crate::deeper */ */
        let s = "crate::in_a_string"; let r = r#"crate::raw "quoted""#; let b = br"crate::b";
        let c = '"'; fn f<'a>(x: &'a str) {}
        use crate::{alpha::{One, Two}, beta, Reexported};
        let x = crate::gamma::thing();
        let y = super::super::delta::X;
    "##;
    let names = crate_paths(&strip(code), 2);
    assert_eq!(names, ["alpha", "beta", "Reexported", "gamma", "delta"]);
}

fn join(files: &BTreeSet<String>) -> String {
    files.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The graph of `crate::` (and `super::` up to the root) paths between top-level modules.
fn module_graph(src: &Path) -> Graph {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let lib = strip(&lib);
    let modules = top_modules(&lib);
    let reexports = reexports(&lib, &modules);
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let segments: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let Some(top) = segments.first().filter(|t| modules.contains(*t)) else {
            continue;
        };
        // The module's depth below the root: `a/b.rs` and `a/b/mod.rs` are `a::b`.
        let depth = segments.iter().filter(|s| *s != "mod").count();
        let code = strip(&std::fs::read_to_string(&file).unwrap_or_default());
        for name in crate_paths(&code, depth) {
            let target = match reexports.get(&name) {
                Some(m) => m.clone(),
                None => name,
            };
            if modules.contains(&target) && target != *top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `mod name;` lines of lib.rs, public or not.
fn top_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("pub(crate) ")
                .or(l.strip_prefix("pub "))
                .unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// Names lib.rs brings to the root from a module (`pub use counters::{Counters, ...}`), so
/// that `crate::Counters` counts as `counters`.
fn reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in lib.split(';') {
        let s = statement.trim();
        let s = s.strip_prefix("pub ").unwrap_or(s);
        let Some(path) = s.strip_prefix("use ") else {
            continue;
        };
        let Some((module, rest)) = path.trim().split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        for item in rest.trim_matches(['{', '}', ' ']).split(',') {
            let last = item.rsplit("::").next().unwrap_or(item);
            let name = last.rsplit(" as ").next().unwrap_or(last).trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// The first segment after each `crate::` path (every item of a `crate::{...}` group), and
/// after `super::` chains that climb `depth` levels, to the root.
fn crate_paths(code: &str, depth: usize) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !is_ident(chars[i - 1]);
        if boundary && starts_with(&chars, i, "crate::") {
            i += "crate::".len();
            i = path_heads(&chars, i, &mut out);
            continue;
        }
        if boundary && starts_with(&chars, i, "super::") {
            let mut j = i;
            let mut ups = 0;
            while starts_with(&chars, j, "super::") {
                j += "super::".len();
                ups += 1;
            }
            if ups >= depth {
                i = path_heads(&chars, j, &mut out);
            } else {
                i = j;
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Reads an identifier or a `{...}` group at `i`, pushing the first segment of each path;
/// returns where it stopped.
fn path_heads(chars: &[char], mut i: usize, out: &mut Vec<String>) -> usize {
    if chars.get(i) != Some(&'{') {
        let start = i;
        while chars.get(i).is_some_and(|c| is_ident(*c)) {
            i += 1;
        }
        out.push(chars[start..i].iter().collect());
        return i;
    }
    i += 1;
    let mut level = 0;
    let mut item = String::new();
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            '{' => level += 1,
            '}' if level == 0 => break,
            '}' => level -= 1,
            ',' if level == 0 => {
                push_head(&item, out);
                item.clear();
            }
            _ if level == 0 => item.push(c),
            _ => {}
        }
    }
    push_head(&item, out);
    i
}

fn push_head(item: &str, out: &mut Vec<String>) {
    let head: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
    if !head.is_empty() && head != "self" {
        out.push(head);
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn starts_with(chars: &[char], i: usize, s: &str) -> bool {
    s.chars()
        .enumerate()
        .all(|(k, c)| chars.get(i + k) == Some(&c))
}

/// The code without comments, string literals and character literals (each replaced by a
/// space), so that only real paths are left.
fn strip(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if starts_with(&chars, i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if starts_with(&chars, i, "/*") {
            let mut level = 0;
            while i < chars.len() {
                if starts_with(&chars, i, "/*") {
                    level += 1;
                    i += 2;
                } else if starts_with(&chars, i, "*/") {
                    level -= 1;
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && raw_string_may_start(&chars, i)
            && matches!(chars.get(i + 1), Some('"' | '#'))
        {
            // r"..." or r#"..."#: ends at a quote followed by as many #.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while j < chars.len() && !starts_with(&chars, j, &close) {
                j += 1;
            }
            i = j + close.len();
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && chars.get(i + 1) == Some(&'\\') {
            // An escaped character literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push(' ');
        } else {
            // Anything else, a lifetime's quote included.
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether an `r` at `i` may open a raw string: it starts a token, or follows the `b` of `br"`.
fn raw_string_may_start(chars: &[char], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).and_then(|j| chars.get(j)).copied();
    match before(1) {
        None => true,
        Some('b') => !before(2).is_some_and(is_ident),
        Some(c) => !is_ident(c),
    }
}

/// A cycle as the path of modules that makes it (first = last), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}
