//! Golden span trees: recorded session updates in, span trees out (names, kinds, parents,
//! attributes; ids and times left out), compared with tests/golden/*.txt. Rewrite the files
//! with `UPDATE_GOLDEN=1` only after reading the diff.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use opentelemetry_sdk::trace::SpanData;
use podtrail::clock::BootClock;
use podtrail::model::SessionUpdate;
use podtrail::spans::{keys, Attributor, BuildCtx, NoAttributor, Output, SessionIdentity, SpanStage, SpansConfig};
use support::golden::{self, render};
use support::sessions::*;

const BOOT: [u8; 16] = [0xb0; 16];
const EPOCH: u64 = 1_700_000_000 * S;

fn ctx(cfg: SpansConfig) -> BuildCtx {
    BuildCtx::new(BOOT, BootClock::fixed(EPOCH), cfg)
}

fn run(cfg: SpansConfig, attributor: Arc<dyn Attributor>, updates: Vec<SessionUpdate>) -> Vec<SpanData> {
    let mut stage = SpanStage::new(ctx(cfg), attributor);
    let mut out = Output::default();
    // as the process stage sends them: children name their parent's image
    for u in link_parent_images(updates) {
        stage.update(u, Instant::now(), &mut out);
    }
    stage.shutdown(99 * S, &mut out);
    out.spans.into_iter().map(|(_, b)| b.span).collect()
}

/// Structural rules every session's spans must keep, whatever the golden says.
fn check_invariants(spans: &[SpanData]) {
    let root = spans.last().expect("spans");
    assert_eq!(root.parent_span_id, opentelemetry::trace::SpanId::INVALID, "the root is exported last");
    let ids: HashSet<_> = spans.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
    let known: HashSet<&str> = keys::PODTRAIL_KEYS.iter().chain(keys::SEMCONV_KEYS).copied().collect();
    let root_common: HashMap<String, String> = root
        .attributes
        .iter()
        .filter(|kv| {
            [
                "k8s.pod.name",
                "k8s.pod.label.app",
                "k8s.namespace.name",
                "container.id",
                "podtrail.session.kind",
                "user.name",
                "client.address",
                "podtrail.k8s.audit_id",
            ]
            .contains(&kv.key.as_str())
        })
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect();
    for s in spans {
        assert_eq!(s.span_context.trace_id(), root.span_context.trace_id(), "one trace per session");
        if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
            assert!(ids.contains(&s.parent_span_id), "{}: parent is in the trace", s.name);
        }
        assert!(s.end_time >= s.start_time);
        // an image span's attributes are counted before they are pushed: sized once (a fold
        // span adds its count to a built one, and is left out)
        let has = |k: &str| s.attributes.iter().any(|kv| kv.key.as_str() == k);
        if has("process.pid") && !has(keys::FOLDED_COUNT) {
            assert_eq!(s.attributes.capacity(), s.attributes.len(), "{}: attributes sized once", s.name);
        }
        for kv in &s.attributes {
            let key = if kv.key.as_str().starts_with("k8s.pod.label.") { "k8s.pod.label" } else { kv.key.as_str() };
            assert!(known.contains(key), "{} is not a documented key", kv.key);
        }
        for (k, v) in &root_common {
            let got = s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
            assert_eq!(got.as_ref(), Some(v), "{}: session attribute {k} on every span", s.name);
        }
    }
}

fn alice_attributor() -> Arc<dyn Attributor> {
    Arc::new(|_: &podtrail::model::SessionInfo| Some(alice()))
}

#[test]
fn attributed_shell_session_is_the_process_tree() {
    let spans = run(SpansConfig::default(), alice_attributor(), shell_session());
    check_invariants(&spans);
    assert_eq!(
        hex::encode(spans[0].span_context.trace_id().to_bytes()),
        "4b5f3c7e8d2a4f199c3e2a1b0d9e8f70",
        "the audit id is the trace id"
    );
    let sh = spans
        .iter()
        .find(|s| s.name == "sh" && s.parent_span_id == spans.last().unwrap().span_context.span_id())
        .unwrap();
    assert_eq!(sh.start_time, BootClock::fixed(EPOCH).to_system_time(10 * S), "times come from the events");
    golden::check("shell_session", &render(&spans));
}

