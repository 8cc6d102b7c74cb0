"""Scenarios 4 and 5 of the real-cluster issue: every other kind of request is a trace of its
own kind with its request (attach, cp, port-forward), and exec probes are not sessions
while a real `kubectl exec` of the very same command is."""
import socket
import subprocess
import time
import urllib.request

from conftest import NAMESPACE, eventually, parse_ts
from conftest import BUSYBOX, pod
from test_exec import interactive, session_root, wait_trace


def _request_ids(cluster, pod_name, subresource, t0):
    return eventually(f"{subresource} request on {pod_name} in the audit log",
                      lambda: cluster.audit_ids_for(pod_name, subresource, after=t0), timeout=30)


def test_attach_is_a_trace_with_its_request(cluster):
    cluster.apply(pod("attached", ["sh", "-c", "while true; do echo tick; sleep 0.5; done"]))
    cluster.wait_ready("attached")
    t0 = time.time() - 1
    kc = cluster.env["KUBECONFIG_ALICE"]
    p = subprocess.Popen([cluster.kubectl_bin, "--kubeconfig", kc, "-n", NAMESPACE, "attach", "attached",
                          "-c", "main"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)
    p.terminate()
    p.wait(timeout=20)
    (audit_id,) = _request_ids(cluster, "attached", "attach", t0)[:1]
    t = wait_trace(cluster, audit_id, what="(attach)", timeout=150)
    root = session_root(t)
    assert root.name == "kubectl attach", t.tree()
    assert root.get("podtrail.session.kind") == "attach"
    assert root.get("user.name") == "alice@example.com"
    assert root.get("k8s.pod.name") == "attached"


def test_debug_is_a_trace_of_the_ephemeral_containers_shell(cluster, pods, seen):
    """`kubectl debug -it`: kubectl adds an ephemeral container (a write to
    pods/ephemeralcontainers), waits for it to run, then attaches to its shell. The shell is
    that container's init, which podtrail holds until the pod's status says the container is
    ephemeral; it is then the session's root."""
    t0 = time.time() - 1
    rc, screen = interactive(cluster, "shell", ["cat /etc/hostname", "ls /proc/1/root >/dev/null"],
                             how=("debug", "-it", f"--image={BUSYBOX}", "--image-pull-policy=Never",
                                  "--container=debugger", "--target=main"), timeout=90)
    assert rc == 0, screen
    (audit_id,) = _request_ids(cluster, "shell", "ephemeralcontainers", t0)[:1]
    seen["debug_audit_ids"] = [audit_id] + cluster.audit_ids_for("shell", "attach", after=t0)
    t = wait_trace(cluster, audit_id, lambda t: any(s.name == "cat" for s in t.spans) and len(t.roots) == 1
                   and t.roots[0].name == "kubectl debug", "(debug) as one tree with its cat", timeout=150)
    root = session_root(t)
    assert root.name == "kubectl debug", t.tree()
    assert root.get("podtrail.session.kind") == "debug", root.attrs
    assert root.get("user.name") == "alice@example.com"
    assert root.get("k8s.pod.name") == "shell" and root.get("k8s.container.name") == "debugger", root.attrs
    (cat,) = t.named("cat")
    assert "/etc/hostname" in str(cat.get("process.command_args")), t.tree()
    assert any(a.name == "sh" for a in t.ancestors(cat)), f"cat not under the debug shell:\n{t.tree()}"


def test_port_forward_is_a_trace_with_its_request(cluster, pods):
    t0 = time.time() - 1
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    local = s.getsockname()[1]
    s.close()
    kc = cluster.env["KUBECONFIG_ALICE"]
    p = subprocess.Popen([cluster.kubectl_bin, "--kubeconfig", kc, "-n", NAMESPACE, "port-forward", "pod/web",
                          f"{local}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = eventually("a download through the tunnel", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{local}/payload.txt", timeout=2).read(), timeout=30)
        assert b"podtrail" in body
    finally:
        p.terminate()
        p.wait(timeout=20)
    (audit_id,) = _request_ids(cluster, "web", "portforward", t0)[:1]
    t = wait_trace(cluster, audit_id, what="(port-forward)", timeout=150)
    root = session_root(t)
    assert root.name == "kubectl port-forward", t.tree()
    assert root.get("podtrail.session.kind") == "port_forward"
    assert root.get("user.name") == "alice@example.com"
    assert root.get("k8s.pod.name") == "web"


def test_cp_is_an_exec_of_tar(cluster, pods, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("copied in\n")
    t0 = time.time() - 1
    cluster.kubectl("-n", NAMESPACE, "cp", str(src), "shell:/tmp/notes.txt", user="alice")
    # kubectl 1.34's cp makes two execs: `test -d <dest>`, then `tar -xmf - -C <dir>`
    ids = eventually("the cp's tar exec in the audit log", lambda: [
        e["auditID"] for e in cluster.audit_events()
        if (e.get("objectRef") or {}).get("name") == "shell" and "command=tar" in e.get("requestURI", "")
        and e.get("stage") == "ResponseComplete" and parse_ts(e.get("requestReceivedTimestamp")) >= t0], timeout=30)
    audit_id = ids[0]
    t = wait_trace(cluster, audit_id, lambda t: any(s.name == "tar" for s in t.spans), "with tar")
    root = session_root(t)
    assert root.get("podtrail.session.kind") == "exec"
    assert root.get("user.name") == "alice@example.com"
    assert "tar" in str(root.get("podtrail.k8s.command")), root.attrs


def test_probes_are_not_sessions_but_the_same_command_by_kubectl_is(cluster):
    def with_probe(spec):
        spec["spec"]["containers"][0]["livenessProbe"] = {
            "exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "initialDelaySeconds": 0}

    cluster.apply(pod("probed", ["sh", "-c", "touch /tmp/healthy; exec sleep 3600"], extra=with_probe))
    cluster.wait_ready("probed")
    time.sleep(5)  # a handful of probe runs
    t0 = time.time() - 1
    p = cluster.kubectl("-n", NAMESPACE, "exec", "probed", "--", "cat", "/tmp/healthy", user="alice")
    assert p.returncode == 0
    (audit_id,) = _request_ids(cluster, "probed", "exec", t0)[:1]
    t = wait_trace(cluster, audit_id, lambda t: any(s.name == "cat" for s in t.spans), "with cat")
    root = session_root(t)
    assert root.get("user.name") == "alice@example.com"
    # every other session of this pod would be a probe: none may be exported
    import json
    import urllib.parse

    q = urllib.parse.urlencode({"service": "podtrail", "tags": json.dumps({"k8s.pod.name": "probed"}),
                                "limit": 200, "lookback": "1h"})
    data = eventually("Jaeger search for the probed pod",
                      lambda: cluster.backends and __import__("conftest").http_json(
                          f"{cluster.backends['JAEGER_QUERY']}/api/traces?{q}"), timeout=30)
    ids = {tr["traceID"] for tr in data.get("data") or []}
    assert ids == {audit_id.replace("-", "")}, f"probe runs were exported as sessions: {ids}"
    assert "podtrail_sessions_probes" in cluster.agent_metrics()
