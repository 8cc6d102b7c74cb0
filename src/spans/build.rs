//! Pure functions, one per span kind: the request (root), a process image, a connect. They
//! know nothing of channels or time-outs; `session.rs` decides when to call them.
//!
//! In: `SessionInfo`, `ProcessRecord`, `ConnectRecord`, an optional [`SessionIdentity`].
//! Out: `SpanData` with ids from [`super::ids`] and times from the events (via `BootClock`),
//! never from the clock at export. Nothing is dropped here; budgets live in `budget.rs`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_semantic_conventions::attribute as sc;

use super::config::SpansConfig;
use super::identity::SessionIdentity;
use super::{ids, keys};
use crate::capture::event::ExitStatus;
use crate::clock::BootClock;
use crate::model::{ConnectOutcome, ConnectRecord, ContainerInfo, FileRecord, NetOp, ProcessRecord, SessionInfo};
use crate::text::{basename, escape};

mod common;
mod process;
mod shared;
mod transcript;
pub(crate) use common::with_common;
pub use common::{common_attributes, image_tag, session_kind};
use common::{pod_extra, push_opt, session_common, strs};
pub use process::{connect_span, file_attrs, file_event, image_end_ns, image_span, net_name, CONNECT_NAME};
pub use shared::SharedAttrs;
pub use transcript::{transcript_span, LINES_TRUNCATED, LINE_INPUT, LINE_OUTPUT, TRANSCRIPT_SPAN};

/// What every builder needs: where ids come from, how to read kernel time, the budgets.
#[derive(Clone, Debug)]
pub struct BuildCtx {
    pub boot_id: [u8; 16],
    pub clock: BootClock,
    pub cfg: SpansConfig,
    /// The common attributes of the open sessions, one copy of each distinct list.
    pub shared: SharedAttrs,
}

impl BuildCtx {
    pub fn new(boot_id: [u8; 16], clock: BootClock, cfg: SpansConfig) -> Self {
        BuildCtx { boot_id, clock, cfg, shared: SharedAttrs::default() }
    }
}

/// Per-session values shared by all its spans.
#[derive(Clone, Debug)]
pub struct SessionFrame {
    pub trace_id: TraceId,
    pub root_id: SpanId,
    /// The container whose pod attributes every span of the session carries: a span reads
    /// them from its info (the info's own strings, one more count each), so a container costs
    /// no list of them (issue 15: ten `KeyValue`s of 56 B per container, as many bytes as the
    /// rest of its info).
    pub container: Arc<ContainerInfo>,
    /// The pod attributes a span does not read from the info as they are: its labels (their
    /// keys made here), the image's tag, the workload and the cluster's name, in that order.
    /// One list for the open sessions with equal ones, in any container: the replicas of a
    /// workload share one.
    pub pod_extra: Arc<[KeyValue]>,
    /// The session's kind and identity (who opened it, or that nobody is known yet), after
    /// the pod's on every span: one list for the open sessions with equal ones, so the
    /// sessions nobody is known for, in any container, share one (issue 15).
    pub session: Arc<[KeyValue]>,
}

/// The marks the root carries about what the session lost, cut or folded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootMarks {
    pub incomplete: bool,
    pub processes: u64,
    pub folded: u64,
    pub spans_capped: u64,
    /// Of `spans_capped`: process image spans, and connect (or other way out) spans.
    pub spans_capped_process: u64,
    pub spans_capped_network: u64,
    /// Spans past the first cap kept because they matter (`max_kept_spans_per_session`).
    pub spans_kept_over_cap: u64,
    pub argv_truncated: u64,
    pub args_redacted: u64,
    pub udp_unsent: u64,
    /// Connects only counted, past their image's cap on connect records.
    pub connects_over_cap: u64,
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("podtrail").with_version(env!("CARGO_PKG_VERSION")).build()
}