#[test]
fn unattributed_node_session_says_so() {
    let spans = run(SpansConfig::default(), Arc::new(NoAttributor), nsenter_session());
    check_invariants(&spans);
    golden::check("nsenter_session", &render(&spans));
}

#[test]
fn loops_fold_long_argv_is_cut_and_the_cap_holds() {
    let cfg = SpansConfig {
        fold_after: 5,
        argv_max_bytes: 64,
        max_spans_per_session: 7,
        max_kept_spans_per_session: 7,
        ..Default::default()
    };
    let spans = run(cfg, Arc::new(NoAttributor), loop_session());
    check_invariants(&spans);
    golden::check("loop_session", &render(&spans));
}

#[test]
fn a_session_open_at_shutdown_is_exported_incomplete() {
    let mut updates = shell_session();
    updates.truncate(3); // Started, wget and tar ended; the shell is still running.
    let spans = run(SpansConfig::default(), alice_attributor(), updates);
    check_invariants(&spans);
    golden::check("shutdown_session", &render(&spans));
}

/// The first line where tests/golden/wrong_parent.txt leaves shell_session.txt: where wget
/// should stand under sh, the wrong file goes on with sh's next child.
const WRONG_PARENT_FIRST_DIFFERENCE: usize = 56;

#[test]
fn a_wrong_golden_does_not_match() {
    // tests/golden/wrong_parent.txt is shell_session.txt with wget hung under the root
    // instead of under sh: the comparison the goldens use must fail on it, at that line.
    let spans = run(SpansConfig::default(), alice_attributor(), shell_session());
    let actual = render(&spans);
    let wrong = std::fs::read_to_string(golden::path("wrong_parent")).unwrap();
    assert!(wrong.contains("wget") && wrong.len() > actual.len() / 2, "the wrong golden is a real tree");
    assert_eq!(golden::compare(&std::fs::read_to_string(golden::path("shell_session")).unwrap(), &actual), Ok(()));
    let n = WRONG_PARENT_FIRST_DIFFERENCE;
    let err = golden::compare(&wrong, &actual).expect_err("a wrong tree must not match");
    let line = |text: &str| text.lines().nth(n - 1).unwrap_or_default().to_owned();
    assert!(err.starts_with(&format!("line {n} differs:")), "{err}");
    assert!(err.contains(&format!("golden: {}", line(&wrong))), "{err}");
    assert!(err.contains(&format!("actual: {}", line(&actual))), "{err}");
}

#[test]
fn a_span_without_the_sessions_attributes_does_not_match() {
    // podtrail repeats the session-wide attributes on every span; the golden prints them once
    // per trace, so the renderer must show a span whose copy differs or is missing.
    let mut spans = run(SpansConfig::default(), alice_attributor(), shell_session());
    let tar = spans.iter_mut().find(|s| s.name == "tar").expect("tar");
    tar.attributes.retain(|kv| kv.key.as_str() != "user.name");
    for kv in tar.attributes.iter_mut().filter(|kv| kv.key.as_str() == "k8s.pod.name") {
        kv.value = "another-pod".into();
    }
    let actual = render(&spans);
    assert!(actual.contains("  ! k8s.pod.name = \"another-pod\", not the trace's \"api-7d9f8-x2x7q\"\n"), "{actual}");
    assert!(actual.contains("  ! user.name missing (the trace's: \"alice@example.com\")\n"), "{actual}");
    let golden = std::fs::read_to_string(golden::path("shell_session")).unwrap();
    let err = golden::compare(&golden, &actual).expect_err("a span lacking the session's attributes must not match");
    assert!(err.contains("! "), "the first difference is the span's: {err}");
}

#[test]
fn ids_are_the_same_when_the_session_is_built_again() {
    let a = run(SpansConfig::default(), Arc::new(NoAttributor), shell_session());
    let b = run(SpansConfig::default(), Arc::new(NoAttributor), shell_session());
    let ids = |v: &[SpanData]| v.iter().map(|s| (s.span_context.span_id(), s.parent_span_id)).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
}

