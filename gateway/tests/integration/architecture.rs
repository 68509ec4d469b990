//! The layering ARCHITECTURE.md describes, checked on the sources: inside each crate the
//! top-level modules import each other without a cycle (test modules aside), and the engine
//! depends on no proxy, HTTP server or command-line crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The gateway's crates, by source directory relative to this crate's manifest.
const CRATES: &[&str] = &["engine/src", "proxy/src", "admin/src", "check/src", "src"];

/// Which top-level modules of a crate each top-level module names through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        // `test_support` exists only for tests (`cfg(test)` or the `test-support` feature).
        if ["lib", "bin", "main", "test_support"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for used in crate_paths(production_code(&text)) {
            if used != module {
                deps.insert(used);
            }
        }
    }
    // Only edges between modules of this crate (`crate::` re-exports of other crates are
    // checked in their own crate).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file without its unit-test module (tests may reach anywhere) and without comments.
fn production_code(text: &str) -> String {
    let cut = text
        .match_indices("#[cfg(test)]\n")
        .map(|(at, marker)| at + marker.len())
        .find(|&after| {
            let next = text[after..].lines().next().unwrap_or_default();
            next.starts_with("mod ") || next.contains(" mod ")
        })
        .unwrap_or(text.len());
    text[..cut]
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every `crate::a::…` path and of every name in `crate::{a, b::…}`.
fn crate_paths(code: String) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                if let Some(name) = leading_ident(item.trim()) {
                    out.push(name);
                }
            }
        } else if let Some(name) = leading_ident(rest) {
            out.push(name);
        }
    }
    out
}

fn leading_ident(s: &str) -> Option<String> {
    let ident: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// A cycle in the graph, as the list of modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn modules_of_each_crate_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in CRATES {
        let graph = module_graph(&root.join(dir));
        assert!(!graph.is_empty(), "{dir}: no modules found");
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{dir}: modules import each other in a cycle: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let code = "use crate::b::X;\nuse crate::{c, d::Y};\n// crate::z\n";
    assert_eq!(crate_paths(production_code(code)), ["b", "c", "d"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn the_engine_knows_no_proxy_server_or_cli() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/Cargo.toml");
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let deps = manifest["dependencies"].as_table().unwrap();
    for forbidden in [
        "pingora",
        "hyper",
        "hyper-util",
        "clap",
        "tracing-subscriber",
        "gateway-proxy",
        "gateway-admin",
        "gateway",
    ] {
        assert!(
            !deps.contains_key(forbidden),
            "gateway-engine depends on `{forbidden}`: the engine must stay usable by any front door"
        );
    }
}

#[test]
fn front_doors_know_no_proxy_admin_api_or_cli() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("check/Cargo.toml");
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let deps = manifest["dependencies"].as_table().unwrap();
    for forbidden in [
        "pingora",
        "clap",
        "gateway-proxy",
        "gateway-admin",
        "gateway",
    ] {
        assert!(
            !deps.contains_key(forbidden),
            "gateway-check depends on `{forbidden}`: a front door is an adapter over the engine only"
        );
    }
}
