"""otel-collector/ with the real programs: the collector built by the OpenTelemetry Collector
Builder from otel-collector/builder-config.yaml, running otel-collector/config.yaml, exports
to two real Jaeger v2 instances standing in for Tempo and Jaeger.

What is proved:
- the configuration is valid for exactly the components the manifest builds (and an invalid
  one is refused, so the check can fail);
- spans sent over OTLP land in both backends with their attributes;
- with one backend stopped, the other keeps receiving; the stopped backend's spans wait in the
  on-disk queue, survive a restart of the collector itself, and all arrive when the backend
  comes back (a backend that was restarted has none of the earlier spans: it really restarted).
"""
import json
import os
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO, harness, parse_env, run

SERVICE = "podtrail"


@pytest.fixture(scope="module")
def binaries():
    # Both builds are cached under PODTRAIL_CACHE; the first run takes minutes.
    return {"jaeger": harness("jaeger.sh", "build").strip(),
            "collector": harness("collector.sh", "build").strip()}


@pytest.fixture()
def workdir():
    with tempfile.TemporaryDirectory(prefix="podtrail-stack-") as d:
        yield d


class Daemons:
    """Starts harness daemons and stops every one of them at teardown."""

    def __init__(self, root):
        self.root, self.started = root, []

    def start(self, script, name, env=None):
        d = os.path.join(self.root, name)
        self.started.append((script, d))
        return parse_env(harness(script, "start", d, env=env, timeout=300))

    def stop(self, script, name):
        harness(script, "stop", os.path.join(self.root, name))

    def log(self, name, file):
        try:
            with open(os.path.join(self.root, name, file)) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def close(self):
        for script, d in reversed(self.started):
            try:
                harness(script, "stop", d)
            except Exception:  # noqa: BLE001 - teardown keeps stopping the others
                pass


@pytest.fixture()
def daemons(workdir, binaries):
    d = Daemons(workdir)
    yield d
    d.close()


