//! podtrail's own attribute keys (everything under `podtrail.`), and the list of semantic
//! convention keys the span builder emits. One table: `docs/attributes.md` documents both, and
//! a test (`keys_match_the_documented_table`) fails when either side has a key the other lacks.
//!
//! In: nothing. Out: `&'static str` constants. Semantic-convention keys come from
//! `opentelemetry_semantic_conventions`; they are listed here only so the test can see them.

use opentelemetry_semantic_conventions::attribute as sc;

// Attribution: who opened the session and how sure the join is.
pub const ATTRIBUTION_SOURCE: &str = "podtrail.attribution.source";
pub const ATTRIBUTION_CONFIDENCE: &str = "podtrail.attribution.confidence";
pub const ATTRIBUTION_CANDIDATES: &str = "podtrail.attribution.candidates";
/// `false` when the record came from a client that proved no identity (an admission webhook
/// without client authentication); absent when verified.
pub const ATTRIBUTION_VERIFIED: &str = "podtrail.attribution.verified";
/// On the `attribution` span a record that arrived after the session was exported adds.
pub const ATTRIBUTION_LATE: &str = "podtrail.attribution.late";
pub const ATTRIBUTION_DELAY_MS: &str = "podtrail.attribution.delay_ms";
pub const K8S_AUDIT_ID: &str = "podtrail.k8s.audit_id";
/// Audit `user.extra` as `key=value` strings (cloud identities such as an EKS `arn`).
pub const K8S_USER_EXTRA: &str = "podtrail.k8s.user.extra";
pub const K8S_IMPERSONATED_NAME: &str = "podtrail.k8s.impersonated.name";
pub const K8S_IMPERSONATED_ROLES: &str = "podtrail.k8s.impersonated.roles";
pub const K8S_COMMAND: &str = "podtrail.k8s.command";
pub const K8S_CONTAINER: &str = "podtrail.k8s.container";
pub const K8S_TTY: &str = "podtrail.k8s.tty";
pub const K8S_STDIN: &str = "podtrail.k8s.stdin";
pub const K8S_RESPONSE_CODE: &str = "podtrail.k8s.response_code";
/// Values of the requested command and user agent replaced by redaction tokens.
pub const K8S_COMMAND_REDACTED: &str = "podtrail.k8s.command_redacted";
/// Client-chosen request fields cut to their cap (marked `…`).
pub const K8S_FIELDS_TRUNCATED: &str = "podtrail.k8s.fields_truncated";

// The session, marked on the root (kind also on every span).
pub const SESSION_KIND: &str = "podtrail.session.kind";
pub const SESSION_INCOMPLETE: &str = "podtrail.session.incomplete";
pub const SESSION_SPANS_LOST: &str = "podtrail.session.spans_lost";
pub const SESSION_EVENTS_LOST: &str = "podtrail.session.events_lost";
pub const SESSION_FOLDED: &str = "podtrail.session.folded";
pub const SESSION_SPANS_CAPPED: &str = "podtrail.session.spans_capped";
/// Of the capped spans: process image spans.
pub const SESSION_SPANS_CAPPED_PROCESS: &str = "podtrail.session.spans_capped.process";
/// Of the capped spans: connect and other way-out spans.
pub const SESSION_SPANS_CAPPED_NETWORK: &str = "podtrail.session.spans_capped.network";
/// Spans past the first cap kept because they matter.
pub const SESSION_SPANS_KEPT_OVER_CAP: &str = "podtrail.session.spans_kept_over_cap";
pub const SESSION_ARGV_TRUNCATED: &str = "podtrail.session.argv_truncated";
pub const SESSION_ARGS_REDACTED: &str = "podtrail.session.args_redacted";
pub const SESSION_UDP_UNSENT: &str = "podtrail.session.udp_unsent";
/// Connects only counted: past their image's cap on connect records (memory stays bounded).
pub const SESSION_CONNECTS_OVER_CAP: &str = "podtrail.session.connects_over_cap";
pub const SESSION_PROCESSES: &str = "podtrail.session.processes";
pub const SESSION_CONTAINER_SOURCE: &str = "podtrail.session.container_source";
pub const NODE_USER: &str = "podtrail.node.user";

// Process images.
pub const PROCESS_ARGV_TRUNCATED: &str = "podtrail.process.argv_truncated";
/// Values of this image's argv replaced by redaction tokens (`crate::redact`).
pub const PROCESS_ARGS_REDACTED: &str = "podtrail.process.args_redacted";
pub const PROCESS_FILELESS: &str = "podtrail.process.fileless";
pub const PROCESS_INHERITED: &str = "podtrail.process.inherited";
pub const PROCESS_EXIT_SIGNAL: &str = "podtrail.process.exit.signal";
pub const PROCESS_INTERPRETER: &str = "podtrail.process.interpreter";
/// The watched tool an image runs, by content or name (`tcpdump` for a renamed copy too).
pub const PROCESS_IDENTITY: &str = "podtrail.process.identity";
/// The program a dynamic loader ran (`ld.so /tmp/x`: `/tmp/x`).
pub const PROCESS_LOADER_PROGRAM: &str = "podtrail.process.loader.program";
pub const FOLDED_COUNT: &str = "podtrail.folded.count";

