//! Recorded sessions through the span stage and the rules stage, as `podtrail run` wires
//! them (the rules stage reads the span stage's output), and what fired where.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;
use podtrail::capture::event::FileOp;
use podtrail::clock::BootClock;
use podtrail::model::{FileRecord, SessionInfo, SessionUpdate};
use podtrail::rules::{lang, AlertStage, RuleSource, RulesConfig};
use podtrail::scope::ScopeConfig;
use podtrail::spans::{Attributor, BuildCtx, NoAttributor, Output, SessionIdentity, SpanStage, SpansConfig};

use super::sessions::{link_parent_images, mark_leaves, S};

pub const BOOT: [u8; 16] = [0xb0; 16];
pub const EPOCH: u64 = 1_700_000_000 * S;

#[derive(Default)]
pub struct Run {
    pub who: Option<SessionIdentity>,
    pub attribution_configured: bool,
    pub scope: ScopeConfig,
    /// None: the shipped rules.
    pub rules: Option<&'static str>,
    /// `podtrail_alerts_total`, counted as `podtrail run` counts it.
    pub counter: podtrail::metrics::AlertCounter,
    /// Changes to the span stage's defaults (the span caps).
    pub tune: Option<fn(&mut SpansConfig)>,
    /// Mark the records the process stage would call leaves ([`mark_leaves`]).
    pub leaves: bool,
}

impl Run {
    pub fn spans(self, updates: Vec<SessionUpdate>) -> Vec<SpanData> {
        self.steps(updates).concat()
    }

    /// The spans that left after each update, in order, then those of the shutdown.
    pub fn steps(self, updates: Vec<SessionUpdate>) -> Vec<Vec<SpanData>> {
        let rules = match self.rules {
            None => RuleSource::load(RulesConfig::default()).unwrap().0.rules(),
            Some(text) => {
                let (r, e) = lang::parse(text, "test", "test");
                assert!(e.is_empty(), "{e:?}");
                Arc::new(r)
            }
        };
        let inner: Arc<dyn Attributor> = match self.who {
            Some(w) => Arc::new(move |_: &SessionInfo| Some(w.clone())),
            None => Arc::new(NoAttributor),
        };
        let clock = BootClock::fixed(EPOCH);
        let mut cfg = SpansConfig { scope: self.scope.clone(), ..SpansConfig::default() };
        if let Some(tune) = self.tune {
            tune(&mut cfg);
        }
        let room = cfg.max_kept_spans_per_session.saturating_sub(cfg.max_spans_per_session) as u64;
        let mut alerts = AlertStage::new(BOOT, clock, self.scope, self.attribution_configured)
            .counting(self.counter.clone())
            .keeping(room);
        let mut stage = SpanStage::new(BuildCtx::new(BOOT, clock, cfg), inner).with_records();
        let mut spans = Vec::new();
        let updates = link_parent_images(updates);
        let updates = if self.leaves { mark_leaves(updates) } else { updates };
        for u in updates {
            let mut out = Output::default();
            stage.update(u, Instant::now(), &mut out);
            alerts.annotate(&rules, &mut out);
            spans.push(out.spans.into_iter().map(|(_, b)| b.span).collect());
        }
        let mut out = Output::default();
        stage.shutdown(99 * S, &mut out);
        alerts.annotate(&rules, &mut out);
        spans.push(out.spans.into_iter().map(|(_, b)| b.span).collect());
        assert_eq!(alerts.open(), 0, "the rules stage forgets ended sessions");
        spans
    }
}

fn event_attr(e: &opentelemetry::trace::Event, key: &str) -> Option<String> {
    e.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// A span as a test names it: its name, and for a connect (named only `connect`) its
/// destination from `server.*`: `connect 10.0.0.1:443`.
pub fn label(s: &SpanData) -> String {
    let get = |k: &str| s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
    match (s.name.as_ref(), get("server.address"), get("server.port")) {
        ("connect", Some(a), Some(p)) => format!("connect {a}:{p}"),
        _ => s.name.to_string(),
    }
}

/// (span label, rule name) of every alert, in span order.
pub fn fired(spans: &[SpanData]) -> Vec<(String, String)> {
    spans
        .iter()
        .flat_map(|s| {
            s.events
                .iter()
                .filter(|e| e.name == "alert")
                .map(move |e| (label(s), event_attr(e, "security_rule.name").unwrap_or_default()))
        })
        .collect()
}

/// Spans on which `rule` fired.
pub fn fired_on(spans: &[SpanData], rule: &str) -> Vec<String> {
    fired(spans).into_iter().filter(|(_, r)| r == rule).map(|(s, _)| s).collect()
}

pub fn root_attr(spans: &[SpanData], key: &str) -> Option<String> {
    let root = spans.last().expect("a root");
    root.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| match &kv.value {
        Value::Array(a) => a.to_string(),
        v => v.to_string(),
    })
}

pub fn file(ts: u64, op: FileOp, path: &str, path2: Option<&str>, write: bool, flags: u32) -> FileRecord {
    FileRecord {
        ts_ns: ts,
        op,
        write,
        flags,
        path: path.as_bytes().to_vec(),
        path2: path2.map(|p| p.as_bytes().to_vec()),
        result: 0,
        truncated: false,
        given: None,
        resolved: None,
        io_uring: None,
    }
}

pub const O_WRONLY: u32 = 0o1;
pub const O_CREAT: u32 = 0o100;
pub const O_TRUNC: u32 = 0o1000;
pub const O_APPEND: u32 = 0o2000;
