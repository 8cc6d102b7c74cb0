"""The real-cluster suite: one real one-node Kubernetes shared by every scenario.

What runs, all started here and torn down at the end:
  - kube-apiserver, controller-manager, scheduler, etcd, kubelet on its own containerd
    (tests/harness/kube.sh), with the API server's audit webhook and admission webhook client
    certificate pointing at podtrail's receiver;
  - Jaeger, Tempo and podtrail's own OpenTelemetry Collector (tests/harness/*.sh);
  - podtrail itself, installed the way docs/deploy.md tells a user: `helm install` of the chart
    deploy/helm/podtrail (with values that only add what a cluster without DNS and kube-proxy
    lacks: chart_values) with the image scripts/image.sh builds. The agent runs as the
    DaemonSet's pod, the receiver as the Deployment's. test_chart.py checks the kustomize base
    (deploy/) against the chart, and every rendered object against this API server.

Every test asserts only on its own pods and trace ids (the agent sees the whole host).
Nothing here skips: a missing prerequisite is a failure with the reason.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "harness"
sys.path.insert(0, str(HARNESS))
from harness_env import parse_env  # noqa: E402  (one reader of the harness scripts' output)
# The namespace of the investigation questions in README.md and docs/investigate.md, so their
# queries run here unchanged.
NAMESPACE = "billing"


def need(ok, why):
    """A prerequisite: fail loudly, never skip (a skipped real-cluster test proves nothing)."""
    if not ok:
        pytest.fail(f"missing prerequisite: {why} (scripts/setup.sh and tests/cluster/run.sh install it)")


def sh(cmd, check=True, timeout=600, env=None, input=None):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def harness(script, *args, env=None, timeout=3600):
    p = sh(["bash", str(HARNESS / script), *map(str, args)], env=env, timeout=timeout)
    return parse_env(p.stdout), p.stdout.strip()


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def eventually(what, fn, timeout=60, interval=0.5):
    """fn() until it returns something truthy; fail with the last value and `what`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - a backend not answering yet is expected
            last = e
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}"[:4000])


# --- PKI (openssl) ----------------------------------------------------------------------------


class Pki:
    """podtrail's own certificates for a test cluster: one CA for the receiver's serving
    certificate and every client it accepts (the API server's audit and admission client, the
    agents)."""

    def __init__(self, d):
        self.d = pathlib.Path(d)
        self.d.mkdir(parents=True, exist_ok=True)
        need(shutil.which("openssl"), "openssl")
        self.ca_crt, self.ca_key = self.d / "ca.crt", self.d / "ca.key"
        sh(["openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-keyout", self.ca_key, "-out", self.ca_crt, "-days", "3",
            "-subj", "/CN=podtrail test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign"])

    def issue(self, name, cn, usage, sans=(), orgs=()):
        key, csr, crt, ext = (self.d / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        subj = "/CN=" + cn + "".join(f"/O={o}" for o in orgs)
        sh(["openssl", "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", key, "-out", csr, "-subj", subj])
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'serverAuth' if usage == 'server' else 'clientAuth'}"]
        if sans:
            lines.append("subjectAltName=" + ",".join(("IP:" if s[0].isdigit() else "DNS:") + s for s in sans))
        ext.write_text("\n".join(lines) + "\n")
        sh(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
            "-CAcreateserial", "-days", "3", "-extfile", ext, "-out", crt])
        return crt, key


def kubeconfig(path, server, ca, crt, key, tls_server_name=None):
    cluster = {"server": server, "certificate-authority": str(ca)}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    pathlib.Path(path).write_text(json.dumps(cfg, indent=1))
    return path


# --- the cluster ------------------------------------------------------------------------------


