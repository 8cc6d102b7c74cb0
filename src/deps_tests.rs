//! Dependencies run one way: a module uses only the layers before its own (and itself), so
//! the folder list reads as the pipeline and an event can be followed without doubling back.
//! This reads every `crate::` path in `src/` (code, not comments) and fails on one that
//! points to a later layer, naming the file and the path.

use std::collections::BTreeSet;
use std::path::Path;

/// The layers, in order. Shared modules come first; a stage may use them and the stages
/// before it. `config` and `agent` sit on top and wire everything.
const LAYERS: &[&[&str]] = &[
    &["text", "clock", "lru", "metrics", "diag", "heap", "hashing"],
    &["capture"],
    &["scope", "model", "tls", "redact", "state"],
    &["process"],
    &["enrich"],
    &["attribute"],
    &["spans"],
    &["rules"],
    &["export"],
    &["config"],
    &["agent"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The code of a file without its comments (line comments, doc comments, block comments).
fn code(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let (b, mut i, mut in_str) = (src.as_bytes(), 0, false);
    while i < b.len() {
        if in_str {
            if b[i] == b'\\' {
                out.push_str(&src[i..i + 2.min(b.len() - i)]);
                i += 2;
                continue;
            }
            in_str = b[i] != b'"';
        } else if src[i..].starts_with("r#\"") && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            // a raw string: its quotes and slashes are text
            let end = src[i + 3..].find("\"#").map_or(b.len(), |e| i + 3 + e + 2);
            i = end;
            continue;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            in_str = true;
        } else if src[i..].starts_with("//") {
            i += src[i..].find('\n').unwrap_or(b.len() - i);
            continue;
        } else if src[i..].starts_with("/*") {
            i += src[i..].find("*/").map_or(b.len() - i, |e| e + 2);
            continue;
        }
        let c = src[i..].chars().next().expect("inside the string");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The top-level modules named by `crate::` paths, including every branch of a
/// `crate::{a::b, c}` group.
fn crate_deps(code: &str) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && !c.is_whitespace() => {
                        start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() && name != "self" {
                            deps.insert(name);
                        }
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                deps.insert(name);
            }
        }
    }
    deps
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src/ is readable") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_before_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src/");
        let top = rel.components().next().expect("a path").as_os_str().to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        // the crate roots and this test are not layers
        if ["lib", "main", "deps_tests", "cli"].contains(&module.as_str()) {
            continue;
        }
        let Some(own) = layer(&module) else {
            wrong.push(format!("{}: module `{module}` is in no layer of LAYERS", rel.display()));
            continue;
        };
        checked += 1;
        for dep in crate_deps(&code(&std::fs::read_to_string(f).expect("readable"))) {
            match layer(&dep) {
                Some(l) if l <= own => {}
                Some(_) => wrong.push(format!("{}: uses crate::{dep}, a later layer", rel.display())),
                None => wrong.push(format!("{}: uses crate::{dep}, which is in no layer", rel.display())),
            }
        }
    }
    assert!(checked > 50, "only {checked} files checked: is src/ where this test thinks?");
    assert!(wrong.is_empty(), "dependencies that run backwards:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_grouped_paths_and_skips_comments() {
    let src = "use crate::{\n    a::b,\n    c::{d, e},\n    f,\n};\n// crate::g\n/// [`crate::h`]\nlet u = \"https://x\"; crate::i::j();";
    let deps: Vec<String> = crate_deps(&code(src)).into_iter().collect();
    assert_eq!(deps, ["a", "c", "f", "i"]);
    // and a backward path is caught: `process` may not use `spans`
    let own = layer("process").unwrap();
    assert!(crate_deps("use crate::spans::keys;").iter().any(|d| layer(d).unwrap() > own));
}
