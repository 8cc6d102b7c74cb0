"""tempo_check.py: proves a Tempo from tempo.sh takes OTLP and answers TraceQL and trace lookups.

Usage (with the environment `tempo.sh start DIR` prints):
  eval "$(tests/harness/tempo.sh start "$dir")"
  TEMPO_OTLP_GRPC=... TEMPO_HTTP=... "$(tests/harness/pyenv.sh)" tests/harness/tempo_check.py

Sends one span with `foo = "bar"` and a unique `run` attribute through the OpenTelemetry SDK's
OTLP/gRPC exporter (a sender podtrail did not write), finds it with
`{ span.foo = "bar" && span.run = "<run>" }` in /api/search, then fetches it from
/api/traces/<id>; then one OTLP/JSON span POSTed to TEMPO_OTLP_HTTP/v1/traces (when set), found
the same way. Prints how long each step took; exits non-zero with the reason on failure.
"""
import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def find(http, run, trace_id, sent):
    """Polls /api/search for the span tagged run until it shows trace_id (15 s at most)."""
    q = '{ span.foo = "bar" && span.run = "%s" }' % run
    url = f"{http}/api/search?" + urllib.parse.urlencode(
        {"q": q, "start": int(sent) - 300, "end": int(sent) + 60})
    while time.time() - sent < 15:
        for t in get(url).get("traces", []):
            # Tempo's search may drop a trace id's leading zeros
            if t["traceID"].zfill(32) == trace_id:
                print(f"search: {q} -> {t['traceID']} after {time.time() - sent:.1f} s")
                return
        time.sleep(0.2)
    sys.exit(f"tempo_check: trace {trace_id} not found by {q} within 15 s")


def send_otlp_http(otlp_http, run):
    """POSTs one span as OTLP/JSON; returns its trace id."""
    trace_id, now = uuid.uuid4().hex, time.time_ns()
    body = {"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "tempo-check-http"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": uuid.uuid4().hex[:16], "name": "check-http",
            "kind": 1, "startTimeUnixNano": str(now - 1000000), "endTimeUnixNano": str(now),
            "attributes": [{"key": "foo", "value": {"stringValue": "bar"}},
                           {"key": "run", "value": {"stringValue": run}}]}]}]}]}
    req = urllib.request.Request(f"{otlp_http}/v1/traces", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        if r.status != 200:
            sys.exit(f"tempo_check: OTLP/HTTP POST answered {r.status}")
    return trace_id


def main():
    grpc, http = os.environ["TEMPO_OTLP_GRPC"], os.environ["TEMPO_HTTP"]
    run = uuid.uuid4().hex
    provider = TracerProvider(resource=Resource.create({"service.name": "tempo-check"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=grpc, insecure=True)))
    with provider.get_tracer("tempo_check").start_as_current_span("check") as span:
        span.set_attribute("foo", "bar")
        span.set_attribute("run", run)
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    find(http, run, trace_id, time.time())

    body = get(f"{http}/api/traces/{trace_id}")
    spans = [s for b in body.get("batches", body.get("resourceSpans", []))
             for ss in b.get("scopeSpans", b.get("instrumentationLibrarySpans", []))
             for s in ss.get("spans", [])]
    attrs = {a["key"]: a["value"].get("stringValue") for s in spans
             for a in s.get("attributes", [])}
    if attrs.get("foo") != "bar" or attrs.get("run") != run:
        sys.exit(f"tempo_check: /api/traces/{trace_id} lacks foo=bar, run={run}: {body}")
    print(f"trace: /api/traces/{trace_id} -> {len(spans)} span, foo={attrs['foo']}")

    if os.environ.get("TEMPO_OTLP_HTTP"):
        run = uuid.uuid4().hex
        find(http, run, send_otlp_http(os.environ["TEMPO_OTLP_HTTP"], run), time.time())


if __name__ == "__main__":
    main()