def send_sessions(col, batch, n_traces=10, spans_per_trace=5):
    """Sends n_traces traces shaped like podtrail sessions to the collector (`col`: its env from
    collector.sh start) over TLS with the client certificate the receiver requires; returns
    their trace ids (hex)."""
    import grpc
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    def read(k):
        with open(col[k], "rb") as f:
            return f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=read("COLLECTOR_TLS_CA"),
                                         private_key=read("COLLECTOR_TLS_CLIENT_KEY"),
                                         certificate_chain=read("COLLECTOR_TLS_CLIENT_CERT"))
    exporter = OTLPSpanExporter(endpoint=col["COLLECTOR_OTLP_GRPC"], credentials=creds, insecure=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("podtrail-stack-test")
    ids = []
    for t in range(n_traces):
        attrs = {"k8s.namespace.name": "billing", "k8s.pod.name": f"api-{t}",
                 "user.name": "alice@example.com", "podtrail.session.kind": "exec",
                 "podtrail.test.batch": batch}
        with tracer.start_as_current_span("kubectl exec", attributes=attrs) as root:
            ids.append(format(root.get_span_context().trace_id, "032x"))
            for s in range(spans_per_trace - 1):
                with tracer.start_as_current_span("sh" if s == 0 else f"cmd{s}", attributes=attrs):
                    pass
    provider.shutdown()
    return ids


def trace_span_count(query_url, trace_id):
    try:
        with urllib.request.urlopen(f"{query_url}/api/traces/{trace_id}", timeout=5) as r:
            data = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return 0
        raise
    return sum(len(t["spans"]) for t in data.get("data") or [])


def wait_all(query_url, ids, per_trace, timeout):
    deadline = time.monotonic() + timeout
    while True:
        counts = {i: trace_span_count(query_url, i) for i in ids}
        if all(c == per_trace for c in counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(1)


def test_config_is_valid_for_the_built_collector(binaries):
    p = run(["bash", str(REPO / "tests/harness/collector.sh"), "validate"])
    assert p.returncode == 0, p.stdout + p.stderr


def test_invalid_config_is_refused(binaries, workdir):
    bad = os.path.join(workdir, "bad.yaml")
    text = (REPO / "otel-collector/config.yaml").read_text()
    with open(bad, "w") as f:
        # a component the manifest does not build: the real collector must refuse it
        f.write(text.replace("processors: [memory_limiter, batch]",
                             "processors: [memory_limiter, batch, attributes]")
                + "\n")
    p = run(["bash", str(REPO / "tests/harness/collector.sh"), "validate", bad])
    assert p.returncode != 0


def test_builder_manifest_matches_config():
    """The manifest builds exactly the component types config.yaml uses."""
    import yaml
    manifest = yaml.safe_load((REPO / "otel-collector/builder-config.yaml").read_text())
    config = yaml.safe_load((REPO / "otel-collector/config.yaml").read_text())
    module_to_type = {"otlpreceiver": "otlp", "memorylimiterprocessor": "memory_limiter",
                      "batchprocessor": "batch", "otlpexporter": "otlp_grpc", "debugexporter": "debug",
                      "healthcheckextension": "health_check", "filestorage": "file_storage"}
    versions = set()
    for section in ("receivers", "processors", "exporters", "extensions"):
        built = set()
        for m in manifest[section]:
            path, version = m["gomod"].split()
            versions.add((path.startswith("github.com/open-telemetry/opentelemetry-collector-contrib"), version))
            built.add(module_to_type[path.rsplit("/", 1)[1]])
        used = {k.split("/")[0] for k in config[section]}
        assert built == used, (section, built, used)
    assert versions == {(False, "v0.165.0"), (True, "v0.165.1")}, versions
    for p in manifest["providers"]:
        assert p["gomod"].split()[1] == "v1.71.0", p  # the stable modules of core v0.165.0


def test_spans_survive_backend_outage_and_collector_restart(daemons):
    tempo = daemons.start("jaeger.sh", "tempo")
    jaeger = daemons.start("jaeger.sh", "jaeger")
    jaeger_ports = {"JAEGER_OTLP_GRPC_PORT": jaeger["JAEGER_OTLP_GRPC"].rsplit(":", 1)[1],
                    "JAEGER_OTLP_HTTP_PORT": jaeger["JAEGER_OTLP_HTTP"].rsplit(":", 1)[1],
                    "JAEGER_QUERY_PORT": jaeger["JAEGER_QUERY"].rsplit(":", 1)[1],
                    "JAEGER_HEALTH_PORT": jaeger["JAEGER_HEALTH"].split(":")[2].split("/")[0]}
    col_env = {"TEMPO_ENDPOINT": tempo["JAEGER_OTLP_GRPC"],
               "JAEGER_ENDPOINT": jaeger["JAEGER_OTLP_GRPC"],
               "RETRY_INITIAL_INTERVAL": "200ms", "RETRY_MAX_INTERVAL": "2s"}
    col = daemons.start("collector.sh", "collector", env=col_env)
    per = 5

    # 1. Both backends up: every span reaches both.
    first = send_sessions(col, "first", spans_per_trace=per)
    for name, q in (("tempo", tempo["JAEGER_QUERY"]), ("jaeger", jaeger["JAEGER_QUERY"])):
        counts = wait_all(q, first, per, 30)
        assert all(c == per for c in counts.values()), (name, counts, daemons.log("collector", "collector.log"))

    # The attributes arrive as sent (one trace checked in full).
    with urllib.request.urlopen(f"{jaeger['JAEGER_QUERY']}/api/traces/{first[0]}", timeout=5) as r:
        spans = json.load(r)["data"][0]["spans"]
    names = sorted(s["operationName"] for s in spans)
    assert names == sorted(["kubectl exec", "sh", "cmd1", "cmd2", "cmd3"]), names
    tags = {t["key"]: t["value"] for t in spans[0]["tags"]}
    assert tags["k8s.namespace.name"] == "billing" and tags["user.name"] == "alice@example.com"

    # 2. Jaeger down: Tempo keeps receiving, Jaeger's share waits in the on-disk queue.
    daemons.stop("jaeger.sh", "jaeger")
    second = send_sessions(col, "second", spans_per_trace=per)
    counts = wait_all(tempo["JAEGER_QUERY"], second, per, 30)
    assert all(c == per for c in counts.values()), ("tempo during outage", counts)
    time.sleep(2)  # let the exporter fail and retry at least once

    # 3. The collector itself restarts while Jaeger is down: an in-memory queue would be lost.
    daemons.stop("collector.sh", "collector")
    queue_files = [f for _, _, fs in os.walk(col["COLLECTOR_QUEUE_DIR"]) for f in fs]
    assert queue_files, "the persistent queue left nothing on disk"
    col = daemons.start("collector.sh", "collector", env=col_env)

    # 4. Jaeger back (same ports, empty memory): every span of the outage arrives.
    jaeger = daemons.start("jaeger.sh", "jaeger", env=jaeger_ports)
    counts = wait_all(jaeger["JAEGER_QUERY"], second, per, 60)
    assert all(c == per for c in counts.values()), (
        "spans lost across the outage", counts, daemons.log("collector", "collector.log"))
    # It is a new Jaeger: the spans it has now came from the queue, not from before.
    assert trace_span_count(jaeger["JAEGER_QUERY"], first[0]) == 0

    # 5. And the pipeline still flows after recovery.
    third = send_sessions(col, "third", n_traces=3, spans_per_trace=per)
    for q in (tempo["JAEGER_QUERY"], jaeger["JAEGER_QUERY"]):
        counts = wait_all(q, third, per, 30)
        assert all(c == per for c in counts.values()), counts
