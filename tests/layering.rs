//! The top-level modules of `src/` form a layered graph: no import cycles between them.
//!
//! Reads every `.rs` file under `src/` (a file belongs to the module `src/<m>.rs` or
//! `src/<m>/...`), collects each `crate::<m>` path outside comments and outside the unit tests at
//! the bottom of a file (`#[cfg(test)]` then `mod tests`), and fails with the cycle when one
//! module reaches itself again. Unit tests may import any module: they are not part of the
//! layering. `main.rs` and `lib.rs` are the roots and belong to no layer.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module -> the modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to; `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "main" && name != "lib").then(|| name.to_owned())
}

/// The modules named by `crate::<m>` paths in `text`, including grouped imports such as
/// `use crate::{a, b::c};`, skipping comments and the trailing unit tests.
fn imports(text: &str) -> BTreeSet<String> {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `splicegate_crate::x` or `$crate::x` are not paths into this crate.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            // Nested groups (`crate::{a::{b, c}, d}`) only hide deeper segments: the first
            // segment of each item still follows a `{` or a `,` at depth 0.
            let mut depth = 0usize;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            for item in items {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
            rest = &group[end.min(group.len())..];
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => panic!("cannot read {}: {e}", file.display()),
        };
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imports(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle through the graph, as the list of modules along it (first == last), if any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|m| m == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(node, graph, &mut marks, &mut path) {
            return Some(cycle);
        }
    }
    None
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            format!("  {m} -> {}\n", deps.join(", "))
        })
        .collect()
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = graph();
    assert!(
        graph.len() >= 10,
        "expected the crate's top-level modules, found {graph:?}"
    );
    // Shown with `--nocapture`: the layering as it stands.
    eprintln!("{}", render(&graph));
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}\nthe graph:\n{}",
            cycle.join(" -> "),
            render(&graph)
        );
    }
}

#[test]
fn the_cycle_finder_sees_cycles() {
    let mut g = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.to_owned()).or_default().insert(b.to_owned());
    };
    edge(&mut g, "config", "policy");
    edge(&mut g, "policy", "events");
    assert_eq!(find_cycle(&g), None);
    edge(&mut g, "events", "config");
    let cycle = find_cycle(&g);
    assert_eq!(
        cycle,
        Some(vec![
            "config".to_owned(),
            "policy".to_owned(),
            "events".to_owned(),
            "config".to_owned()
        ])
    );
}

#[test]
fn imports_reads_grouped_inline_and_skips_comments_and_tests() {
    let text = "use crate::{auth::{self, Users}, policy};\n\
                // use crate::engine::sys;\n\
                /// [`Config`](crate::config::Config)\n\
                fn f() { crate::relay::parse_address(\"x\"); }\n\
                #[cfg(test)]\n\
                mod tests {\n    use crate::control::x;\n}\n";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["auth", "policy", "relay"]);
}
