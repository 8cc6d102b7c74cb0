"""Real `kubectl exec` through a real API server, seen by podtrail's own DaemonSet.

Scenarios 1-3 of the real-cluster issue: an interactive shell that downloads, unpacks and
wipes its history; non-interactive execs over WebSocket and over SPDY; an exec RBAC forbids.
Each trace is read back from the real Jaeger and the real Tempo behind the real collector.
"""
import os
import pty
import select
import subprocess
import time

import pytest

from conftest import BUSYBOX, NAMESPACE, eventually, pod
from traces import from_jaeger, from_tempo

def ended(t):
    """The session's root is in: it goes out when the session ends, after the spans sent
    while it ran (`session opened`, alerts) and those of processes that ended before it."""
    return any(not s.parent_id for s in t.spans)


def wait_trace(cluster, audit_id, want=lambda t: True, what="", timeout=90, whole=True):
    """The trace whose id is the audit id, from Jaeger, once `want(trace)` holds (and, with
    `whole`, once its root is in)."""
    tid = audit_id.replace("-", "")
    last = []

    def get():
        data = cluster.jaeger_trace(tid)
        if not data:
            return None
        t = from_jaeger(data)
        last[:] = [t]
        return t if want(t) and (ended(t) or not whole) else None

    try:
        return eventually(f"trace {tid} in Jaeger {what}", get, timeout=timeout, interval=1)
    except BaseException:
        if last:
            t = last[0]
            print(f"trace {tid} as last seen:\n{t.tree()}")
            for r in t.roots:
                print(f"root {r.name} {r.attrs}")
        raise


def tempo_trace(cluster, audit_id, want=lambda t: True, timeout=60):
    tid = audit_id.replace("-", "")

    def get():
        data = cluster.tempo_trace(tid)
        if not data:
            return None
        t = from_tempo(tid, data)
        return t if t.spans and want(t) and ended(t) else None

    return eventually(f"trace {tid} in Tempo", get, timeout=timeout, interval=1)


def history_unlinks(trace):
    """Spans that unlinked /root/.ash_history (a `file unlink` event)."""
    return [s for s in trace.spans for ev in s.events
            if ev["name"] == "file unlink" and ev["attrs"].get("file.path") == "/root/.ash_history"]


def session_root(trace):
    roots = [s for s in trace.roots]
    assert len(roots) == 1, f"not one tree:\n{trace.tree()}"
    return roots[0]


def interactive(cluster, pod_name, lines, user="alice", timeout=60, how=("exec", "-it")):
    """`kubectl exec -it` (or `how`, such as `debug -it --image=...`) of `sh` on a real
    pseudo-terminal, typing `lines` one by one."""
    master, slave = pty.openpty()
    kc = cluster.env["KUBECONFIG_ALICE" if user == "alice" else "KUBECONFIG"]
    p = subprocess.Popen([cluster.kubectl_bin, "--kubeconfig", kc, "-n", NAMESPACE, *how, pod_name,
                          "--", "sh"], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                         start_new_session=True)
    os.close(slave)
    out = b""

    def read_for(secs):
        nonlocal out
        end = time.time() + secs
        while time.time() < end:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                out += chunk

    read_for(2)
    for line in lines:
        os.write(master, line.encode() + b"\r")
        read_for(1.0)
    os.write(master, b"exit\r")
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        read_for(0.5)
    if p.poll() is None:
        p.kill()
        pytest.fail(f"kubectl exec -it did not end; terminal:\n{out.decode(errors='replace')[-3000:]}")
    os.close(master)
    return p.returncode, out.decode(errors="replace")


