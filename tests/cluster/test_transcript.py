"""The terminal transcript through the real cluster (issue 18): a real `kubectl exec -it` by
alice on a real pseudo-terminal types shell builtins that never exec (`unset HISTFILE`,
`history -c`, `cd /tmp`) and answers a `read -s` password prompt. podtrail's own DaemonSet reads
what the shell read from its terminal in the kernel, and the trace in the real Jaeger holds
each typed line, in order, on `transcript` spans under the session's root, attributed to alice;
the password is nowhere in the trace, only its length.

The container suite proves the same on `ctr task exec -t` with more cases (redaction, the line
cap, the namespace switch: tests/e2e_transcript.rs); this one proves the cluster's path: the
API server's exec stream into the container's terminal, the DaemonSet, the collector, Jaeger.
"""
import json
import time

from conftest import NAMESPACE
from test_exec import interactive, session_root, wait_trace

PASSWORD = "Tr0ub4dor-cluster"


def typed(trace):
    """The `input` lines of the trace's transcript spans, in order (a secret as `<secret N>`)."""
    chunks = sorted((s for s in trace.spans if s.name == "transcript"),
                    key=lambda s: int(s.get("podtrail.transcript.seq", 0)))
    events = [ev for s in chunks for ev in s.events if ev["name"] == "input"]
    out = []
    for ev in events:
        a = ev["attrs"]
        line = a.get("podtrail.transcript.line")
        out.append(line if line is not None else f"<secret {a.get('podtrail.transcript.secret_bytes')}>")
    return out


def test_typed_builtins_are_in_the_transcript_and_the_password_is_not(cluster, pods):
    t0 = time.time() - 1
    lines = ["unset HISTFILE", "history -c", "cd /tmp", "read -s PW", PASSWORD, "echo typed-$((6*7))"]
    rc, screen = interactive(cluster, "shell", lines)
    assert rc == 0, screen
    assert "typed-42" in screen, f"the session did not run what was typed:\n{screen}"
    assert PASSWORD not in screen, "echo was on at the prompt: the test's premise fails"
    ids = cluster.audit_ids_for("shell", after=t0)
    assert len(ids) == 1, f"expected one exec request in the audit log, got {ids}"

    want = ["unset HISTFILE", "history -c", "cd /tmp", "read -s PW", f"<secret {len(PASSWORD)}>",
            "echo typed-$((6*7))", "exit"]
    t = wait_trace(cluster, ids[0], lambda t: typed(t)[:len(want)] == want,
                   f"with the typed lines {want}", timeout=120)
    root = session_root(t)
    assert root.get("user.name") == "alice@example.com", root.attrs
    chunks = [s for s in t.spans if s.name == "transcript"]
    assert chunks and all(t.parent(s) is root for s in chunks), f"transcript spans not under the root:\n{t.tree()}"
    assert all(s.get("user.name") == "alice@example.com" for s in chunks), [s.attrs for s in chunks]
    # the password: not in any attribute or event of any span of the trace
    everything = json.dumps([[s.attrs, s.events] for s in t.spans])
    assert PASSWORD not in everything, "the password typed at the prompt is in the trace"