/// Issue 15: records marked as leaves (no later record names them as parent) keep no image
/// slots in the span stage; the spans are the same, ids and parents included, whether the
/// children name their parent's image (as the process stage sends them) or wait for it.
#[test]
fn leaves_give_the_same_spans() {
    let build = |updates: Vec<SessionUpdate>| {
        let mut stage = SpanStage::new(ctx(SpansConfig::default()), Arc::new(NoAttributor));
        let mut out = Output::default();
        for u in updates {
            stage.update(u, Instant::now(), &mut out);
        }
        stage.shutdown(99 * S, &mut out);
        let spans: Vec<SpanData> = out.spans.into_iter().map(|(_, b)| b.span).collect();
        let ids: Vec<_> = spans.iter().map(|s| (s.span_context.span_id(), s.parent_span_id)).collect();
        (render(&spans), ids)
    };
    for session in [shell_session, nsenter_session, loop_session] {
        for linked in [false, true] {
            let updates = if linked { link_parent_images(session()) } else { session() };
            let marked = mark_leaves(updates.clone());
            assert!(marked.iter().any(|u| matches!(u, SessionUpdate::ProcessEnded(_, r) if r.leaf)));
            assert_eq!(build(updates), build(marked), "linked: {linked}");
        }
    }
}

#[test]
fn hold_waits_for_attribution_then_releases() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let known = Arc::new(AtomicBool::new(false));
    let k2 = known.clone();
    let attributor: Arc<dyn Attributor> =
        Arc::new(move |_: &podtrail::model::SessionInfo| -> Option<SessionIdentity> {
            k2.load(Ordering::SeqCst).then(alice)
        });
    let mut cfg = SpansConfig::default();
    cfg.hold.deadline_ms = 60_000;
    let mut stage = SpanStage::new(ctx(cfg), attributor);
    let mut out = Output::default();
    let t0 = Instant::now();
    for u in shell_session() {
        stage.update(u, t0, &mut out);
    }
    assert!(out.spans.is_empty(), "held while attribution may still come");
    assert_eq!(stage.held(), 1);
    stage.tick(t0, &mut out);
    assert!(out.spans.is_empty());
    known.store(true, Ordering::SeqCst);
    stage.tick(t0, &mut out);
    assert_eq!(out.released, vec![podtrail::spans::Release::Attributed]);
    let spans: Vec<_> = out.spans.into_iter().map(|(_, b)| b.span).collect();
    assert!(spans.iter().all(|s| s.attributes.iter().any(|kv| kv.key.as_str() == "user.name")));
    assert_eq!(render(&spans), render(&run(SpansConfig::default(), alice_attributor(), shell_session())));
}

#[test]
fn hold_deadline_exports_unattributed() {
    let mut cfg = SpansConfig::default();
    cfg.hold.deadline_ms = 1000;
    let mut stage = SpanStage::new(ctx(cfg), Arc::new(NoAttributor));
    let mut out = Output::default();
    let t0 = Instant::now();
    for u in shell_session() {
        stage.update(u, t0, &mut out);
    }
    stage.tick(t0 + std::time::Duration::from_millis(999), &mut out);
    assert!(out.spans.is_empty());
    stage.tick(t0 + std::time::Duration::from_millis(1000), &mut out);
    assert_eq!(out.released, vec![podtrail::spans::Release::Deadline]);
    assert!(out.spans.last().unwrap().1.root);

    // a node session has no Kubernetes request behind it: it is not held at all
    let mut out = Output::default();
    for u in nsenter_session() {
        stage.update(u, t0, &mut out);
    }
    assert_eq!(out.released, vec![podtrail::spans::Release::Unattributable]);
    assert!(out.spans.last().unwrap().1.root, "exported at once");
}

#[test]
fn a_child_is_exported_when_it_ends_not_when_its_parent_does() {
    let updates = link_parent_images(shell_session());
    let mut stage = SpanStage::new(ctx(SpansConfig::default()), Arc::new(NoAttributor));
    let mut out = Output::default();
    let first_child = updates.iter().position(|u| matches!(u, SessionUpdate::ProcessEnded(..))).unwrap();
    for u in updates.into_iter().take(first_child + 1) {
        stage.update(u, Instant::now(), &mut out);
    }
    let names: Vec<String> = out.spans.iter().map(|(_, b)| b.span.name.to_string()).collect();
    assert!(names.iter().any(|n| n == "wget"), "wget's span leaves with its exit, before sh ends: {names:?}");
    let wget = out.spans.iter().find(|(_, b)| b.span.name == "wget").unwrap();
    let sh_image0 = podtrail::spans::ids::image_span_id(&BOOT, key(100), 0);
    assert_eq!(wget.1.span.parent_span_id, sh_image0, "under the shell image it was forked from");
}