class Cluster:
    def __init__(self, env, work, ports, backends):
        self.env = env
        self.work = pathlib.Path(work)
        self.ports = ports
        self.backends = backends
        self.kubectl_bin = str(pathlib.Path(env["KUBE_BIN"]) / "kubectl")
        self.audit_log = pathlib.Path(env["KUBE_AUDIT_LOG"])

    def kubectl(self, *args, user="admin", check=True, timeout=120, input=None, env=None):
        kc = {"admin": self.env["KUBECONFIG"], "alice": self.env["KUBECONFIG_ALICE"],
              "mallory": self.env["KUBECONFIG_MALLORY"]}[user]
        return sh([self.kubectl_bin, "--kubeconfig", kc, *map(str, args)], check=check,
                  timeout=timeout, input=input, env=env)

    def apply(self, manifest):
        return self.kubectl("apply", "-f", "-", input=manifest if isinstance(manifest, str) else json.dumps(manifest))

    def wait_ready(self, pod, namespace=NAMESPACE, timeout=120):
        self.kubectl("-n", namespace, "wait", "--for=condition=Ready", f"pod/{pod}", f"--timeout={timeout}s",
                     timeout=timeout + 10)

    # -- audit log: what the real API server recorded -------------------------------------
    def audit_events(self):
        out = []
        if self.audit_log.exists():
            for line in self.audit_log.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def audit_ids_for(self, pod, subresource="exec", after=0.0):
        """Audit ids of requests on pods/<pod>/<subresource> received after `after` (epoch s),
        in the order the API server received them."""
        seen = {}
        for e in self.audit_events():
            ref = e.get("objectRef") or {}
            if ref.get("name") != pod or ref.get("subresource") != subresource:
                continue
            ts = parse_ts(e.get("requestReceivedTimestamp"))
            if ts < after:
                continue
            seen.setdefault(e["auditID"], ts)
        return [k for k, _ in sorted(seen.items(), key=lambda kv: kv[1])]

    # -- backends -------------------------------------------------------------------------
    def jaeger_trace(self, trace_id):
        data = http_json(f"{self.backends['JAEGER_QUERY']}/api/traces/{trace_id}")
        traces = data.get("data") or []
        return traces[0] if traces else None

    def tempo_search(self, q, limit=100, since_s=3600):
        now = int(time.time())
        url = (f"{self.backends['TEMPO_HTTP']}/api/search?"
               + urllib.parse.urlencode({"q": q, "limit": limit, "start": now - since_s, "end": now + 60}))
        return http_json(url, timeout=15).get("traces") or []

    def tempo_trace(self, trace_id):
        try:
            return http_json(f"{self.backends['TEMPO_HTTP']}/api/traces/{trace_id}", timeout=15)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def why_not_ready(self):
        """What a failed rollout leaves to read: podtrail's pods, their events and logs."""
        out = []
        for args in (["get", "pods", "-o", "wide"], ["describe", "pods"],
                     ["logs", "-l", "app.kubernetes.io/name", "--all-containers", "--tail=30",
                      "--prefix"],
                     ["logs", "-l", "app.kubernetes.io/name", "--all-containers", "--tail=30", "--prefix",
                      "--previous"]):
            p = self.kubectl("-n", "podtrail", *args, check=False)
            out.append(f"$ kubectl {' '.join(args)}\n{p.stdout[-4000:]}{p.stderr[-1000:]}")
        return "\n".join(out)

    def agent_logs(self):
        return self.kubectl("-n", "podtrail", "logs", "ds/podtrail-agent", "--tail=-1", check=False).stdout

    def receiver_logs(self):
        return self.kubectl("-n", "podtrail", "logs", "deploy/podtrail-receiver", "--tail=-1", check=False).stdout

    def agent_metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['agent_metrics']}/metrics", timeout=5) as r:
            return r.read().decode()


def parse_ts(s):
    if not s:
        return 0.0
    from datetime import datetime

    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
        fmt = "%Y-%m-%dT%H:%M:%S.%f"
    else:
        fmt = "%Y-%m-%dT%H:%M:%S"
    from datetime import timezone

    return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp()


def audit_policy(path):
    """The API server's audit policy: podtrail's shipped fragment (deploy/audit/), as docs/deploy.md
    tells a user to merge it, after one rule that logs nothing for namespace `managed`, where the
    admission webhook alone must attribute (test_node.py: a managed cluster has no audit webhook)."""
    import yaml

    fragment = yaml.safe_load((REPO / "deploy" / "audit" / "policy-fragment.yaml").read_text())
    rules = [{"level": "None", "namespaces": ["managed"]}] + fragment["rules"]
    pathlib.Path(path).write_text(json.dumps({**fragment, "rules": rules}, indent=1))
    return path