pub fn session_frame(ctx: &BuildCtx, info: &SessionInfo, who: Option<&SessionIdentity>) -> SessionFrame {
    SessionFrame {
        trace_id: ids::session_trace_id(&ctx.boot_id, info.id, who.and_then(|w| w.trace_id)),
        root_id: ids::root_span_id(&ctx.boot_id, info.id),
        container: info.container.clone(),
        pod_extra: ctx.shared.share(pod_extra(&ctx.cfg.cluster_name, &info.container)),
        session: ctx.shared.share(session_common(info, who)),
    }
}

/// A frame for one span, its lists not shared with the open sessions.
fn one_off_frame(
    ctx: &BuildCtx,
    trace_id: TraceId,
    root_id: SpanId,
    info: &SessionInfo,
    who: Option<&SessionIdentity>,
) -> SessionFrame {
    SessionFrame {
        trace_id,
        root_id,
        container: info.container.clone(),
        pod_extra: pod_extra(&ctx.cfg.cluster_name, &info.container).into(),
        session: session_common(info, who).into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn span(
    frame: &SessionFrame,
    id: SpanId,
    parent: SpanId,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(frame.trace_id, id, TraceFlags::SAMPLED, false, TraceState::NONE),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: kind,
        name,
        start_time: start,
        end_time: end.max(start),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope(),
    }
}

/// A built root's marks once the rules stage kept `process` image spans and `network` connect
/// spans the caps had refused ([`super::OverCap`]) because they raised an alert: no longer
/// capped, kept over the cap (the marks a root carries only when not zero stay so).
pub fn kept_for_alerts(root: &mut SpanData, process: u64, network: u64) {
    if process + network == 0 {
        return;
    }
    let mut adjust = |key: &'static str, by: i64| {
        let at = root.attributes.iter().position(|kv| kv.key.as_str() == key);
        let was = match at.map(|i| &root.attributes[i].value) {
            Some(Value::I64(v)) => *v,
            _ => 0,
        };
        let now = (was + by).max(0);
        match (at, now) {
            (Some(i), 0) => {
                root.attributes.remove(i);
            }
            (Some(i), n) => root.attributes[i] = KeyValue::new(key, n),
            (None, 0) => {}
            (None, n) => root.attributes.push(KeyValue::new(key, n)),
        }
    };
    let (p, n) = (process as i64, network as i64);
    adjust(keys::SESSION_SPANS_CAPPED, -(p + n));
    adjust(keys::SESSION_SPANS_CAPPED_PROCESS, -p);
    adjust(keys::SESSION_SPANS_CAPPED_NETWORK, -n);
    adjust(keys::SESSION_SPANS_KEPT_OVER_CAP, p + n);
}

/// The request: `kubectl exec` (attach, debug, port-forward), or `exec` when no request
/// matched. From the request (or the root's exec) to the session's end (no earlier than the
/// request's completion).
pub fn root_span(
    ctx: &BuildCtx,
    frame: &SessionFrame,
    info: &SessionInfo,
    who: Option<&SessionIdentity>,
    marks: &RootMarks,
    end_ns: u64,
) -> SpanData {
    let mut start = ctx.clock.to_system_time(info.start_ns);
    let mut end = ctx.clock.to_system_time(end_ns);
    // the container's source, incomplete, processes, a mark or two; the request's own
    let mut attrs = with_common(frame, 5 + if who.is_some() { REQUEST_ATTRS } else { 0 });
    let name = match who {
        Some(w) => {
            if let Some(s) = w.request_started {
                start = start.min(s);
            }
            if let Some(c) = w.request_completed {
                end = end.max(c);
            }
            request_attributes(&mut attrs, w);
            w.root_name()
        }
        None => root_name(info.kind),
    };
    if let Some(src) = Some(info.container.source).filter(|s| !s.is_empty()) {
        attrs.push(KeyValue::new(keys::SESSION_CONTAINER_SOURCE, src));
    }
    let incomplete = marks.incomplete || info.incomplete || info.events_lost > 0;
    attrs.push(KeyValue::new(keys::SESSION_INCOMPLETE, incomplete));
    attrs.push(KeyValue::new(keys::SESSION_PROCESSES, marks.processes as i64));
    for (k, v) in [
        (keys::SESSION_EVENTS_LOST, info.events_lost),
        (keys::SESSION_FOLDED, marks.folded),
        (keys::SESSION_SPANS_CAPPED, marks.spans_capped),
        (keys::SESSION_SPANS_CAPPED_PROCESS, marks.spans_capped_process),
        (keys::SESSION_SPANS_CAPPED_NETWORK, marks.spans_capped_network),
        (keys::SESSION_SPANS_KEPT_OVER_CAP, marks.spans_kept_over_cap),
        (keys::SESSION_ARGV_TRUNCATED, marks.argv_truncated),
        (keys::SESSION_ARGS_REDACTED, marks.args_redacted),
        (keys::SESSION_UDP_UNSENT, marks.udp_unsent),
        (keys::SESSION_CONNECTS_OVER_CAP, marks.connects_over_cap),
    ] {
        if v > 0 {
            attrs.push(KeyValue::new(k, v as i64));
        }
    }
    span(frame, frame.root_id, SpanId::INVALID, root_kind(info, who), name.into(), start, end, attrs, Status::Unset)
}