// Connects.
pub const NETWORK_OUTCOME: &str = "podtrail.network.outcome";
pub const NETWORK_DESTINATION_SCOPE: &str = "podtrail.network.destination.scope";
/// Where `server.address`'s name came from: `dns` (an answer the container received), or
/// `unknown` (no answer named the address: `server.address` is the IP).
pub const NETWORK_DESTINATION_NAME_SOURCE: &str = "podtrail.network.destination.name_source";
/// The IP the process asked for, when `server.address` holds its name and the socket reached
/// another address (`network.peer.address`).
pub const NETWORK_DESTINATION_ADDRESS: &str = "podtrail.network.destination.address";
/// On spans of the ways out that are not a connect: `sendto`, `listen`, `accept`, `socket`
/// (absent on connect spans).
pub const NETWORK_OPERATION: &str = "podtrail.network.operation";

// Activity outside sessions (issue 6).
/// On an outbound record's connect span: connects of the same container the rate limit
/// suppressed since that container's previous record.
pub const ACTIVITY_SUPPRESSED: &str = "podtrail.activity.suppressed";

// The agent's own run (coverage gaps, export trouble): written as `tracing` fields in
// src/export (crate::diag); these name them for the table.
pub const AGENT_EVENT: &str = "podtrail.agent.event";
pub const AGENT_SESSIONS_EXPORTED: &str = "podtrail.agent.sessions_exported";
pub const AGENT_SESSIONS_INCOMPLETE: &str = "podtrail.agent.sessions_incomplete";
/// On a `gap` span: the pid of the agent that stopped uncleanly before this one.
pub const AGENT_GAP_PREVIOUS_PID: &str = "podtrail.agent.gap.previous_pid";
/// On a `gap` span: what its start is (`heartbeat`: the previous agent's last one).
pub const AGENT_GAP_FROM: &str = "podtrail.agent.gap.from";
/// On the `start` span: spans the previous run left in the durable queue, sent by this one.
pub const AGENT_QUEUE_REPLAYED: &str = "podtrail.agent.queue.replayed";
/// On an `export_trouble` span (an outage of a durable sink's backend): the sink.
pub const AGENT_SINK: &str = "podtrail.agent.sink";
/// On an `export_trouble` span: the first failure.
pub const AGENT_ERROR: &str = "podtrail.agent.error";

// Written by other stages (alerts), documented in the same table.
pub const ALERTS_COUNT: &str = "podtrail.alerts.count";
pub const ALERTS_MAX_SEVERITY: &str = "podtrail.alerts.max_severity";
/// `ALERTS_MAX_SEVERITY` as a number (info 1 ... critical 5), so "worst first" can sort.
pub const ALERTS_MAX_SEVERITY_NUMBER: &str = "podtrail.alerts.max_severity_number";
pub const ALERTS_RULES: &str = "podtrail.alerts.rules";
/// On each `alert` span event, beside `security_rule.*`.
pub const ALERT_SEVERITY: &str = "podtrail.alert.severity";
pub const ALERT_SEVERITY_NUMBER: &str = "podtrail.alert.severity_number";
/// On an `alert` span (an alert sent when raised): the span it is about (hex span id).
pub const ALERT_SPAN_ID: &str = "podtrail.alert.span_id";

// File operations: span events on the process image span (and on file alerts).
pub const FILE_OP: &str = "podtrail.file.op";
pub const FILE_PATH2: &str = "podtrail.file.path2";
pub const FILE_WRITE: &str = "podtrail.file.write";
pub const FILE_FLAGS: &str = "podtrail.file.flags";
pub const FILE_ERROR: &str = "podtrail.file.error";
pub const FILE_TRUNCATED: &str = "podtrail.file.truncated";
/// The name the process gave for a file it reached by another (a symlink, a hard link,
/// `/proc/self/fd/N`); `file.path` is then the file itself, from the kernel's dentries.
pub const FILE_GIVEN_PATH: &str = "podtrail.file.given_path";
/// The file a watched name led to, when another (a history replaced by a symlink).
pub const FILE_RESOLVED_PATH: &str = "podtrail.file.resolved_path";
/// An operation submitted through io_uring: its opcode (`write`, `openat`, `connect`...).
pub const FILE_IO_URING_OP: &str = "podtrail.file.io_uring.op";

