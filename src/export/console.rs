//! The readable view: each finished session printed as a tree (who, pod, commands with their
//! arguments, connects with their outcome, exit codes, durations). The default output when no
//! OTLP endpoint or file is configured.
//!
//! In: spans, a session's root last. Out: text on stdout (or any writer). Spans of a session
//! wait here until its root arrives; at most `MAX_PENDING` sessions wait (the oldest is
//! printed as it is, without its root, when more arrive).

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
            opentelemetry::Array::String(v) => v.iter().map(|x| x.as_str().to_owned()).collect::<Vec<_>>().join(" "),
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

/// One line for a span.
fn line(s: &SpanData) -> String {
    if attr(s, "server.address").is_some() {
        let mut l = format!("{} {} {}", s.name, text(s, "network.transport").unwrap_or_default(), text(s, keys::NETWORK_OUTCOME).unwrap_or_default());
        if let Some(scope) = text(s, keys::NETWORK_DESTINATION_SCOPE) {
            l.push_str(&format!(" ({scope})"));
        }
        if let Some(n) = text(s, keys::FOLDED_COUNT) {
            l.push_str(&format!(" x{n} more"));
        }
        return l;
    }
    let args = text(s, "process.command_args").unwrap_or_else(|| s.name.to_string());
    let mut l = format!("{args}  [pid {}", text(s, "process.pid").unwrap_or_default());
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
        if !description.starts_with("exit code") {
            l.push_str(&format!(" ({description})"));
        }
    }
    l
}

/// The whole session as text.
pub fn render_session(spans: &[SpanData]) -> String {
    let mut kids: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
    let ids: std::collections::HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut roots = Vec::new();
    for s in spans {
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
            out.push_str(&format!("{} {}  {who}{from}  {pod}{ctr}  {}  trace {}\n", clock(r.start_time), r.name, duration(r), r.span_context.trace_id()));
            let mut marks = Vec::new();
            for k in [keys::SESSION_INCOMPLETE, keys::SESSION_SPANS_LOST, keys::SESSION_FOLDED, keys::SESSION_SPANS_CAPPED, keys::NODE_USER] {
                if let Some(v) = text(r, k).filter(|v| v != "false") {
                    marks.push(format!("{}={v}", k.rsplit('.').next().unwrap_or(k)));
                }
            }
            if !marks.is_empty() {
                out.push_str(&format!("  ({})\n", marks.join(", ")));
            }
        } else {
            out.push_str(&format!("  {}\n", line(r)));
        }
        walk(&mut out, &kids, r.span_context.span_id(), "  ");
    }
    out
}

fn walk(out: &mut String, kids: &HashMap<SpanId, Vec<&SpanData>>, id: SpanId, prefix: &str) {
    let Some(children) = kids.get(&id) else { return };
    for (i, c) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        out.push_str(&format!("{prefix}{}{}\n", if last { "└─ " } else { "├─ " }, line(c)));
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
