"""The investigation questions against the real backends holding the traces the scenarios made.

Every TraceQL query in README.md, docs/investigate.md and the Grafana dashboards runs against
the real Tempo (it must be accepted, and a search must answer), and each of the four questions
returns the traces the scenarios produced; the Jaeger searches docs/investigate.md gives return
them from the real Jaeger. Runs last (pytest orders files by name): it reads what
test_exec.py, test_kinds.py and test_node.py recorded in `cluster.seen`.
"""
import json
import shlex
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import NAMESPACE, REPO, eventually, http_json

DOC_AUDIT_ID = "6d1c0b1e-2f0e-4a53-9c0e-3f3a5d2b8f11"


def readme_queries():
    text = (REPO / "README.md").read_text()
    return [q for q in re.findall(r"`(\{[^`]*\})`", text)]


def investigate_queries(lang):
    text = (REPO / "docs" / "investigate.md").read_text()
    out = []
    for block in re.findall(r"```%s\n(.*?)```" % re.escape(lang), text, re.S):
        out += [line.strip() for line in block.strip().splitlines() if line.strip()]
    return out


def dashboard_queries():
    out = []
    for p in sorted((REPO / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(p.read_text())

        def panels(ps):
            for x in ps:
                yield x
                yield from panels(x.get("panels", []))

        for panel in panels(board["panels"]):
            for t in panel.get("targets", []):
                ds = t.get("datasource", panel.get("datasource", {})) or {}
                if ds.get("type") == "tempo" and not re.fullmatch(r"\$\w+", t.get("query", "")):
                    out.append((f"{p.name} / {panel.get('title')}", t["query"]))
    return out


def substitute(q, seen):
    subs = {
        DOC_AUDIT_ID: seen.get("exec_audit_id", DOC_AUDIT_ID),
        "<audit id>": seen.get("exec_audit_id", DOC_AUDIT_ID),
        "john.doe@example.com": "alice@example.com",
        "$namespace": NAMESPACE, "${namespace}": NAMESPACE,
        "$user": "alice@example.com", "${user}": "alice@example.com",
        "$pod": "shell", "${pod}": "shell",
        "$audit_id": seen.get("exec_audit_id", DOC_AUDIT_ID), "${audit_id}": seen.get("exec_audit_id", DOC_AUDIT_ID),
    }
    for k, v in subs.items():
        q = q.replace(k, v)
    return q


def is_metrics(q):
    return bool(re.search(r"\|\s*(count_over_time|rate|quantile_over_time|histogram_over_time|sum_over_time|avg_over_time|min_over_time|max_over_time)\(", q))


def tempo(cluster, q):
    """Run one query: search, or TraceQL metrics for a metrics query. Returns trace ids (search)
    or the series (metrics). Raises with Tempo's own message when it refuses the query."""
    now = int(time.time())
    if is_metrics(q):
        url = f"{cluster.backends['TEMPO_HTTP']}/api/metrics/query_range?" + urllib.parse.urlencode(
            {"q": q, "start": now - 3600, "end": now, "step": "60s"})
    else:
        url = f"{cluster.backends['TEMPO_HTTP']}/api/search?" + urllib.parse.urlencode(
            {"q": q, "start": now - 3600, "end": now + 60, "limit": 500})
    try:
        data = http_json(url, timeout=30)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"Tempo refused {q!r}: {e.code} {e.read()[:500]!r}")
    if is_metrics(q):
        return data.get("series") or []
    return {t["traceID"].lower().rjust(32, "0") for t in data.get("traces") or []}


def hexid(audit_id):
    return audit_id.replace("-", "").lower()


def test_every_query_a_user_is_given_is_accepted_by_the_real_tempo(cluster, seen):
    queries = [("README.md", q) for q in readme_queries()]
    queries += [("docs/investigate.md", q) for q in investigate_queries("traceql")]
    queries += dashboard_queries()
    assert len(queries) >= 15, queries
    errors = []
    for where, q in queries:
        try:
            tempo(cluster, substitute(q, seen))
        except AssertionError as e:
            errors.append(f"{where}: {e}")
    assert not errors, "\n".join(errors)


def test_question_2_one_exec_who_and_everything_it_did(cluster, seen):
    audit_id = seen["exec_audit_id"]
    q = substitute('{ span.podtrail.k8s.audit_id = "<audit id>" }', seen)
    assert q in [substitute(x, seen) for x in readme_queries()], "README's question 2 query changed"
    ids = eventually("question 2 in Tempo", lambda: tempo(cluster, q) or None, timeout=60)
    assert ids == {hexid(audit_id)}, ids


def test_question_1_outbound_from_billing_to_outside(cluster, seen):
    q = '{ span.k8s.namespace.name = "billing" && span.podtrail.network.destination.scope = "external" }'
    assert q in readme_queries()
    want = seen["external_trace_ids"]
    ids = eventually("question 1 in Tempo", lambda: (tempo(cluster, q) & want) or None, timeout=60)
    assert ids


def test_question_3_every_tcpdump(cluster, seen):
    q = '{ span.podtrail.process.identity = "tcpdump" }'
    assert q in readme_queries()
    want = seen["tcpdump_trace_ids"]
    ids = eventually("question 3 in Tempo", lambda: (want <= tempo(cluster, q)) or None, timeout=60)
    assert ids


def test_question_4_everything_one_user_did(cluster, seen):
    q = substitute('{ span.user.name = "john.doe@example.com" }', seen)
    want = {hexid(a) for a in seen["alice_audit_ids"]}
    got = eventually("question 4 in Tempo", lambda: (want <= tempo(cluster, q)) and tempo(cluster, q), timeout=60)
    assert want <= got


def test_jaeger_searches_of_the_docs_return_the_traces(cluster, seen):
    lines = investigate_queries("jaeger")
    assert lines
    errors = []
    for line in lines:
        m = re.fullmatch(r'service=podtrail(?:\s+operation=(?:"([^"]+)"|(\S+)))?\s+tags:\s*(.+)', substitute(line, seen))
        assert m, line
        tags = dict(kv.split("=", 1) for kv in shlex.split(m.group(3)))
        params = {"service": "podtrail", "tags": json.dumps(tags), "limit": 100, "lookback": "1h"}
        if m.group(1) or m.group(2):
            params["operation"] = m.group(1) or m.group(2)
        q = urllib.parse.urlencode(params)
        try:
            http_json(f"{cluster.backends['JAEGER_QUERY']}/api/traces?{q}", timeout=15)
        except urllib.error.HTTPError as e:
            errors.append(f"{line}: {e.code}")
    assert not errors, errors
    # question 2 as Jaeger answers it
    tags = {"podtrail.k8s.audit_id": seen["exec_audit_id"]}
    q = urllib.parse.urlencode({"service": "podtrail", "tags": json.dumps(tags), "limit": 10, "lookback": "1h"})
    data = http_json(f"{cluster.backends['JAEGER_QUERY']}/api/traces?{q}", timeout=15)
    assert {t["traceID"] for t in data["data"]} == {hexid(seen["exec_audit_id"])}
