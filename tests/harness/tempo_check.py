"""tempo_check.py: proves a Tempo from tempo.sh takes OTLP and answers TraceQL and trace lookups.

Usage (with the environment `tempo.sh start DIR` prints):
  eval "$(tests/harness/tempo.sh start "$dir")"
  TEMPO_OTLP_GRPC=... TEMPO_HTTP=... "$(tests/harness/pyenv.sh)" tests/harness/tempo_check.py

Sends one span with `foo = "bar"` and a unique `run` attribute through the OpenTelemetry SDK's
OTLP/gRPC exporter (a sender podtrail did not write), finds it with
`{ span.foo = "bar" && span.run = "<run>" }` in /api/search, then fetches it from
/api/traces/<id>. Prints how long each step took; exits non-zero with the reason on failure.
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
    sent = time.time()

    q = '{ span.foo = "bar" && span.run = "%s" }' % run
    url = f"{http}/api/search?" + urllib.parse.urlencode(
        {"q": q, "start": int(sent) - 300, "end": int(sent) + 60})
    found = None
    while time.time() - sent < 15:
        for t in get(url).get("traces", []):
            # Tempo's search may drop a trace id's leading zeros
            if t["traceID"].zfill(32) == trace_id:
                found = t
        if found:
            break
        time.sleep(0.2)
    if not found:
        sys.exit(f"tempo_check: trace {trace_id} not found by {q} within 15 s")
    print(f"search: {q} -> {found['traceID']} after {time.time() - sent:.1f} s")

    body = get(f"{http}/api/traces/{trace_id}")
    spans = [s for b in body.get("batches", body.get("resourceSpans", []))
             for ss in b.get("scopeSpans", b.get("instrumentationLibrarySpans", []))
             for s in ss.get("spans", [])]
    attrs = {a["key"]: a["value"].get("stringValue") for s in spans
             for a in s.get("attributes", [])}
    if attrs.get("foo") != "bar" or attrs.get("run") != run:
        sys.exit(f"tempo_check: /api/traces/{trace_id} lacks foo=bar, run={run}: {body}")
    print(f"trace: /api/traces/{trace_id} -> {len(spans)} span, foo={attrs['foo']}")


if __name__ == "__main__":
    main()
