//! The readable view: each finished session printed as a tree (who, pod, commands with their
//! arguments, connects with their outcome, exit codes, durations), and, as they happen, one
//! line when a session is opened and one per alert raised. The default output when no OTLP
//! endpoint or file is configured.
//!
//! In: spans, a session's root last. Out: text on stdout (or any writer). Spans of a session
//! wait here until its root arrives; at most `MAX_PENDING` sessions wait (the oldest is
//! printed as it is, without its root, when more arrive).
//!
//! Every line is terminal-safe: control, ESC and bidi characters are shown escaped
//! (`crate::text::display_safe`) and argv elements are shell-quoted.
//!
//! A process line is `ARGV  [pid P nspid N, exit C, DURATION]` (nspid only when it differs
//! from the host pid); a forked child that never exec'd is `NAME (fork)`.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::spans::keys;

const MAX_PENDING: usize = 1024;

pub struct ConsoleExporter {
    state: Mutex<State>,
}

struct State {
    out: Box<dyn Write + Send>,
    pending: HashMap<TraceId, Vec<SpanData>>,
    order: VecDeque<TraceId>,
}

impl std::fmt::Debug for ConsoleExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleExporter")
    }
}

impl ConsoleExporter {
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        ConsoleExporter { state: Mutex::new(State { out, pending: HashMap::new(), order: VecDeque::new() }) }
    }
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn text(s: &SpanData, key: &str) -> Option<String> {
    attr(s, key).map(|v| match v {
        Value::Array(a) => match a {
            // argv as a shell reads it back: `sh -c 'a | b'`, not `sh -c a | b`
            opentelemetry::Array::String(v) => {
                v.iter().map(|x| crate::text::shell_quote(x.as_str()).into_owned()).collect::<Vec<_>>().join(" ")
            }
            other => other.to_string(),
        },
        other => other.to_string(),
    })
}

fn duration(s: &SpanData) -> String {
    let d = s.end_time.duration_since(s.start_time).unwrap_or_default();
    if d.as_secs() >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn clock(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    jiff::Timestamp::from_second(secs as i64).map(|ts| ts.to_string()).unwrap_or_else(|_| secs.to_string())
}

/// A `transcript` span as one line: what was typed, in order (`$ ...`; `< ...` shown), a
/// password prompt's answer as its length only, and the mark of lines not kept.
fn transcript_line(s: &SpanData) -> String {
    use crate::spans::build::{LINES_TRUNCATED, LINE_OUTPUT};
    let parts: Vec<String> = s
        .events
        .iter()
        .map(|e| {
            let get = |k: &str| e.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
            if e.name == LINES_TRUNCATED {
                return format!(
                    "... {} more line(s) not kept",
                    get(keys::TRANSCRIPT_LINES_DROPPED).unwrap_or_default()
                );
            }
            let mark = if e.name == LINE_OUTPUT { "<" } else { "$" };
            match get(keys::TRANSCRIPT_LINE) {
                Some(t) => format!("{mark} {t}"),
                None => format!("{mark} <echo off: {} bytes>", get(keys::TRANSCRIPT_SECRET_BYTES).unwrap_or_default()),
            }
        })
        .collect();
    format!("transcript  {}", parts.join("  |  "))
}

/// One line for a span.
fn line(s: &SpanData) -> String {
    if s.name == crate::spans::build::TRANSCRIPT_SPAN && attr(s, keys::TRANSCRIPT_SEQ).is_some() {
        return transcript_line(s);
    }
    if let Some(addr) = text(s, "server.address") {
        // the destination from `server.*`: the span's name is only `connect`
        let port = text(s, "server.port").unwrap_or_default();
        let mut dest = if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") };
        // a name from a DNS answer: the address it stood for beside it
        if text(s, keys::NETWORK_DESTINATION_NAME_SOURCE).as_deref() == Some("dns") {
            if let Some(ip) = text(s, "network.peer.address") {
                dest.push_str(&format!(" at {ip}"));
            }
        }
        let mut l = format!(
            "{} {dest} {} {}",
            s.name,
            text(s, "network.transport").unwrap_or_default(),
            text(s, keys::NETWORK_OUTCOME).unwrap_or_default()
        );
        if let Some(scope) = text(s, keys::NETWORK_DESTINATION_SCOPE) {
            l.push_str(&format!(" ({scope})"));
        }
        if let Some(n) = text(s, keys::FOLDED_COUNT) {
            l.push_str(&format!(" x{n} more"));
        }
        return l;
    }
    // A forked child that never exec'd runs its parent's image: repeating the parent's whole
    // argv on every such line is noise, the name and the mark say what it is.
    let args = if attr(s, keys::PROCESS_INHERITED).is_some() {
        format!("{} (fork)", s.name)
    } else {
        text(s, "process.command_args").unwrap_or_else(|| s.name.to_string())
    };
    let pid = text(s, "process.pid").unwrap_or_default();
    let mut l = format!("{args}  [pid {pid}");
    // The pid inside the container is the one `ps` in the pod shows.
    if let Some(ns) = text(s, "process.vpid").filter(|v| *v != pid) {
        l.push_str(&format!(" nspid {ns}"));
    }
    if let Some(c) = text(s, "process.exit.code") {
        l.push_str(&format!(", exit {c}"));
    }
    l.push_str(&format!(", {}]", duration(s)));
    if let Some(n) = text(s, keys::FOLDED_COUNT) {
        l.push_str(&format!(" x{n} more (folded)"));
    }
    if attr(s, keys::PROCESS_ARGV_TRUNCATED).is_some() {
        l.push_str(" (argv cut)");
    }
    if let Status::Error { description } = &s.status {
        l.push_str(&format!(" ({description})"));
    }
    l
}

/// `  !! [high] Packet capture` for each alert event of a span.
fn alerts(s: &SpanData) -> String {
    let mut out = String::new();
    for e in s.events.iter().filter(|e| e.name == "alert") {
        let get = |k: &str| {
            e.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string()).unwrap_or_default()
        };
        out.push_str(&format!("  !! [{}] {}", get(keys::ALERT_SEVERITY), get("security_rule.name")));
        let path = get("file.path");
        if !path.is_empty() {
            out.push_str(&format!(" ({} {path})", get(keys::FILE_OP)));
        }
    }
    out
}