/// Every `podtrail.` key above.
// The terminal transcript (`transcript` spans, one event per line).
/// On a `transcript` span: its number in the session (0, 1, ...).
pub const TRANSCRIPT_SEQ: &str = "podtrail.transcript.seq";
/// On a `transcript` span: lines it holds (its events).
pub const TRANSCRIPT_LINES: &str = "podtrail.transcript.lines";
/// On the session's last `transcript` span: true.
pub const TRANSCRIPT_LAST: &str = "podtrail.transcript.last";
/// Lines past `transcript.max_lines`, counted, not kept (so far; final on the last span).
pub const TRANSCRIPT_LINES_DROPPED: &str = "podtrail.transcript.lines_dropped";
/// Input bytes the kernel's per-session budget (or a read's slot) refused.
pub const TRANSCRIPT_CUT_BYTES: &str = "podtrail.transcript.cut_bytes";
/// Output bytes refused likewise (with `transcript.output`).
pub const TRANSCRIPT_OUTPUT_CUT_BYTES: &str = "podtrail.transcript.output_cut_bytes";
/// Reads at a password prompt (echo off), never copied.
pub const TRANSCRIPT_SECRET_READS: &str = "podtrail.transcript.secret_reads";
/// On a line event: the line, edited, redacted and capped.
pub const TRANSCRIPT_LINE: &str = "podtrail.transcript.line";
/// On a line event read at a password prompt: its length; the line itself is never recorded.
pub const TRANSCRIPT_SECRET_BYTES: &str = "podtrail.transcript.secret_bytes";
/// On a line event: bytes cut off the line (longer than `transcript.max_line_bytes`).
pub const TRANSCRIPT_LINE_CUT_BYTES: &str = "podtrail.transcript.line_cut_bytes";
/// On a line event: the session ended before the line did.
pub const TRANSCRIPT_UNTERMINATED: &str = "podtrail.transcript.unterminated";
/// On a line event: values replaced by redaction tokens.
pub const TRANSCRIPT_REDACTED: &str = "podtrail.transcript.redacted";

pub const PODTRAIL_KEYS: &[&str] = &[
    TRANSCRIPT_SEQ,
    TRANSCRIPT_LINES,
    TRANSCRIPT_LAST,
    TRANSCRIPT_LINES_DROPPED,
    TRANSCRIPT_CUT_BYTES,
    TRANSCRIPT_OUTPUT_CUT_BYTES,
    TRANSCRIPT_SECRET_READS,
    TRANSCRIPT_LINE,
    TRANSCRIPT_SECRET_BYTES,
    TRANSCRIPT_LINE_CUT_BYTES,
    TRANSCRIPT_UNTERMINATED,
    TRANSCRIPT_REDACTED,
    ATTRIBUTION_SOURCE,
    ATTRIBUTION_CONFIDENCE,
    ATTRIBUTION_CANDIDATES,
    ATTRIBUTION_VERIFIED,
    ATTRIBUTION_LATE,
    ATTRIBUTION_DELAY_MS,
    K8S_AUDIT_ID,
    K8S_USER_EXTRA,
    K8S_IMPERSONATED_NAME,
    K8S_IMPERSONATED_ROLES,
    K8S_COMMAND,
    K8S_CONTAINER,
    K8S_TTY,
    K8S_STDIN,
    K8S_RESPONSE_CODE,
    K8S_COMMAND_REDACTED,
    K8S_FIELDS_TRUNCATED,
    SESSION_KIND,
    SESSION_INCOMPLETE,
    SESSION_SPANS_LOST,
    SESSION_EVENTS_LOST,
    SESSION_FOLDED,
    SESSION_SPANS_CAPPED,
    SESSION_SPANS_CAPPED_PROCESS,
    SESSION_SPANS_CAPPED_NETWORK,
    SESSION_SPANS_KEPT_OVER_CAP,
    SESSION_ARGV_TRUNCATED,
    SESSION_ARGS_REDACTED,
    SESSION_UDP_UNSENT,
    SESSION_CONNECTS_OVER_CAP,
    SESSION_PROCESSES,
    SESSION_CONTAINER_SOURCE,
    NODE_USER,
    NETWORK_OPERATION,
    PROCESS_IDENTITY,
    PROCESS_LOADER_PROGRAM,
    PROCESS_ARGV_TRUNCATED,
    PROCESS_ARGS_REDACTED,
    PROCESS_FILELESS,
    PROCESS_INHERITED,
    PROCESS_EXIT_SIGNAL,
    PROCESS_INTERPRETER,
    FOLDED_COUNT,
    NETWORK_OUTCOME,
    NETWORK_DESTINATION_SCOPE,
    NETWORK_DESTINATION_NAME_SOURCE,
    NETWORK_DESTINATION_ADDRESS,
    ACTIVITY_SUPPRESSED,
    AGENT_EVENT,
    AGENT_SESSIONS_EXPORTED,
    AGENT_SESSIONS_INCOMPLETE,
    AGENT_GAP_PREVIOUS_PID,
    AGENT_GAP_FROM,
    AGENT_QUEUE_REPLAYED,
    AGENT_SINK,
    AGENT_ERROR,
    ALERTS_COUNT,
    ALERTS_MAX_SEVERITY,
    ALERTS_MAX_SEVERITY_NUMBER,
    ALERTS_RULES,
    ALERT_SEVERITY,
    ALERT_SEVERITY_NUMBER,
    ALERT_SPAN_ID,
    FILE_OP,
    FILE_PATH2,
    FILE_WRITE,
    FILE_FLAGS,
    FILE_ERROR,
    FILE_TRUNCATED,
    FILE_GIVEN_PATH,
    FILE_RESOLVED_PATH,
    FILE_IO_URING_OP,
];