/// SERVER where a request is (or may be) behind the trace: an attributed session, or a
/// container exec or debug session whose request was not found (a runc exec is always
/// somebody's request). INTERNAL for what no request starts: outbound, workload, host,
/// watched activity and node sessions (`nsenter`): a backend that reads SERVER as "a request
/// this service handled" would count them as traffic.
pub fn root_kind(info: &SessionInfo, who: Option<&SessionIdentity>) -> SpanKind {
    use crate::model::SessionKind;
    match (who, info.kind) {
        (Some(_), _) | (None, SessionKind::Exec | SessionKind::Debug) => SpanKind::Server,
        (
            None,
            SessionKind::Node
            | SessionKind::Watched
            | SessionKind::Outbound
            | SessionKind::Workload
            | SessionKind::Host,
        ) => SpanKind::Internal,
    }
}

/// What [`request_attributes`] usually adds (tty, stdin, candidates, the command, the
/// container, the groups, the user agent, the response).
const REQUEST_ATTRS: usize = 8;

/// What the request says beyond the identity on every span: groups, client, the requested
/// command and options, how many candidates, the response. On the root, and on a late
/// attribution span.
fn request_attributes(attrs: &mut Vec<KeyValue>, w: &SessionIdentity) {
    if !w.user_groups.is_empty() {
        attrs.push(KeyValue::new(sc::USER_ROLES, strs(&w.user_groups)));
    }
    if !w.user_extra.is_empty() {
        attrs.push(KeyValue::new(keys::K8S_USER_EXTRA, strs(&w.user_extra)));
    }
    if !w.impersonated_groups.is_empty() {
        attrs.push(KeyValue::new(keys::K8S_IMPERSONATED_ROLES, strs(&w.impersonated_groups)));
    }
    push_opt(attrs, sc::USER_AGENT_ORIGINAL, &w.user_agent);
    if !w.requested_command.is_empty() {
        attrs.push(KeyValue::new(keys::K8S_COMMAND, strs(&w.requested_command)));
    }
    push_opt(attrs, keys::K8S_CONTAINER, &w.container);
    attrs.push(KeyValue::new(keys::K8S_TTY, w.tty));
    attrs.push(KeyValue::new(keys::K8S_STDIN, w.stdin));
    attrs.push(KeyValue::new(keys::ATTRIBUTION_CANDIDATES, w.candidates as i64));
    if let Some(code) = w.response_code {
        attrs.push(KeyValue::new(keys::K8S_RESPONSE_CODE, code as i64));
    }
    for (k, n) in [(keys::K8S_COMMAND_REDACTED, w.redacted), (keys::K8S_FIELDS_TRUNCATED, w.truncated)] {
        if n > 0 {
            attrs.push(KeyValue::new(k, n as i64));
        }
    }
}

