//! Alerts as OTLP log records: each `alert` span the rules stage raised also leaves as a log
//! record carrying that span's trace id and span id, so a log backend (Loki, Elasticsearch,
//! the collector's logs pipeline) links the line to the trace, and an alerting tool built on
//! logs sees podtrail's alerts without reading traces.
//!
//! The record: time of the alert; the alert span's trace and span ids; severity as OTLP's
//! number (info INFO 9, low WARN 13, medium WARN3 15, high ERROR 17, critical FATAL 21) and
//! the rule's own word as the severity text; body `RULE: DESCRIPTION`; event name
//! `podtrail.alert`; attributes: every attribute of the alert span (`security_rule.*`,
//! `podtrail.alert.severity(_number)`, the session's identity and pod: `user.name`,
//! `client.address`, `k8s.*`, `container.id`, the audit id).
//!
//! Why a span exporter: the alert span is what the export stage already queues. This sink is
//! fed only alert spans (by [`super::run_export`]) through its own queue, on disk for
//! `podtrail run` like the OTLP trace sink's: the same retries without a time limit, the
//! same replay after a restart, and the same endpoint, TLS and headers ([`super::otlp`]).
//! In: `SpanData` batches (anything that is not an alert span is skipped). Out: one OTLP logs
//! export request per batch. Dropped: what its queue counts (`podtrail_alert_logs_lost_total`).

use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::TraceFlags;
use opentelemetry::{InstrumentationScope, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::attribute as sc;

use crate::spans::build::ALERT_SPAN;
use crate::spans::keys;

/// The event name of every alert record.
pub const ALERT_EVENT: &str = "podtrail.alert";

/// An alert span: named `alert`, with the rule that raised it.
pub fn is_alert(span: &SpanData) -> bool {
    span.name == ALERT_SPAN && span.attributes.iter().any(|kv| kv.key.as_str() == sc::SECURITY_RULE_NAME)
}

/// OTLP's severity for a rule's severity word, and the word as the record's severity text.
pub fn severity(word: &str) -> (Severity, &'static str) {
    match word {
        "info" => (Severity::Info, "info"),
        "low" => (Severity::Warn, "low"),
        "medium" => (Severity::Warn3, "medium"),
        "high" => (Severity::Error, "high"),
        "critical" => (Severity::Fatal, "critical"),
        // a rule's severity is validated when it loads: nothing else reaches here
        _ => (Severity::Warn, "unknown"),
    }
}

fn any(v: &Value) -> AnyValue {
    use opentelemetry::Array;
    match v {
        Value::Bool(b) => AnyValue::Boolean(*b),
        Value::I64(i) => AnyValue::Int(*i),
        Value::F64(f) => AnyValue::Double(*f),
        Value::String(s) => AnyValue::String(s.clone()),
        Value::Array(Array::Bool(a)) => AnyValue::ListAny(Box::new(a.iter().map(|b| AnyValue::Boolean(*b)).collect())),
        Value::Array(Array::I64(a)) => AnyValue::ListAny(Box::new(a.iter().map(|i| AnyValue::Int(*i)).collect())),
        Value::Array(Array::F64(a)) => AnyValue::ListAny(Box::new(a.iter().map(|f| AnyValue::Double(*f)).collect())),
        Value::Array(Array::String(a)) => {
            AnyValue::ListAny(Box::new(a.iter().map(|s| AnyValue::String(s.clone())).collect()))
        }
        other => AnyValue::String(other.to_string().into()),
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

/// Fills `rec` from an alert span (see the module's header for what goes where).
pub fn fill(rec: &mut SdkLogRecord, span: &SpanData) {
    rec.set_event_name(ALERT_EVENT);
    rec.set_timestamp(span.start_time);
    rec.set_observed_timestamp(SystemTime::now());
    let ctx = &span.span_context;
    rec.set_trace_context(ctx.trace_id(), ctx.span_id(), Some(TraceFlags::SAMPLED));
    let word = attr(span, keys::ALERT_SEVERITY).map(|v| v.as_str().into_owned()).unwrap_or_default();
    let (number, text) = severity(&word);
    rec.set_severity_number(number);
    rec.set_severity_text(text);
    let rule = attr(span, sc::SECURITY_RULE_NAME).map(|v| v.as_str().into_owned()).unwrap_or_default();
    let body = match attr(span, sc::SECURITY_RULE_DESCRIPTION) {
        Some(d) => format!("{rule}: {}", d.as_str()),
        None => rule,
    };
    rec.set_body(AnyValue::String(body.into()));
    rec.add_attributes(span.attributes.iter().map(|kv| (kv.key.clone(), any(&kv.value))));
}

/// The OTLP log exporter behind a span exporter's face: alert spans in, log records out.
#[derive(Debug)]
pub struct AlertLogExporter {
    inner: opentelemetry_otlp::LogExporter,
    /// Makes the records (the SDK builds them only through a logger); it has no processor:
    /// nothing is emitted through it.
    logger: SdkLogger,
    scope: InstrumentationScope,
}

impl AlertLogExporter {
    pub fn new(mut inner: opentelemetry_otlp::LogExporter, resource: &Resource) -> Self {
        inner.set_resource(resource);
        let scope = InstrumentationScope::builder("podtrail").with_version(env!("CARGO_PKG_VERSION")).build();
        let logger = SdkLoggerProvider::builder().build().logger_with_scope(scope.clone());
        AlertLogExporter { inner, logger, scope }
    }

    /// The records of the alert spans in `batch`.
    pub fn records(&self, batch: &[SpanData]) -> Vec<SdkLogRecord> {
        batch
            .iter()
            .filter(|s| is_alert(s))
            .map(|s| {
                let mut rec = self.logger.create_log_record();
                fill(&mut rec, s);
                rec
            })
            .collect()
    }
}

impl SpanExporter for AlertLogExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let records = self.records(&batch);
        if records.is_empty() {
            return Ok(());
        }
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> = records.iter().map(|r| (r, &self.scope)).collect();
        // LogBatch::new is public but documented as meant for the SDK's own processors: the
        // records here have their time and ids from the alert, not from a logging call,
        // which no SDK logging path can express (as with spans: SpanData, not the Tracer).
        self.inner.export(LogBatch::new(&refs)).await
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_sort_in_otlp_order_and_keep_the_rule_word() {
        let words = ["info", "low", "medium", "high", "critical"];
        let numbers: Vec<i32> = words.iter().map(|w| severity(w).0 as i32).collect();
        assert_eq!(numbers, vec![9, 13, 15, 17, 21]);
        assert_eq!(words.map(|w| severity(w).1), words);
    }

    #[test]
    fn values_keep_their_type() {
        assert_eq!(any(&Value::I64(3)), AnyValue::Int(3));
        assert_eq!(any(&Value::Bool(true)), AnyValue::Boolean(true));
        let arr = Value::Array(opentelemetry::Array::String(vec!["a".into(), "b".into()]));
        assert_eq!(
            any(&arr),
            AnyValue::ListAny(Box::new(vec![AnyValue::String("a".into()), AnyValue::String("b".into())]))
        );
    }
}
