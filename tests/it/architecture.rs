//! The house rules of `docs/architecture.md`, checked against the sources.
//!
//! Each file under `src/` belongs to its top-level module (`src/dispatch/failover.rs`
//! is `dispatch`). Its non-test code is read for `crate::module` paths and for
//! the external crates it names; every rule below is a fact about those sets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module -> (crate modules it imports, external crates it names, its text).
type Map = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>, String)>;

const EXTERNAL: &[&str] = &[
    "reqwest",
    "rusqlite",
    "rmcp",
    "clap",
    "anyhow",
    "axum",
    "tokio_postgres",
    "tokio",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its test modules (they sit at the end).
fn non_test(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines
        .windows(2)
        .position(|w| {
            w[0].trim() == "#[cfg(test)]"
                && (w[1].trim_start().starts_with("mod ")
                    || w[1].trim_start().starts_with("pub(crate) mod "))
        })
        .unwrap_or(lines.len());
    lines[..cut]
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

fn modules() -> Map {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let path_re = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    let group_re = regex::Regex::new(r"use crate::\{([^}]*)\}").unwrap();
    let ext_re = regex::Regex::new(r"\b([a-z_]+)::").unwrap();
    let mut map = Map::new();
    for f in files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let rel = f.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = non_test(&std::fs::read_to_string(&f).unwrap());
        let entry = map.entry(module.clone()).or_default();
        for c in path_re.captures_iter(&text) {
            entry.0.insert(c[1].to_owned());
        }
        for c in group_re.captures_iter(&text) {
            for item in c[1].split(',') {
                let head = item.trim().split("::").next().unwrap_or("").trim();
                if !head.is_empty() && head != "self" {
                    entry.0.insert(head.to_owned());
                }
            }
        }
        for c in ext_re.captures_iter(&text) {
            if EXTERNAL.contains(&&c[1]) {
                entry.1.insert(c[1].to_owned());
            }
        }
        entry.2.push_str(&text);
        entry.0.remove(&module);
    }
    map
}

fn imports<'m>(map: &'m Map, module: &str) -> &'m BTreeSet<String> {
    &map.get(module)
        .unwrap_or_else(|| panic!("no module {module}"))
        .0
}

/// Every module's imports stay inside what its layer may use.
#[test]
fn modules_import_only_what_their_layer_allows() {
    let map = modules();
    let rules: &[(&str, &[&str])] = &[
        // The bottom: nothing of the crate (system errors in words aside).
        ("words", &[]),
        ("readonly", &[]),
        ("config", &["words"]),
        ("gate", &[]),
        // The pure core.
        ("quota", &["config"]),
        // Policy: plain data in, decisions out.
        ("router", &["config", "quota"]),
        ("budget", &["config", "quota"]),
        ("checks", &[]),
        // IO: the network, the ledger, the decision log. Only the core's vocabulary.
        ("upstream", &["config", "quota", "words"]),
        ("store", &["config", "quota", "words", "readonly"]),
        ("decisions", &["config", "quota", "words", "readonly"]),
        ("workspace", &["config", "words"]),
    ];
    let mut broken = Vec::new();
    for (module, allowed) in rules {
        for used in imports(&map, module) {
            if !allowed.contains(&used.as_str()) {
                broken.push(format!("{module} imports {used}"));
            }
        }
    }
    // Only dispatch combines policy with IO; no lower layer reaches up to it,
    // and it never reaches up to a face.
    for module in [
        "config",
        "gate",
        "quota",
        "router",
        "budget",
        "upstream",
        "store",
        "decisions",
    ] {
        if imports(&map, module).contains("dispatch") {
            broken.push(format!("{module} imports dispatch"));
        }
    }
    for face in ["mcp", "cli", "status", "serve"] {
        if imports(&map, "dispatch").contains(face) {
            broken.push(format!("dispatch imports the face {face}"));
        }
    }
    // Faces reach the ledger, the network and the project's files only through dispatch.
    for face in ["mcp", "cli", "serve"] {
        if let Some((used, _, _)) = map.get(face) {
            for io in ["store", "upstream", "workspace"] {
                if used.contains(io) {
                    broken.push(format!("the face {face} imports {io}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// Each outside system is known to one module only.
#[test]
fn each_outside_system_has_one_owner() {
    let map = modules();
    let owners: &[(&str, &[&str])] = &[
        ("reqwest", &["upstream"]),
        ("rusqlite", &["store", "decisions", "readonly"]),
        ("tokio_postgres", &["store"]),
        ("rmcp", &["mcp", "serve"]),
        ("axum", &["serve"]),
        ("clap", &["cli", "main"]),
        ("anyhow", &["cli", "main"]),
    ];
    let mut broken = Vec::new();
    for (module, (_, external, _)) in &map {
        for (krate, allowed) in owners {
            if external.contains(*krate)
                && !allowed.contains(&module.as_str())
                && module != "testing"
            {
                broken.push(format!("{module} uses {krate}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The pure modules do no IO and read no clock: time and data are arguments.
#[test]
fn pure_modules_touch_no_io_and_no_clock() {
    let map = modules();
    let impure = [
        "std::fs",
        "fs_err",
        "tokio",
        "std::net",
        "std::process",
        "Utc::now",
        "SystemTime",
        "Instant::now",
        "std::env",
    ];
    let mut broken = Vec::new();
    for module in ["quota", "router", "gate", "checks"] {
        let text = &map[module].2;
        for token in impure {
            if text.contains(token) {
                broken.push(format!("{module} uses {token}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The rules are checked against something: a violation is seen.
#[test]
fn the_checker_sees_a_violation() {
    let text = "use crate::{store::Store, quota};\nfn f() { crate::upstream::call(); reqwest::get(); }\n#[cfg(test)]\nmod tests { use crate::dispatch; }\n";
    let cut = non_test(text);
    assert!(cut.contains("crate::upstream") && !cut.contains("crate::dispatch"));
}