/// A span sent while its session runs, as one line: `>> ... opened` with who and where, or
/// `!! [severity] rule` with the process; None for any other span.
pub fn live_line(s: &SpanData) -> Option<String> {
    let trace = s.span_context.trace_id();
    let pod = match (text(s, "k8s.namespace.name"), text(s, "k8s.pod.name")) {
        (Some(ns), Some(p)) => format!("{ns}/{p}"),
        _ => text(s, "container.id").map(|c| c.chars().take(12).collect()).unwrap_or_default(),
    };
    let who = text(s, "user.name").unwrap_or_else(|| "unattributed".into());
    match s.name.as_ref() {
        crate::spans::build::OPENED_SPAN => {
            let from = text(s, "client.address").map(|a| format!(" from {a}")).unwrap_or_default();
            let cmd = text(s, keys::K8S_COMMAND).map(|c| format!("  {c}")).unwrap_or_default();
            let kind = text(s, keys::SESSION_KIND).unwrap_or_default();
            Some(format!("{} >> {kind} session opened  {who}{from}  {pod}{cmd}  trace {trace}\n", clock(s.start_time)))
        }
        crate::spans::build::ALERT_SPAN => Some(format!(
            "{} !! [{}] {}  {} [pid {}]  {who}  {pod}  trace {trace}\n",
            clock(s.start_time),
            text(s, keys::ALERT_SEVERITY).unwrap_or_default(),
            text(s, "security_rule.name").unwrap_or_default(),
            text(s, "process.command").unwrap_or_default(),
            text(s, "process.pid").unwrap_or_default(),
        )),
        _ => None,
    }
}

/// The whole session as text. Everything in it came from the kernel or from clients: nothing
/// may drive the analyst's terminal (ESC sequences, bidi overrides), so all of it is escaped.
pub fn render_session(spans: &[SpanData]) -> String {
    let text = render_raw(spans);
    match crate::text::display_safe(&text, true) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(safe) => safe,
    }
}

/// A span sent while its session ran (`session opened`, an alert when raised): what it says is
/// on the root and the process spans too, so the tree leaves it out. Told by name and by what
/// only it carries, since a process span's name is its argv[0], which anyone chooses.
fn is_live(s: &SpanData) -> bool {
    match s.name.as_ref() {
        crate::spans::build::OPENED_SPAN => text(s, "process.pid").is_none(),
        crate::spans::build::ALERT_SPAN => text(s, keys::ALERT_SPAN_ID).is_some(),
        _ => false,
    }
}

