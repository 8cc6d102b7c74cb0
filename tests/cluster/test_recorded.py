"""The audit fixtures the unit and end-to-end tests feed podtrail (tests/fixtures/audit) are
what this real API server sends, request for request and stage for stage.

Each fixture named here was recorded from this suite's own scenarios
(`PODTRAIL_RECORD_FIXTURES=1 bash tests/cluster/run.sh` writes them again); every run
compares the committed file with what the real API server logged for the same scenario in
this run, so a fixture that stops matching the real thing fails here, not in production.
"""
import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audit"
RECORD = os.environ.get("PODTRAIL_RECORD_FIXTURES") == "1"


def shape(events):
    """Per request, in the order received: what podtrail reads to classify it."""
    order, by_id = [], {}
    for e in events:
        if e["auditID"] not in by_id:
            order.append(e["auditID"])
        by_id.setdefault(e["auditID"], []).append(e)
    out = []
    for aid in order:
        evs = by_id[aid]
        ref = evs[0].get("objectRef") or {}
        out.append({
            "verb": evs[0]["verb"],
            "subresource": ref.get("subresource"),
            "stages": [(e["stage"], (e.get("responseStatus") or {}).get("code")) for e in evs],
            "levels": sorted({e["level"] for e in evs}),
            "request_body": [("requestObject" in e) for e in evs],
            "decision": [(e.get("annotations") or {}).get("authorization.k8s.io/decision") for e in evs],
            "user_agent": evs[0].get("userAgent", "").split(" ")[0].split("/")[0],
        })
    return out


def live(cluster, ids):
    ids = set(ids)
    return [e for e in cluster.audit_events() if e.get("auditID") in ids]


@pytest.mark.parametrize("fixture,key", [
    ("exec_denied.json", "denied_audit_ids"),
    ("ephemeral_debug.json", "debug_audit_ids"),
])
def test_fixture_is_what_the_real_api_server_sends(cluster, seen, fixture, key):
    events = live(cluster, seen[key])
    assert events, f"no audit events for {key}"
    path = FIXTURES / fixture
    if RECORD:
        path.write_text(json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {},
                                    "items": events}, indent=1) + "\n")
    recorded = json.loads(path.read_text())["items"]
    assert shape(recorded) == shape(events), (
        f"{fixture} no longer matches the real API server's events; record it again with "
        f"PODTRAIL_RECORD_FIXTURES=1 bash tests/cluster/run.sh\nlive: {json.dumps(shape(events), indent=1)}")
