//! The layout's rules, checked: no import cycle between the crate's top-level
//! modules, so that the code reads bottom-up (each module uses only modules
//! below it).
//!
//! The graph is read from the source text: every `crate::X` path and every
//! name in a `use crate::{X, Y::..}` group, outside comments and
//! `#[cfg(test)]` modules (tests may reach anywhere). A top-level module is
//! `src/X.rs` or `src/X/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The source without line comments and without `#[cfg(test)] mod x { .. }` blocks.
fn strip(text: &str) -> String {
    let no_comments: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = no_comments.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let brace = after.find('{');
        let semi = after.find(';');
        match (is_mod, brace) {
            (true, Some(b)) if semi.map_or(true, |s| s > b) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level module names a (stripped) source text refers to.
fn references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let after = &text[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The first path segment of every entry at depth 0 of the group.
            let mut depth = 0usize;
            let mut start_of_entry = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start_of_entry = true,
                    c if start_of_entry && (c.is_ascii_alphabetic() || c == '_') => {
                        names.insert(ident(&group[i..]).to_string());
                        start_of_entry = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(after);
            if !name.is_empty() {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The import graph of the crate's top-level modules.
fn module_graph(src: &Path) -> Graph {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable").flatten() {
        let path = entry.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if path.is_dir()
            || (path.extension().is_some_and(|e| e == "rs") && name != "main" && name != "lib")
        {
            modules.insert(name.to_string());
        }
    }
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    for file in files {
        let rel = file.strip_prefix(src).expect("a file below src/");
        let first = rel.iter().next().and_then(|s| s.to_str()).unwrap_or("");
        let owner = first.strip_suffix(".rs").unwrap_or(first).to_string();
        if !modules.contains(&owner) || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source is UTF-8");
        for name in references(&strip(&text)) {
            if name != owner && modules.contains(&name) {
                graph
                    .get_mut(&owner)
                    .expect("owner is a module")
                    .insert(name);
            }
        }
    }
    graph
}

/// Every strongly connected component of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() > 10,
        "found only {} modules in src/",
        graph.len()
    );
    let found = cycles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|component| {
            let edges: Vec<String> = component
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| component.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            format!("{} ({})", component.join(", "), edges.join("; "))
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles between top-level modules:\n{}",
        described.join("\n")
    );
}

#[test]
fn the_reader_sees_paths_groups_and_skips_comments_and_test_modules() {
    let text = "
use crate::model::{Config, HostSpec};
use crate::{store::Store, plan, decode::{self, Order}};
// use crate::commented_out;
fn f() { crate::units::parse(); }
#[cfg(test)]
mod tests { use crate::only_in_tests; }
#[cfg(test)]
use crate::test_import;
";
    let found: Vec<String> = references(&strip(text)).into_iter().collect();
    assert_eq!(
        found,
        ["decode", "model", "plan", "store", "test_import", "units"]
    );
}

#[test]
fn a_cycle_is_found_and_a_chain_is_not() {
    let graph = |edges: &[(&str, &str)]| -> Graph {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    let chain = graph(&[("daemon", "api"), ("api", "gateway"), ("gateway", "store")]);
    assert!(cycles(&chain).is_empty());
    let knot = graph(&[
        ("daemon", "api"),
        ("api", "daemon"),
        ("api", "store"),
        ("x", "y"),
        ("y", "z"),
        ("z", "x"),
    ]);
    assert_eq!(cycles(&knot), [vec!["api", "daemon"], vec!["x", "y", "z"]]);
}
