//! The one reader of OTLP/JSON lines files (podtrail's `--otlp-file`, and the Collector's file
//! exporter: one ExportTraceServiceRequest per line), decoded here from the JSON, not with
//! podtrail's code. A line that is not OTLP/JSON fails the test.

use std::path::Path;

use serde_json::{json, Value};

/// One span as the file holds it.
#[derive(Clone, Debug)]
pub struct Span {
    /// 32 lowercase hex digits (comparable with [`super::jaeger::norm_id`]).
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent: String,
    pub name: String,
    /// The OTLP SpanKind number (3: CLIENT); 0 when absent.
    pub kind: i64,
    /// The span's attributes, then its resource's (so `container.id` is found either way):
    /// OTLP/JSON key-value objects.
    pub attrs: Vec<Value>,
    /// (name, OTLP/JSON attributes) of each event.
    pub events: Vec<(String, Value)>,
}

impl Span {
    /// An attribute as plain JSON (`intValue`, a string in OTLP/JSON, as a number; arrays as
    /// arrays).
    pub fn attr(&self, key: &str) -> Option<Value> {
        self.attrs.iter().find(|kv| kv["key"] == key).map(|kv| plain(&kv["value"]))
    }

    /// A string attribute (None when absent or not a string).
    pub fn str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(|v| v.as_str().map(str::to_owned))
    }

    /// An attribute of any type as text: strings as they are, numbers as their digits, the rest
    /// as JSON.
    pub fn text(&self, key: &str) -> Option<String> {
        self.attr(key).map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.parent.is_empty()
    }

    /// `process.command_args`, empty when absent.
    pub fn args(&self) -> Vec<String> {
        match self.attr("process.command_args") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => vec![],
        }
    }

    /// The attributes of each event named `name`, as one plain JSON object per event.
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| {
                let o = a
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|kv| (kv["key"].as_str().unwrap_or("").to_owned(), plain(&kv["value"])))
                    .collect();
                Value::Object(o)
            })
            .collect()
    }
}

/// An OTLP/JSON AnyValue as plain JSON (`intValue` is a string in OTLP/JSON).
pub fn plain(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Value::String(s) => json!(s.parse::<i64>().expect("intValue")),
            other => other.clone(),
        };
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(a["values"].as_array().map(|v| v.iter().map(plain).collect()).unwrap_or_default());
    }
    v.clone()
}

/// Every span of the file, in file order; none when the file does not exist (yet).
pub fn read(path: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // a test that polls the file while the agent writes may catch the last line half written:
    // only whole lines (ended by a newline) count
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut out = Vec::new();
    for line in whole.lines().filter(|l| !l.trim().is_empty()) {
        let req: Value = serde_json::from_str(line).expect("each line is one OTLP/JSON request");
        for rs in req["resourceSpans"].as_array().into_iter().flatten() {
            let res = rs["resource"]["attributes"].as_array().cloned().unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let mut attrs = s["attributes"].as_array().cloned().unwrap_or_default();
                    attrs.extend(res.iter().cloned());
                    let events = s["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| (e["name"].as_str().unwrap_or("").to_owned(), e["attributes"].clone()))
                        .collect();
                    out.push(Span {
                        trace_id: super::jaeger::norm_id(s["traceId"].as_str().expect("traceId")),
                        span_id: s["spanId"].as_str().expect("spanId").to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or("").to_owned(),
                        name: s["name"].as_str().unwrap_or("").to_owned(),
                        kind: s["kind"].as_i64().or_else(|| s["kind"].as_str()?.parse().ok()).unwrap_or(0),
                        attrs,
                        events,
                    });
                }
            }
        }
    }
    out
}