def test_interactive_shell_download_unpack_and_history_wipe(cluster, pods, seen):
    t0 = time.time() - 1
    rc, screen = interactive(cluster, "shell", [
        "cd /tmp",
        f"wget -q http://{pods['web_ip']}:8080/payload.tar.gz",
        "gzip -d payload.tar.gz",
        "tar xf payload.tar",
        "cat payload.txt",
        "touch /root/.ash_history",
        "rm /root/.ash_history",
    ])
    assert rc == 0, screen
    assert "podtrail" in screen, f"the download did not arrive:\n{screen}"
    ids = cluster.audit_ids_for("shell", after=t0)
    assert len(ids) == 1, f"expected one exec request in the audit log, got {ids}"
    audit_id = ids[0]
    seen["exec_audit_id"] = audit_id
    seen["alice_audit_ids"].add(audit_id)

    # spans leave as their processes end and the root at the session's end, in batches: wait
    # for the whole trace (one tree under its root, the unlink, wget's connect), then judge it
    t = wait_trace(cluster, audit_id, lambda t: history_unlinks(t) and len(t.roots) == 1
                   and t.roots[0].get("podtrail.session.kind") == "exec"
                   and any(s.get("server.port") in (8080, "8080") for s in t.spans),
                   "as one tree with the history file's unlink and wget's connect", timeout=150)
    root = session_root(t)
    assert root.name == "kubectl exec", t.tree()
    assert root.get("user.name") == "alice@example.com"
    roles = root.get("user.roles")
    roles = roles if isinstance(roles, list) else str(roles)
    for g in ("sre", "podtrail-exec-allowed"):
        assert g in roles, f"group {g} missing from user.roles={roles}"
    assert root.get("client.address") == "127.0.0.1"
    # what a released kubectl sends (the harness builds kubectl with client-go's version set)
    assert str(root.get("user_agent.original")).startswith("kubectl/v1.34.4 (linux/amd64)"), root.attrs
    assert root.get("podtrail.k8s.audit_id") == audit_id
    assert root.get("podtrail.attribution.source") == "audit_webhook", root.attrs
    assert root.get("podtrail.attribution.confidence") in ("unique", "exact"), root.attrs
    assert root.get("k8s.namespace.name") == NAMESPACE and root.get("k8s.pod.name") == "shell"
    assert str(root.get("podtrail.k8s.tty")).lower() == "true", root.attrs

    for cmd in ("wget", "gzip", "tar", "cat"):
        spans = t.named(cmd)
        assert spans, f"no {cmd} span:\n{t.tree()}"
        # every span repeats the session's identity (Jaeger and TraceQL match one span)
        assert spans[0].get("user.name") == "alice@example.com"
        assert any(a.name == "sh" for a in t.ancestors(spans[0])), f"{cmd} not under the shell:\n{t.tree()}"
    connects = [s for s in t.spans if s.get("server.port") in (8080, "8080")]
    assert connects, f"no connect to the web pod:\n{t.tree()}"
    assert connects[0].get("server.address") == pods["web_ip"]
    assert t.parent(connects[0]).name == "wget"

    alerts = t.alerts()
    by_rule = {}
    for span, rule in alerts:
        by_rule.setdefault(rule, []).append(span.name)
    assert "sh" in by_rule.get("Terminal shell in a container", []), f"alerts: {by_rule}"
    # busybox runs `rm` inside the shell's own fork (a NOEXEC applet: no exec), so the unlink and
    # its alert are on that forked shell's span: the alert must be on the span that unlinked
    wiped = history_unlinks(t)
    assert any(rule == "Shell history tampering" and span is wiped[0] for span, rule in alerts), (
        f"history alert not on the unlinking span {wiped[0]}: {by_rule}")

    # the same trace in Tempo, by id and by the investigation query for one exec
    tt = tempo_trace(cluster, audit_id, lambda t: bool(history_unlinks(t)))
    assert any(s.get("user.name") == "alice@example.com" for s in tt.spans)
    found = eventually("Tempo search by audit id",
                       lambda: cluster.tempo_search(f'{{ span.podtrail.k8s.audit_id = "{audit_id}" }}'), timeout=60)
    assert any(x["traceID"].lstrip("0") == audit_id.replace("-", "").lstrip("0") for x in found), found


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_non_interactive_exec(cluster, pods, transport, seen):
    t0 = time.time() - 1
    env = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"} if transport == "spdy" else {}
    marker = f"marker-{transport}"
    # `cat`, not `id`: busybox runs NOFORK applets such as id inside the shell, with no exec
    p = cluster.kubectl("-n", NAMESPACE, "exec", "shell", "--", "sh", "-c", f"echo {marker}; cat /etc/hostname",
                        user="alice", env=env)
    assert marker in p.stdout
    events = [e for e in cluster.audit_events()
              if (e.get("objectRef") or {}).get("name") == "shell"
              and (e.get("objectRef") or {}).get("subresource") == "exec"
              and marker in e.get("requestURI", "")]
    assert events, "the exec is not in the audit log"
    verbs = {e["verb"] for e in events}
    assert verbs == ({"create"} if transport == "spdy" else {"get"}), verbs
    audit_id = events[0]["auditID"]
    seen["alice_audit_ids"].add(audit_id)
    t = wait_trace(cluster, audit_id, lambda t: any(s.name == "cat" for s in t.spans), "with its cat process")
    root = session_root(t)
    assert root.get("user.name") == "alice@example.com"
    assert marker in str(root.get("podtrail.k8s.command") or root.get("podtrail.k8s.requested_command")
                         or root.attrs), root.attrs
    assert str(root.get("podtrail.k8s.tty")).lower() in ("false", "none", "0")
    sh = t.named("sh")
    assert sh and marker in str(sh[0].get("process.command_args")), t.tree()


def test_exec_rbac_forbids(cluster, pods, seen):
    t0 = time.time() - 1
    p = cluster.kubectl("-n", NAMESPACE, "exec", "shell", "--", "sh", "-c", "echo should-not-run",
                        user="mallory", check=False)
    assert p.returncode != 0 and "forbidden" in (p.stderr + p.stdout).lower(), p.stderr
    # kubectl 1.34 tries WebSocket, then falls back to SPDY: two requests, two audit ids
    ids = eventually("the denied requests' ResponseComplete in the audit log", lambda: [
        e["auditID"] for e in cluster.audit_events()
        if (e.get("objectRef") or {}).get("name") == "shell" and e.get("stage") == "ResponseComplete"
        and (e.get("user") or {}).get("username") == "mallory@example.com"
        and parse_code(e) == 403 and e_ts(e) >= t0], timeout=30)
    assert len(ids) >= 1
    seen["denied_audit_ids"] = ids
    for audit_id in ids:
        t = wait_trace(cluster, audit_id, what="(denied request)", timeout=120)
        root = session_root(t)
        assert root.get("user.name") == "mallory@example.com"
        assert int(root.get("podtrail.k8s.response_code")) == 403
        assert int(root.get("podtrail.session.processes", 0)) == 0
        assert len(t.spans) == 1, t.tree()


def parse_code(e):
    return (e.get("responseStatus") or {}).get("code")


def e_ts(e):
    from conftest import parse_ts

    return parse_ts(e.get("requestReceivedTimestamp"))