/// Every semantic-convention key podtrail emits, on spans or on the resource.
pub const SEMCONV_KEYS: &[&str] = &[
    sc::SERVICE_NAME,
    sc::SERVICE_VERSION,
    sc::SERVICE_INSTANCE_ID,
    sc::HOST_NAME,
    sc::HOST_IP,
    sc::HOST_MAC,
    sc::K8S_CLUSTER_NAME,
    sc::K8S_NODE_NAME,
    sc::K8S_NAMESPACE_NAME,
    sc::K8S_POD_NAME,
    sc::K8S_POD_UID,
    // `k8s.pod.label.<key>`: one per configured label the pod has (`kube.pod_labels`)
    sc::K8S_POD_LABEL,
    sc::K8S_CONTAINER_NAME,
    sc::CONTAINER_ID,
    sc::CONTAINER_IMAGE_NAME,
    sc::CONTAINER_IMAGE_ID,
    sc::CONTAINER_IMAGE_TAGS,
    sc::K8S_DEPLOYMENT_NAME,
    sc::K8S_STATEFULSET_NAME,
    sc::K8S_DAEMONSET_NAME,
    sc::K8S_REPLICASET_NAME,
    sc::K8S_JOB_NAME,
    sc::K8S_CRONJOB_NAME,
    sc::USER_NAME,
    sc::USER_ID,
    sc::USER_ROLES,
    sc::CLIENT_ADDRESS,
    sc::USER_AGENT_ORIGINAL,
    sc::PROCESS_PID,
    sc::PROCESS_PARENT_PID,
    sc::PROCESS_VPID,
    sc::PROCESS_EXECUTABLE_NAME,
    sc::PROCESS_EXECUTABLE_PATH,
    sc::PROCESS_WORKING_DIRECTORY,
    sc::PROCESS_COMMAND,
    sc::PROCESS_COMMAND_ARGS,
    sc::PROCESS_USER_ID,
    sc::PROCESS_REAL_USER_ID,
    sc::PROCESS_EXIT_CODE,
    sc::PROCESS_INTERACTIVE,
    sc::SERVER_ADDRESS,
    sc::SERVER_PORT,
    sc::NETWORK_PEER_ADDRESS,
    sc::NETWORK_PEER_PORT,
    sc::NETWORK_LOCAL_ADDRESS,
    sc::NETWORK_LOCAL_PORT,
    sc::NETWORK_TRANSPORT,
    sc::NETWORK_TYPE,
    sc::ERROR_TYPE,
    sc::FILE_PATH,
    sc::SECURITY_RULE_NAME,
    sc::SECURITY_RULE_DESCRIPTION,
    sc::SECURITY_RULE_CATEGORY,
    sc::SECURITY_RULE_RULESET_NAME,
    sc::SECURITY_RULE_REFERENCE,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// First-column keys of the table in docs/attributes.md.
    fn documented() -> BTreeSet<String> {
        let doc = include_str!("../../docs/attributes.md");
        doc.lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn keys_match_the_documented_table() {
        let doc = documented();
        let code: BTreeSet<String> = PODTRAIL_KEYS.iter().chain(SEMCONV_KEYS).map(|k| k.to_string()).collect();
        let undocumented: Vec<_> = code.difference(&doc).collect();
        let unknown: Vec<_> = doc.difference(&code).collect();
        assert!(undocumented.is_empty(), "keys emitted but not in docs/attributes.md: {undocumented:?}");
        assert!(unknown.is_empty(), "keys in docs/attributes.md that podtrail does not emit: {unknown:?}");
    }

    #[test]
    fn own_keys_are_namespaced_and_unique() {
        let mut seen = BTreeSet::new();
        for k in PODTRAIL_KEYS {
            assert!(k.starts_with("podtrail."), "{k}");
            assert!(seen.insert(*k), "duplicate key {k}");
        }
    }
}
