"""An alert leaves twice: as an `alert` span in the trace and as an OTLP log record. Here, in
the real cluster: a real `kubectl exec` that wipes the shell history raises the history rule;
the record reaches the real collector's logs pipeline (the shipped config's debug exporter,
`verbosity: detailed`, writes it to the collector's log), and its trace and span ids name an
`alert` span that the real Tempo holds, in the exec's trace (the audit id)."""
import re

from conftest import NAMESPACE, eventually
from test_exec import tempo_trace

RULE = "Shell history tampering"


def log_records(text):
    """The log records in the collector's debug output: per `LogRecord #n` block, its fields
    (`Name: value`) and its attributes (`-> key: Type(value)`, kept as `value`)."""
    out = []
    for block in text.split("LogRecord #")[1:]:
        rec = {"attrs": {}}
        for line in block.splitlines()[1:]:
            line = line.strip()
            if line.startswith(("ResourceLog #", "ScopeLogs #")):
                break
            if line.startswith("-> "):
                k, _, v = line[3:].partition(": ")
                m = re.fullmatch(r"\w+\((.*)\)", v)
                rec["attrs"][k] = m.group(1) if m else v
            elif ": " in line:
                k, _, v = line.partition(": ")
                rec[k] = v
        out.append(rec)
    return out


def test_an_alert_record_names_the_alert_span_tempo_holds(cluster, pods):
    log = cluster.work / "collector" / "collector.log"
    assert log.exists(), f"no collector log at {log}"
    marker = "alert-log-probe"
    cluster.kubectl("-n", NAMESPACE, "exec", "shell", "--", "sh", "-c",
                    f"echo {marker}; echo ls >> /root/.ash_history; cat /dev/null > /root/.ash_history",
                    user="alice")
    ids = [e["auditID"] for e in cluster.audit_events()
           if (e.get("objectRef") or {}).get("name") == "shell" and marker in e.get("requestURI", "")]
    assert ids, "the exec is not in the audit log"
    trace_id = ids[0].replace("-", "")

    def record():
        for r in log_records(log.read_text(errors="replace")):
            if r.get("Trace ID") == trace_id and r["attrs"].get("security_rule.name") == RULE:
                return r
        return None

    rec = eventually(f"an alert log record of trace {trace_id} in the collector's log", record, timeout=90,
                     interval=1)
    assert rec["attrs"].get("user.name") == "alice@example.com", rec
    assert rec["attrs"].get("k8s.pod.name") == "shell", rec
    assert rec.get("SeverityNumber", "").startswith(("Warn", "Error")), rec
    span_id = rec["Span ID"]
    t = tempo_trace(cluster, ids[0], lambda t: span_id in t.by_id)
    span = t.by_id[span_id]
    assert span.name == "alert", f"the record's span id names {span}, not an alert span:\n{t.tree()}"
    assert span.get("security_rule.name") == RULE, span.attrs
