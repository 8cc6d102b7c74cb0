//! Span trees as text, and the one golden comparison every golden test goes through.
//!
//! [`render`] prints names, kinds, status and attributes (sorted; ids and times left out),
//! children under their parent ordered by start time then name. The session-wide attributes
//! (identity, pod, container, audit id: podtrail repeats them on every span, because Jaeger
//! and TraceQL match one span at a time) are printed once, in the trace's header, taken from
//! the root. Each span is still checked against that header: a span whose copy differs or is
//! missing gets a `!` line saying how, so the golden comparison fails on it.
//!
//! [`check`] compares with tests/golden/NAME.txt (`UPDATE_GOLDEN=1` rewrites the file: read
//! the diff before committing it); [`compare`] is its comparison, naming the first line that
//! differs.

use std::collections::BTreeMap;

use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;

/// Session-wide keys besides `k8s.*` (the pod's and the cluster's, all session-wide).
const SESSION_WIDE: &[&str] = &[
    "container.id",
    "container.image.name",
    "container.image.id",
    "container.image.tags",
    "client.address",
    "user.name",
    "user.id",
    "podtrail.k8s.audit_id",
    "podtrail.k8s.impersonated.name",
    "podtrail.attribution.source",
    "podtrail.attribution.confidence",
    "podtrail.session.kind",
    "podtrail.node.user",
];

/// Whether podtrail puts `key` on every span of a session.
pub fn is_session_wide(key: &str) -> bool {
    key.starts_with("k8s.") || SESSION_WIDE.contains(&key)
}

fn value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.as_str()),
        Value::Array(a) => format!("{a}"),
        other => other.to_string(),
    }
}

/// The span's attributes as sorted (key, value text).
fn attributes(s: &SpanData) -> Vec<(String, String)> {
    let mut attrs: Vec<(String, String)> =
        s.attributes.iter().map(|kv| (kv.key.to_string(), value(&kv.value))).collect();
    attrs.sort();
    attrs
}

/// The span tree as text, each trace headed by its session-wide attributes.
pub fn render(spans: &[SpanData]) -> String {
    let mut children: BTreeMap<[u8; 8], Vec<&SpanData>> = BTreeMap::new();
    for s in spans {
        children.entry(s.parent_span_id.to_bytes()).or_default().push(s);
    }
    for v in children.values_mut() {
        v.sort_by(|a, b| (a.start_time, &a.name).cmp(&(b.start_time, &b.name)));
    }
    let mut out = String::new();
    for root in children.get(&[0u8; 8]).cloned().unwrap_or_default() {
        let header: BTreeMap<String, String> =
            attributes(root).into_iter().filter(|(k, _)| is_session_wide(k)).collect();
        out.push_str("on every span of this trace:\n");
        for (k, v) in &header {
            out.push_str(&format!("  * {k} = {v}\n"));
        }
        walk(&mut out, &children, &header, root, 0);
    }
    out
}

fn walk(
    out: &mut String,
    children: &BTreeMap<[u8; 8], Vec<&SpanData>>,
    header: &BTreeMap<String, String>,
    s: &SpanData,
    depth: usize,
) {
    let pad = "  ".repeat(depth);
    out.push_str(&format!("{pad}{} [{:?}] status={:?}\n", s.name, s.span_kind, s.status));
    let attrs = attributes(s);
    for (k, v) in attrs.iter().filter(|(k, _)| !is_session_wide(k)) {
        out.push_str(&format!("{pad}  | {k} = {v}\n"));
    }
    // the span's own copy of the session-wide attributes must be the header's, key by key
    let mine: BTreeMap<&str, &str> =
        attrs.iter().filter(|(k, _)| is_session_wide(k)).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (k, want) in header {
        match mine.get(k.as_str()) {
            Some(got) if *got == want.as_str() => {}
            Some(got) => out.push_str(&format!("{pad}  ! {k} = {got}, not the trace's {want}\n")),
            None => out.push_str(&format!("{pad}  ! {k} missing (the trace's: {want})\n")),
        }
    }
    for (k, got) in mine.iter().filter(|(k, _)| !header.contains_key(**k)) {
        out.push_str(&format!("{pad}  ! {k} = {got}, not on the root\n"));
    }
    for c in children.get(&s.span_context.span_id().to_bytes()).map(|v| v.as_slice()).unwrap_or(&[]) {
        walk(out, children, header, c, depth + 1);
    }
}

/// Ok when `actual` is `expected`; else a message naming the first line that differs (1-based)
/// with both versions of it.
pub fn compare(expected: &str, actual: &str) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    let (mut e, mut a) = (expected.lines(), actual.lines());
    let mut n = 1;
    loop {
        match (e.next(), a.next()) {
            (Some(x), Some(y)) if x == y => n += 1,
            (None, None) => return Err("the lines are the same; the line endings or the final newline differ".into()),
            (x, y) => {
                return Err(format!(
                    "line {n} differs:\n  golden: {}\n  actual: {}",
                    x.unwrap_or("(end of file)"),
                    y.unwrap_or("(end of output)")
                ))
            }
        }
    }
}

/// Path of tests/golden/NAME.txt.
pub fn path(name: &str) -> String {
    format!("{}/tests/golden/{name}.txt", env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with tests/golden/NAME.txt, or rewrites the file under `UPDATE_GOLDEN=1`.
#[track_caller]
pub fn check(name: &str, actual: &str) {
    let path = path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{path}: {e}"));
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run with UPDATE_GOLDEN=1 to create it)"));
    if let Err(diff) = compare(&expected, actual) {
        panic!("span tree differs from {path}: {diff}\nrun with UPDATE_GOLDEN=1 to accept, after reading the diff\n--- actual ---\n{actual}");
    }
}