fn render_raw(spans: &[SpanData]) -> String {
    let spans: Vec<&SpanData> = spans.iter().filter(|s| !is_live(s)).collect();
    let mut kids: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
    let ids: std::collections::HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut roots = Vec::new();
    for s in spans.iter().copied() {
        if s.parent_span_id == SpanId::INVALID || !ids.contains(&s.parent_span_id) {
            roots.push(s);
        } else {
            kids.entry(s.parent_span_id).or_default().push(s);
        }
    }
    for v in kids.values_mut() {
        v.sort_by_key(|s| s.start_time);
    }
    roots.sort_by_key(|s| (s.parent_span_id != SpanId::INVALID, s.start_time));
    let mut out = String::new();
    for r in roots {
        if r.parent_span_id == SpanId::INVALID {
            let who = text(r, "user.name").unwrap_or_else(|| "unattributed".into());
            let from = text(r, "client.address").map(|a| format!(" from {a}")).unwrap_or_default();
            let pod = match (text(r, "k8s.namespace.name"), text(r, "k8s.pod.name")) {
                (Some(ns), Some(p)) => format!("{ns}/{p}"),
                _ => text(r, "container.id").map(|c| c.chars().take(12).collect()).unwrap_or_default(),
            };
            let ctr = text(r, "k8s.container.name").map(|c| format!(" [{c}]")).unwrap_or_default();
            out.push_str(&format!(
                "{} {}  {who}{from}  {pod}{ctr}  {}  trace {}\n",
                clock(r.start_time),
                r.name,
                duration(r),
                r.span_context.trace_id()
            ));
            let mut marks = Vec::new();
            for k in [
                keys::SESSION_INCOMPLETE,
                keys::SESSION_SPANS_LOST,
                keys::SESSION_FOLDED,
                keys::SESSION_SPANS_CAPPED,
                keys::NODE_USER,
            ] {
                if let Some(v) = text(r, k).filter(|v| v != "false") {
                    marks.push(format!("{}={v}", k.rsplit('.').next().unwrap_or(k)));
                }
            }
            if !marks.is_empty() {
                out.push_str(&format!("  ({})\n", marks.join(", ")));
            }
            if let (Some(n), Some(max)) = (text(r, keys::ALERTS_COUNT), text(r, keys::ALERTS_MAX_SEVERITY)) {
                out.push_str(&format!(
                    "  !! {n} alert(s), highest {max}: {}\n",
                    text(r, keys::ALERTS_RULES).unwrap_or_default()
                ));
            }
            let own = alerts(r);
            if !own.is_empty() {
                out.push_str(&format!("  {}\n", own.trim_start()));
            }
        } else {
            out.push_str(&format!("  {}{}\n", line(r), alerts(r)));
        }
        walk(&mut out, &kids, r.span_context.span_id(), "  ");
    }
    out
}

