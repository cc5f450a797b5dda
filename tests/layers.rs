//! The import layers of `src/` (docs/architecture.md, issue #12): no circle among its top-level
//! modules (a folder or a file directly under `src/`; `src/bin/` and `lib.rs` aside), counting
//! every `crate::<module>` path outside `#[cfg(test)] mod tests` blocks, `use crate::{a, b}`
//! groups included. A new circle fails here with the modules and the files that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// module -> (imported module -> files that import it)
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to; `None` for `src/bin/` and `lib.rs`.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    let nested = parts.next().is_some();
    match (first.as_str(), nested) {
        ("bin", _) | ("lib.rs", false) => None,
        (_, true) => Some(first),
        (_, false) => Some(first.trim_end_matches(".rs").to_string()),
    }
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The modules a file's text names as `crate::x` or inside `crate::{x, y::z}`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name = ident_at(item.trim_start());
                if !name.is_empty() {
                    out.insert(name.to_string());
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let Some(module) = module_of(rel) else { continue };
        let text = std::fs::read_to_string(&f).unwrap();
        // An inline `#[cfg(test)] mod tests { .. }` block (at the end of a file) is left out;
        // `#[cfg(test)] mod tests;` declares a file and must not cut the rest of this one.
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
        for target in imports(code) {
            if target != module {
                g.entry(module.clone()).or_default().entry(target).or_default().insert(rel.display().to_string());
            }
        }
    }
    g
}

/// A cycle of `g`, as the list of modules on it in import order; `None` when there is none.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(g: &Graph, m: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            return Some(path[at..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in g.get(m).map(|e| e.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if let Some(c) = visit(g, &next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(g, m, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn src_modules_import_each_other_in_one_direction() {
    let g = graph();
    assert!(g.len() > 10, "read too few modules under src/: {:?}", g.keys().collect::<Vec<_>>());
    if let Some(cycle) = find_cycle(&g) {
        let mut why = String::new();
        for (i, a) in cycle.iter().enumerate() {
            let b = &cycle[(i + 1) % cycle.len()];
            why.push_str(&format!("\n  {a} -> {b}: {:?}", g[a][b]));
        }
        panic!("import circle among src/ modules:{why}\n(docs/architecture.md lists the layers)");
    }
}

#[test]
fn the_checker_sees_a_circle() {
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into()).or_default().entry(b.into()).or_default().insert(format!("{a}.rs"));
    }
    assert_eq!(find_cycle(&g), Some(vec!["a".to_string(), "b".into(), "c".into()]));
    g.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&g), None);
    assert_eq!(imports("use crate::{x::Y, z};\nlet q = crate::w::f();"), ["w", "x", "z"].map(String::from).into());
    assert_eq!(module_of(Path::new("records/mod.rs")).as_deref(), Some("records"));
    assert_eq!(module_of(Path::new("util.rs")).as_deref(), Some("util"));
    assert_eq!(module_of(Path::new("bin/berth.rs")), None);
}
