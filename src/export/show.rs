//! `podtrail show`: OTLP/JSON files (the file sink's output, or a Collector file exporter's)
//! read back into the console's session trees, without a backend.
//!
//! In: lines of OTLP/JSON (`ExportTraceServiceRequest`, one per line), from any number of
//! files. Out: each session (trace) rendered by [`super::console::render_session`] once its
//! root span is read, or at the end for those whose root never came; only sessions the
//! [`Filter`] keeps. Dropped: lines that are not OTLP/JSON (counted in [`Stats`] by the caller,
//! with the first error kept to report), spans of the agent's own trace.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Value;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::trace::SpanData;

use crate::spans::keys;

#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("not OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a span in it does not decode: {0}")]
    Span(#[from] super::codec::DecodeError),
    #[error("--since {0:?}: give a time (2026-12-01T08:00:00Z) or an age (90s, 30m, 12h, 7d)")]
    Since(String),
}

/// The spans of one OTLP/JSON line.
pub fn decode_line(line: &str) -> Result<Vec<SpanData>, ShowError> {
    let req: ExportTraceServiceRequest = serde_json::from_str(line)?;
    let mut out = Vec::new();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(super::codec::span_data(s)?);
            }
        }
    }
    Ok(out)
}

/// `2026-12-01T08:00:00Z`, or an age before `now`: `90s`, `30m`, `12h`, `7d`.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, ShowError> {
    let bad = || ShowError::Since(s.to_owned());
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        let ns = ts.as_nanosecond();
        return u64::try_from(ns).map(|ns| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)).map_err(|_| bad());
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    Ok(now.checked_sub(Duration::from_secs(secs)).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// An audit id as Kubernetes prints it (`6d1c0b1e-2f0e-...`) or as a trace id (no dashes):
/// compared without dashes, case-insensitively.
fn audit_key(s: &str) -> String {
    s.chars().filter(|c| *c != '-').flat_map(char::to_lowercase).collect()
}

/// Which sessions to show; every condition set must hold (each on any span of the session:
/// podtrail repeats the session's identity and pod on every span).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub user: Option<String>,
    /// Sessions that started at or after this.
    pub since: Option<SystemTime>,
    /// An audit id with or without dashes, or a trace id.
    pub audit_id: Option<String>,
}

fn string_attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a str> {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).and_then(|kv| match &kv.value {
        Value::String(v) => Some(v.as_str()),
        _ => None,
    })
}

impl Filter {
    pub fn keeps(&self, spans: &[SpanData]) -> bool {
        let has = |key: &str, want: &Option<String>| match want {
            None => true,
            Some(w) => spans.iter().any(|s| string_attr(s, key) == Some(w.as_str())),
        };
        if !(has("k8s.namespace.name", &self.namespace)
            && has("k8s.pod.name", &self.pod)
            && has("user.name", &self.user))
        {
            return false;
        }
        if let Some(since) = self.since {
            if spans.iter().map(|s| s.start_time).min().is_none_or(|start| start < since) {
                return false;
            }
        }
        if let Some(id) = &self.audit_id {
            let want = audit_key(id);
            let by_trace = spans.iter().any(|s| format!("{}", s.span_context.trace_id()) == want);
            let by_attr = spans.iter().any(|s| string_attr(s, keys::K8S_AUDIT_ID).map(audit_key) == Some(want.clone()));
            if !(by_trace || by_attr) {
                return false;
            }
        }
        true
    }
}

/// Spans gathered by trace until each session's root arrives.
#[derive(Default)]
pub struct Sessions {
    pending: HashMap<TraceId, Vec<SpanData>>,
    /// Traces in the order their first span was read.
    order: Vec<TraceId>,
}

impl Sessions {
    /// Adds spans; returns the sessions whose root was among them, in the order read. The
    /// agent's own trace is not a session and is left out.
    pub fn push(&mut self, spans: Vec<SpanData>) -> Vec<Vec<SpanData>> {
        let mut done = Vec::new();
        for s in spans {
            if s.attributes.iter().any(|kv| kv.key.as_str() == keys::AGENT_EVENT) {
                continue;
            }
            let t = s.span_context.trace_id();
            let root = s.parent_span_id == SpanId::INVALID;
            let entry = self.pending.entry(t).or_insert_with(|| {
                self.order.push(t);
                Vec::new()
            });
            entry.push(s);
            if root {
                done.push(t);
            }
        }
        done.into_iter().filter_map(|t| self.take(t)).collect()
    }

    fn take(&mut self, t: TraceId) -> Option<Vec<SpanData>> {
        self.order.retain(|x| *x != t);
        self.pending.remove(&t)
    }

    /// Every session still waiting (its root was never read), in the order read.
    pub fn drain(&mut self) -> Vec<Vec<SpanData>> {
        let order = std::mem::take(&mut self.order);
        order.into_iter().filter_map(|t| self.pending.remove(&t)).collect()
    }

    /// The `n` sessions read first that still wait for their root (a reader that cannot wait
    /// for ever shows them as they are).
    pub fn drain_oldest(&mut self, n: usize) -> Vec<Vec<SpanData>> {
        let n = n.min(self.order.len());
        let oldest: Vec<TraceId> = self.order.drain(..n).collect();
        oldest.into_iter().filter_map(|t| self.pending.remove(&t)).collect()
    }

    /// Sessions waiting for their root.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

/// A whole session's text, as the console prints it.
pub fn render(spans: &[SpanData]) -> String {
    super::console::render_session(spans)
}

/// Start of a session (its earliest span): files are shown oldest session first.
pub fn started(spans: &[SpanData]) -> SystemTime {
    spans.iter().map(|s| s.start_time).min().unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age_and_refuses_the_rest() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - Duration::from_secs(1800));
        assert_eq!(parse_since("7d", now).unwrap(), now - Duration::from_secs(7 * 86_400));
        assert_eq!(
            parse_since("2026-12-01T08:00:00Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_112_000)
        );
        for bad in ["", "m", "10w", "yesterday", "-5m"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_audit_id_matches_with_or_without_dashes() {
        assert_eq!(audit_key("6D1C0B1E-2f0e-4a53-9c0e-3f3a5d2b8f11"), "6d1c0b1e2f0e4a539c0e3f3a5d2b8f11");
        assert_eq!(audit_key("6d1c0b1e2f0e4a539c0e3f3a5d2b8f11"), "6d1c0b1e2f0e4a539c0e3f3a5d2b8f11");
    }

    #[test]
    fn a_line_that_is_not_otlp_json_is_an_error_not_a_panic() {
        assert!(decode_line("{not json").is_err());
        assert!(decode_line("[1,2]").is_err());
        assert!(decode_line(r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#).is_err());
        assert!(decode_line(r#"{"resourceSpans":[]}"#).unwrap().is_empty());
    }
}
