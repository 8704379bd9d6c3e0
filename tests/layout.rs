//! The code's shape, checked so that it stays: the layers (ingest, speed, batch, serving)
//! meet only in `model` and `connectors`, and within each crate no file imports another in a
//! circle. A circle is followed through `crate::` paths, each taken to the file that defines
//! its deepest module (`crate::query::parse::X` is `query/parse.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 8] = [
    ".",
    "model",
    "connectors",
    "ingest",
    "speed-layer",
    "batch-layer",
    "serving",
    "bench",
];

/// The `tally-*` crates a manifest's `[dependencies]` name (not its dev-dependencies).
fn tally_dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = workspace().join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut in_dependencies = false;
    let mut found = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
        } else if in_dependencies && line.starts_with("tally-") {
            let name = line.split(['.', ' ', '=']).next().unwrap();
            found.insert(name.to_owned());
        }
    }
    found
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_layers_meet_only_in_model_and_connectors() {
    let shared = BTreeSet::from(["tally-model".to_owned(), "tally-connectors".to_owned()]);
    for layer in ["ingest", "speed-layer", "batch-layer", "serving"] {
        let extra: Vec<_> = tally_dependencies(layer)
            .difference(&shared)
            .cloned()
            .collect();
        assert!(
            extra.is_empty(),
            "{layer} depends on {extra:?}: layers meet only in model and connectors"
        );
    }
    assert_eq!(tally_dependencies("model"), BTreeSet::new());
    assert_eq!(
        tally_dependencies("connectors"),
        BTreeSet::from(["tally-model".to_owned()])
    );
}

/// Each `.rs` file below `src`, by its module path (`query/parse`, `search/mod`), with its text
/// stripped of line comments.
fn sources(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = path.strip_prefix(src).unwrap().with_extension("");
                let text = std::fs::read_to_string(&path).unwrap();
                let code: Vec<&str> = text
                    .lines()
                    .map(|line| line.split("//").next().unwrap())
                    .collect();
                out.insert(module.to_string_lossy().into_owned(), code.join("\n"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The file a `crate::` path names: its deepest module that has a file.
fn file_of<'a>(path: &str, files: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let mut deepest = None;
    let mut module = String::new();
    for segment in path.split("::").map(str::trim) {
        if !module.is_empty() {
            module.push('/');
        }
        module.push_str(segment);
        let found = [module.clone(), format!("{module}/mod")]
            .into_iter()
            .find_map(|name| files.get_key_value(&name).map(|(name, _)| name.as_str()));
        match found {
            Some(file) => deepest = Some(file),
            None => break,
        }
    }
    deepest
}

/// The files each file imports through `crate::` paths, groups (`crate::{a, b::c}`) included.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut graph = BTreeMap::new();
    for (module, code) in files {
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let paths: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(|item| item.split("::{").next().unwrap())
                    .collect(),
                None => vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .next()
                        .unwrap(),
                ],
            };
            for path in paths {
                if let Some(file) = file_of(path.trim_end_matches(':'), files)
                    && file != module
                {
                    named.insert(file);
                }
            }
        }
        graph.insert(module.as_str(), named);
    }
    graph
}

/// A circle of files through `graph`, if any.
fn circle<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        file: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(start) = path.iter().position(|on| *on == file) {
            return Some(path[start..].iter().chain([&file]).copied().collect());
        }
        if !done.insert(file) {
            return None;
        }
        path.push(file);
        for next in &graph[file] {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|file| visit(file, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_imports_another_in_a_circle() {
    for krate in CRATES {
        let files = sources(&workspace().join(krate).join("src"));
        assert!(files.len() > 1, "{krate}: no sources read");
        if let Some(found) = circle(&imports(&files)) {
            panic!("{krate}/src imports in a circle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let files: BTreeMap<String, String> = [
        ("a".to_owned(), "use crate::b::Thing;".to_owned()),
        ("b/mod".to_owned(), "use crate::{c::other, d};".to_owned()),
        ("c".to_owned(), "fn f() { crate::a::g() }".to_owned()),
        ("d".to_owned(), String::new()),
    ]
    .into();
    assert_eq!(circle(&imports(&files)), Some(vec!["a", "b/mod", "c", "a"]));
    let broken: BTreeMap<String, String> = files
        .into_iter()
        .map(|(name, code)| (name.clone(), if name == "c" { String::new() } else { code }))
        .collect();
    assert_eq!(circle(&imports(&broken)), None);
}