def podtrail_config(ports, certs):
    """The ConfigMap the agents and the receiver read: the shipped one plus this run's ports."""
    return f"""# generated by tests/cluster/conftest.py
[attribution]
receivers = ["https://127.0.0.1:{ports['stream']}"]

[metrics]
listen = "127.0.0.1:{ports['agent_metrics']}"

[receiver]
audit_listen = "127.0.0.1:{ports['audit']}"
admission_listen = "127.0.0.1:{ports['admission']}"
stream_listen = "127.0.0.1:{ports['stream']}"
metrics_listen = "127.0.0.1:{ports['receiver_metrics']}"
"""


CHART = REPO / "deploy" / "helm" / "podtrail"
RELEASE_NAMESPACE = "podtrail"


def chart_values(ports, env, backends, pki_files, state_dir):
    """The Helm values of this run: podtrail's chart as a user installs it (docs/deploy.md,
    "Install with Helm", the manual TLS path), plus only what this one-node cluster without
    kube-proxy and cluster DNS lacks, or what differs per run:
      - podtrail's own pods in the host network, meeting the API server on loopback (no Service
        routing or names without kube-proxy and DNS; the receiver's test certificate names
        127.0.0.1), one receiver replica (two would bind the same host ports), and this run's
        free ports;
      - the image scripts/image.sh built, imported into the node's containerd (no registry);
      - this run's containerd socket, state directory and collector.
    Nothing here changes what the agent or the receiver may do: capabilities, mounts and
    service accounts are the chart's defaults."""
    import base64

    api_port = urllib.parse.urlparse(env["KUBE_API"]).port
    # no kube-proxy: the API server's own address instead of the kubernetes Service's
    api_env = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
               {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)}]
    return {
        "image": {"repository": "podtrail.test/podtrail", "tag": "dev", "pullPolicy": "Never"},
        "clusterName": "podtrail-test",
        # the shipped collector config: TLS, client certificates required
        "collector": {"endpoint": f"https://{backends['COLLECTOR_OTLP_GRPC']}"},
        # PODTRAIL_CLUSTER_AGENT_LOG: the agent's log filter (PODTRAIL_LOG), to look into a failure
        "agent": {"hostNetwork": True, "containerdSocket": env["CONTAINERD_SOCK"],
                  # this run's state directory, not the machine's /var/lib/podtrail
                  "stateDir": str(state_dir), "metricsPort": ports["agent_metrics"],
                  "extraEnv": api_env + ([{"name": "PODTRAIL_LOG", "value": os.environ["PODTRAIL_CLUSTER_AGENT_LOG"]}]
                                         if os.environ.get("PODTRAIL_CLUSTER_AGENT_LOG") else [])},
        "receiver": {"replicas": 1, "hostNetwork": True, "extraEnv": api_env,
                     "ports": {"audit": ports["audit"], "admission": ports["admission"],
                               "stream": ports["stream"], "metrics": ports["receiver_metrics"]}},
        "admissionWebhook": {"url": f"https://127.0.0.1:{ports['admission']}/admission",
                             "caBundle": base64.b64encode(pathlib.Path(pki_files["ca.crt"]).read_bytes()).decode()},
        # loopback listeners: in the host network a pod's 0.0.0.0 is the machine's
        "config": {
            # PODTRAIL_CLUSTER_POLL_MS: run the suite at another capture.poll_ms (issue 15)
            **({"capture": {"poll_ms": int(os.environ["PODTRAIL_CLUSTER_POLL_MS"])}}
               if os.environ.get("PODTRAIL_CLUSTER_POLL_MS") else {}),
            "attribution": {"receivers": [f"https://127.0.0.1:{ports['stream']}"]},
            "metrics": {"listen": f"127.0.0.1:{ports['agent_metrics']}"},
            "receiver": {"audit_listen": f"127.0.0.1:{ports['audit']}",
                         "admission_listen": f"127.0.0.1:{ports['admission']}",
                         "stream_listen": f"127.0.0.1:{ports['stream']}",
                         "metrics_listen": f"127.0.0.1:{ports['receiver_metrics']}"},
        },
    }