/// The request that opened a session, found after the session was exported unattributed: one
/// span `attribution` under the exported root (same trace), with the identity the root would
/// have carried, `podtrail.attribution.late = true` and how long after the unattributed
/// export the record matched. It spans the request (received to complete) when the record
/// says, else the session's start.
pub fn attribution_span(
    ctx: &BuildCtx,
    trace_id: TraceId,
    root_id: SpanId,
    info: &SessionInfo,
    who: &SessionIdentity,
    delay: std::time::Duration,
) -> SpanData {
    let frame = one_off_frame(ctx, trace_id, root_id, info, Some(who));
    let mut attrs = with_common(&frame, REQUEST_ATTRS + 2);
    request_attributes(&mut attrs, who);
    attrs.push(KeyValue::new(keys::ATTRIBUTION_LATE, true));
    attrs.push(KeyValue::new(keys::ATTRIBUTION_DELAY_MS, delay.as_millis().min(i64::MAX as u128) as i64));
    let start = who.request_started.unwrap_or_else(|| ctx.clock.to_system_time(info.start_ns));
    let end = who.request_completed.unwrap_or(start);
    let id = ids::attribution_span_id(&ctx.boot_id, info.id);
    span(&frame, id, root_id, SpanKind::Internal, "attribution".into(), start, end, attrs, Status::Unset)
}

/// `session opened`: sent as soon as a session leaves the hold (attributed, or its deadline
/// passed), under the root that closes the trace at the end. It carries what the root will
/// (the identity, the pod, the request) without the totals, so a search for the user, the
/// audit id or the pod finds a session that is still open.
pub fn opened_span(
    ctx: &BuildCtx,
    frame: &SessionFrame,
    info: &SessionInfo,
    who: Option<&SessionIdentity>,
) -> SpanData {
    let mut attrs = with_common(frame, 1 + if who.is_some() { REQUEST_ATTRS } else { 0 });
    let mut start = ctx.clock.to_system_time(info.start_ns);
    if let Some(w) = who {
        request_attributes(&mut attrs, w);
        if let Some(s) = w.request_started {
            start = start.min(s);
        }
    }
    if let Some(src) = Some(info.container.source).filter(|s| !s.is_empty()) {
        attrs.push(KeyValue::new(keys::SESSION_CONTAINER_SOURCE, src));
    }
    let at = ctx.clock.to_system_time(info.start_ns).max(start);
    let id = ids::opened_span_id(&ctx.boot_id, info.id);
    span(frame, id, frame.root_id, SpanKind::Internal, OPENED_SPAN.into(), start, at, attrs, Status::Unset)
}

/// The name of [`opened_span`]'s span.
pub const OPENED_SPAN: &str = "session opened";
/// The name of a span an alert is sent as when it is raised ([`live_span`]).
pub const ALERT_SPAN: &str = "alert";

/// A span of the session sent while it is open (an alert when raised): the session's common
/// attributes, then `extra`; instantaneous at `at`.
pub fn live_span(
    frame: &SessionFrame,
    id: SpanId,
    parent: SpanId,
    name: &str,
    at: SystemTime,
    extra: Vec<KeyValue>,
) -> SpanData {
    let mut attrs = with_common(frame, extra.len());
    attrs.extend(extra);
    span(frame, id, parent, SpanKind::Internal, Cow::Owned(name.to_owned()), at, at, attrs, Status::Unset)
}

/// The root's name when no request matched: what kind of activity the trace is.
pub fn root_name(kind: crate::model::SessionKind) -> &'static str {
    use crate::model::SessionKind;
    match kind {
        SessionKind::Watched => "watched exec",
        SessionKind::Outbound => "outbound",
        SessionKind::Workload => "workload",
        SessionKind::Host => "host",
        SessionKind::Exec | SessionKind::Node | SessionKind::Debug => "exec",
    }
}