fn walk(out: &mut String, kids: &HashMap<SpanId, Vec<&SpanData>>, id: SpanId, prefix: &str) {
    let Some(children) = kids.get(&id) else { return };
    for (i, c) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        out.push_str(&format!("{prefix}{}{}{}\n", if last { "└─ " } else { "├─ " }, line(c), alerts(c)));
        let next = format!("{prefix}{}", if last { "   " } else { "│  " });
        walk(out, kids, c.span_context.span_id(), &next);
    }
}

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut st = self.state.lock().map_err(|_| OTelSdkError::InternalFailure("console lock poisoned".into()))?;
        let mut ready = Vec::new();
        for s in batch {
            if attr(&s, keys::AGENT_EVENT).is_some() {
                continue;
            }
            // sent while the session runs: one line now (the tree comes when the root does)
            if let Some(l) = live_line(&s) {
                let safe = crate::text::display_safe(&l, true).into_owned();
                st.out.write_all(safe.as_bytes()).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
                continue;
            }
            let t = s.span_context.trace_id();
            let is_root = s.parent_span_id == SpanId::INVALID;
            if !st.pending.contains_key(&t) {
                st.order.push_back(t);
            }
            st.pending.entry(t).or_default().push(s);
            if is_root {
                ready.push(t);
            }
        }
        while st.order.len() > MAX_PENDING {
            if let Some(old) = st.order.pop_front() {
                ready.push(old);
            }
        }
        for t in ready {
            st.order.retain(|x| *x != t);
            if let Some(spans) = st.pending.remove(&t) {
                let text = render_session(&spans);
                st.out.write_all(text.as_bytes()).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
            }
        }
        st.out.flush().map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    fn span(id: u64, parent: u64, name: &'static str, attributes: Vec<KeyValue>) -> SpanData {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: if parent == 0 { SpanId::INVALID } else { SpanId::from(parent) },
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: t,
            end_time: t + std::time::Duration::from_millis(5),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn argv(v: &[&'static str]) -> KeyValue {
        KeyValue::new(
            "process.command_args",
            Value::Array(v.iter().map(|s| opentelemetry::StringValue::from(*s)).collect::<Vec<_>>().into()),
        )
    }

    #[test]
    fn forked_child_prints_its_name_not_the_parents_argv_and_nspid_beside_pid() {
        let sh_argv = ["sh", "-c", "wget -q -O- http://x/ | tar -x; sleep 1 &"];
        let spans = vec![
            span(1, 0, "exec", vec![]),
            span(
                2,
                1,
                "sh",
                vec![argv(&sh_argv), KeyValue::new("process.pid", 4242), KeyValue::new("process.vpid", 7)],
            ),
            span(
                3,
                2,
                "sh",
                vec![
                    argv(&sh_argv),
                    KeyValue::new("process.pid", 4243),
                    KeyValue::new("process.vpid", 8),
                    KeyValue::new(keys::PROCESS_INHERITED, true),
                ],
            ),
            span(
                4,
                3,
                "wget",
                vec![
                    argv(&["wget", "-q", "http://x/"]),
                    KeyValue::new("process.pid", 4243),
                    KeyValue::new("process.vpid", 8),
                ],
            ),
            // a node session: host pid namespace, nspid == pid is not repeated
            span(5, 2, "id", vec![argv(&["id"]), KeyValue::new("process.pid", 99), KeyValue::new("process.vpid", 99)]),
        ];
        let text = render_session(&spans);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("  └─ sh -c 'wget -q -O- http://x/ | tar -x; sleep 1 &'  [pid 4242 nspid 7, 5ms]"),
            "{text}"
        );
        assert!(lines.iter().any(|l| l.contains("─ sh (fork)  [pid 4243 nspid 8, 5ms]")), "{text}");
        assert_eq!(text.matches("tar -x").count(), 1, "the parent's argv is printed once:\n{text}");
        assert!(lines.iter().any(|l| l.contains("─ wget -q http://x/  [pid 4243 nspid 8, 5ms]")), "{text}");
        // an argv that would drive the terminal prints escaped, quoted as one word
        let evil = vec![span(1, 0, "exec", vec![]), span(9, 1, "echo", vec![argv(&["echo", "a\x1b[2J\u{202e}b"])])];
        let text = render_session(&evil);
        assert!(text.contains("echo 'a\\x1b[2J\\u{202e}b'"), "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\u{202e}'), "{text}");
        assert!(lines.iter().any(|l| l.contains("─ id  [pid 99, 5ms]")), "{text}");
    }

    #[test]
    fn a_transcript_span_prints_its_lines_and_a_secret_as_its_length() {
        let mut t = span(2, 1, "transcript", vec![KeyValue::new(keys::TRANSCRIPT_SEQ, 0)]);
        let at = t.start_time;
        let ev = |name: &'static str, kv: Vec<KeyValue>| opentelemetry::trace::Event::new(name, at, kv, 0);
        t.events.events.extend([
            ev("input", vec![KeyValue::new(keys::TRANSCRIPT_LINE, "unset HISTFILE; history -c")]),
            ev("input", vec![KeyValue::new(keys::TRANSCRIPT_SECRET_BYTES, 11)]),
            ev("transcript truncated", vec![KeyValue::new(keys::TRANSCRIPT_LINES_DROPPED, 3)]),
        ]);
        // a process named `transcript` (argv[0] is anyone's) is not taken for one
        let fake = span(3, 1, "transcript", vec![argv(&["transcript"]), KeyValue::new("process.pid", 5)]);
        let text = render_session(&[span(1, 0, "exec", vec![]), t, fake]);
        assert!(
            text.contains(
                "transcript  $ unset HISTFILE; history -c  |  $ <echo off: 11 bytes>  |  ... 3 more line(s) not kept"
            ),
            "{text}"
        );
        assert!(text.contains("transcript  [pid 5"), "{text}");
    }
}