def create_tls_secrets(c, pki_files, namespace=RELEASE_NAMESPACE):
    """The Secrets docs/deploy.md's manual TLS path tells a user to create before the chart."""
    f = {k: str(v) for k, v in pki_files.items()}
    for args in [
        ["tls", "podtrail-receiver-tls", f"--cert={f['receiver.crt']}", f"--key={f['receiver.key']}"],
        ["generic", "podtrail-client-ca", f"--from-file=ca.crt={f['ca.crt']}"],
        # the API server's webhook client CA (one CA here; the listeners tell the API server's
        # certificate from the agents' by name: receiver.apiserver_clients)
        ["generic", "podtrail-apiserver-client-ca", f"--from-file=ca.crt={f['ca.crt']}"],
        ["generic", "podtrail-agent-tls", "--type=kubernetes.io/tls", f"--from-file=tls.crt={f['agent.crt']}",
         f"--from-file=tls.key={f['agent.key']}", f"--from-file=ca.crt={f['ca.crt']}"],
        ["generic", "podtrail-otlp-tls", f"--from-file=ca.crt={f['otlp-ca.crt']}",
         f"--from-file=tls.crt={f['otlp-client.crt']}", f"--from-file=tls.key={f['otlp-client.key']}"],
        ["generic", "podtrail-redact-key", "--from-literal=key=cluster-test-redaction-key"],
    ]:
        c.kubectl("-n", namespace, "create", "secret", *args)


class Helm:
    """The helm binary tests/harness/helm.sh builds, against this cluster, with its own config
    and cache directories (nothing written to the machine's ~/.config or ~/.cache)."""

    def __init__(self, binary, kubeconfig, home):
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.env = {"HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_DATA_HOME": str(home / "data")}

    def __call__(self, *args, check=True, timeout=300):
        return sh([self.binary, *map(str, args)], check=check, timeout=timeout, env=self.env)

    def cluster(self, *args, **kw):
        return self(*args, "--kubeconfig", self.kubeconfig, **kw)