/// A request that started no process (attach to a container's main process, port-forward).
pub fn request_only_span(
    ctx: &BuildCtx,
    who: &SessionIdentity,
    container: &ContainerInfo,
    fallback_time: SystemTime,
) -> SpanData {
    let audit = who.audit_id.clone().unwrap_or_default();
    let trace_id = match who.trace_id {
        Some(t) if t != [0; 16] => TraceId::from_bytes(t),
        _ => ids::request_trace_id(&audit),
    };
    let start = who.request_started.unwrap_or(fallback_time);
    let end = who.request_completed.unwrap_or(start);
    let info = SessionInfo {
        end_ns: Some(ctx.clock.to_boot_ns(end)),
        root_argv: vec![],
        ..SessionInfo::new(
            crate::model::SessionId(crate::capture::event::ProcessKey { pid: 0, start_ns: 0 }),
            crate::model::SessionKind::Exec,
            container.clone(),
            ctx.clock.to_boot_ns(start),
        )
    };
    let frame = one_off_frame(ctx, trace_id, ids::request_span_id(&audit), &info, Some(who));
    root_span(ctx, &frame, &info, Some(who), &RootMarks::default(), ctx.clock.to_boot_ns(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_tag_is_after_the_last_slash_and_before_a_digest() {
        assert_eq!(image_tag("registry.example:5000/team/app:1.4.2"), Some("1.4.2"));
        assert_eq!(image_tag("busybox:1.36@sha256:abcd"), Some("1.36"));
        assert_eq!(image_tag("registry.example:5000/team/app"), None, "a registry port is not a tag");
        assert_eq!(image_tag("app@sha256:abcd"), None);
        assert_eq!(image_tag("app:"), None);
    }

    #[test]
    fn replicas_share_one_list_of_what_is_not_read_from_their_info() {
        let ctx = BuildCtx::new([7; 16], BootClock::fixed(0), SpansConfig::default());
        let replica = |n: u32| ContainerInfo {
            id: format!("c{n}").into(),
            pod_name: Some(format!("api-{n}").into()),
            workload_kind: Some("Deployment".into()),
            workload_name: Some("api".into()),
            image_name: Some("registry/api:1.4".into()),
            pod_labels: vec![("app".into(), "api".into())],
            ..Default::default()
        };
        let frames: Vec<SessionFrame> = (0..2)
            .map(|n| {
                let id = crate::model::SessionId(crate::capture::event::ProcessKey { pid: n + 1, start_ns: 1 });
                let info = SessionInfo::new(id, crate::model::SessionKind::Exec, replica(n), 1);
                let frame = session_frame(&ctx, &info, None);
                // a span's attributes are what they were: the list of both parts, in order
                let mut want = common_attributes(&ctx.cfg.cluster_name, &info, None);
                want.truncate(want.len() - frame.session.len());
                assert_eq!(with_common(&frame, 0)[..want.len()], want[..]);
                frame
            })
            .collect();
        assert!(Arc::ptr_eq(&frames[0].pod_extra, &frames[1].pod_extra), "one list for both replicas");
        assert!(!Arc::ptr_eq(&frames[0].container, &frames[1].container));
    }

    #[test]
    fn the_frame_points_at_the_container_info_strings() {
        let c = ContainerInfo {
            id: "c0ffee".into(),
            pod_name: Some("api-1".into()),
            node_name: Some("node-1".into()),
            pod_labels: vec![("app".into(), "api".into())],
            ..Default::default()
        };
        let info = SessionInfo::new(
            crate::model::SessionId(crate::capture::event::ProcessKey { pid: 1, start_ns: 1 }),
            crate::model::SessionKind::Exec,
            c,
            1,
        );
        let attrs = common_attributes("", &info, None);
        let at = |key: &str| match attrs.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value) {
            Some(Value::String(s)) => s.as_str().as_ptr(),
            other => panic!("{key}: {other:?}"),
        };
        let c = &info.container;
        assert!(std::ptr::eq(at(sc::CONTAINER_ID), c.id.as_ptr()));
        assert!(std::ptr::eq(at(sc::K8S_POD_NAME), c.pod_name.as_deref().unwrap().as_ptr()));
        assert!(std::ptr::eq(at(sc::K8S_NODE_NAME), c.node_name.as_deref().unwrap().as_ptr()));
        assert!(std::ptr::eq(at("k8s.pod.label.app"), c.pod_labels[0].1.as_ptr()));
    }
}