@pytest.fixture(scope="session")
def cluster():
    need(os.geteuid() == 0, "root (the agent loads BPF programs; kubelet runs containers)")
    keep = os.environ.get("PODTRAIL_KEEP_CLUSTER")
    work = pathlib.Path(tempfile.mkdtemp(prefix="podtrail-cluster-"))
    started = []

    def stop_all():
        for script, d in reversed(started):
            subprocess.run(["bash", str(HARNESS / script), "stop", str(d)], capture_output=True, timeout=300)

    try:
        image = os.environ.get("PODTRAIL_IMAGE_ARCHIVE")
        need(image and pathlib.Path(image).exists(),
             "PODTRAIL_IMAGE_ARCHIVE (podtrail's image, from scripts/image.sh; tests/cluster/run.sh sets it)")

        # backends first: the agent exports as soon as it starts
        jaeger, _ = harness("jaeger.sh", "start", work / "jaeger")
        started.append(("jaeger.sh", work / "jaeger"))
        tempo, _ = harness("tempo.sh", "start", work / "tempo")
        started.append(("tempo.sh", work / "tempo"))
        coll, _ = harness("collector.sh", "start", work / "collector",
                          env={"TEMPO_ENDPOINT": tempo["TEMPO_OTLP_GRPC"], "JAEGER_ENDPOINT": jaeger["JAEGER_OTLP_GRPC"]})
        started.append(("collector.sh", work / "collector"))
        backends = {**jaeger, **tempo, **coll}

        ports = {k: free_port() for k in ("audit", "admission", "stream", "agent_metrics", "receiver_metrics")}
        pki = Pki(work / "pki")
        recv_crt, recv_key = pki.issue("receiver", "podtrail-receiver", "server",
                                       sans=("127.0.0.1", "podtrail-receiver.podtrail.svc",
                                             "podtrail-receiver-peers.podtrail.svc"))
        agent_crt, agent_key = pki.issue("agent", "podtrail-agent:127.0.0.1", "client", orgs=("podtrail:agents",))
        api_crt, api_key = pki.issue("apiserver", "kube-apiserver", "client", orgs=("podtrail:apiserver",))
        audit_kc = kubeconfig(work / "audit-webhook.kubeconfig", f"https://127.0.0.1:{ports['audit']}/audit",
                              pki.ca_crt, api_crt, api_key)
        admission_kc = kubeconfig(work / "admission.kubeconfig", "https://unused", pki.ca_crt, api_crt, api_key)
        # The API server presents a client certificate to an admission webhook only through
        # --admission-control-config-file: a kubeconfig whose users are keyed by the webhook's
        # host:port (or * for any).
        kc = json.loads(pathlib.Path(admission_kc).read_text())
        kc["users"] = [{"name": f"127.0.0.1:{ports['admission']}", "user": kc["users"][0]["user"]}]
        pathlib.Path(admission_kc).write_text(json.dumps(kc))
        admission_cfg = work / "admission-config.json"
        admission_cfg.write_text(json.dumps({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [{"name": "ValidatingAdmissionWebhook", "configuration": {
                "apiVersion": "apiserver.config.k8s.io/v1", "kind": "WebhookAdmissionConfiguration",
                "kubeConfigFile": str(admission_kc)}}],
        }))

        policy = audit_policy(work / "audit-policy.json")
        env, _ = harness("kube.sh", "start", work / "kube", env={
            "KUBE_AUDIT_POLICY": str(policy),
            "KUBE_AUDIT_WEBHOOK_KUBECONFIG": str(audit_kc),
            "KUBE_ADMISSION_CONFIG": str(admission_cfg),
            "KUBE_EXTRA_IMAGES": image,
        })
        started.append(("kube.sh", work / "kube"))
        c = Cluster(env, work, ports, backends)

        # podtrail as docs/deploy.md tells a user to install it with Helm: the namespace labelled
        # for hostPID, the TLS Secrets (the manual path), then the chart
        pki_files = {
            "ca.crt": pki.ca_crt, "receiver.crt": recv_crt, "receiver.key": recv_key,
            "agent.crt": agent_crt, "agent.key": agent_key,
            "otlp-ca.crt": backends["COLLECTOR_TLS_CA"], "otlp-client.crt": backends["COLLECTOR_TLS_CLIENT_CERT"],
            "otlp-client.key": backends["COLLECTOR_TLS_CLIENT_KEY"],
        }
        c.pki_files = pki_files
        c.kubectl("create", "namespace", RELEASE_NAMESPACE)
        c.kubectl("label", "namespace", RELEASE_NAMESPACE, "pod-security.kubernetes.io/enforce=privileged")
        create_tls_secrets(c, pki_files)
        _, helm_bin = harness("helm.sh", "build")
        c.helm = Helm(helm_bin, env["KUBECONFIG"], work / "helm")
        values = work / "values.json"
        values.write_text(json.dumps(chart_values(ports, env, backends, pki_files, work / "agent-state"), indent=1))
        c.values_file = values
        c.helm.cluster("install", "podtrail", CHART, "--namespace", RELEASE_NAMESPACE, "--values", values,
                       timeout=300)
        for what in ("deploy/podtrail-receiver", "ds/podtrail-agent"):
            try:
                c.kubectl("-n", "podtrail", "rollout", "status", what, "--timeout=180s", timeout=200)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{c.why_not_ready()}") from None
        # the agent is ready when its metrics answer and it says it is watching
        eventually("the agent's metrics endpoint", lambda: "podtrail_" in c.agent_metrics(), timeout=60)
        c.kubectl("create", "namespace", NAMESPACE)
        yield c
    finally:
        if not keep:
            stop_all()
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"PODTRAIL_KEEP_CLUSTER: left running in {work}")


# --- workloads shared by the scenarios -------------------------------------------------

BUSYBOX = "podtrail.test/busybox:1"


def pod(name, command, labels=None, extra=None):
    spec = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                            "command": command}],
        },
    }
    if extra:
        extra(spec)
    return spec


@pytest.fixture(scope="session")
def pods(cluster):
    cluster.apply(pod("shell", ["sleep", "3600"]))
    # a web server in the cluster to download from: a gzip'd tar made at start
    cluster.apply(pod("web", ["sh", "-c",
                              "mkdir -p /www && echo podtrail > /www/payload.txt && "
                              "tar -C /www -cf /www/payload.tar payload.txt && gzip /www/payload.tar && "
                              "exec httpd -f -p 8080 -h /www"]))
    for p in ("shell", "web"):
        cluster.wait_ready(p)
    web_ip = cluster.kubectl("-n", NAMESPACE, "get", "pod", "web", "-o", "jsonpath={.status.podIP}").stdout.strip()
    assert web_ip, "the web pod has no IP"
    return {"web_ip": web_ip}




class Seen(dict):
    """What the scenarios produced, for test_queries.py: a missing key names the scenario that
    failed or did not run, instead of a bare KeyError."""

    def __missing__(self, key):
        pytest.fail(f"no {key!r}: the scenario that records it failed or did not run")


@pytest.fixture(scope="session")
def seen():
    return Seen(alice_audit_ids=set())
