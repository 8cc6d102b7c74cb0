"""grafana/, docker-compose.yaml and docs/investigate.md: every query a SOC analyst is handed
is checked against docs/attributes.md (the attribute table podtrail emits), every metric a
dashboard uses is listed for the agent's own test, the provisioning is consistent, and the
Compose file is valid for the Compose Specification (compose-go, as Docker Compose loads it).
Tempo and Grafana are AGPL and not run here; Jaeger and the collector configs of the stack
are checked by the real binaries."""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

import attrcheck
from conftest import REPO, harness, run

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
GRAFANA_BUILTIN_VARS = {"__rate_interval", "__range", "__interval", "__from", "__to"}
PODTRAIL_METRIC = re.compile(r"\bpodtrail_[a-z_]+\b")


@pytest.fixture(scope="module")
def attrs():
    path = REPO / "docs" / "attributes.md"
    assert path.exists(), "docs/attributes.md (the attribute table) is missing"
    table = attrcheck.parse_table(path.read_text())
    assert len(table) >= 30, f"attribute table looks truncated: {len(table)} rows"
    return table


def dashboards():
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def panels(board):
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def targets(kind):
    for name, board in dashboards().items():
        for p in panels(board):
            for t in p.get("targets", []):
                if t.get("datasource", p.get("datasource", {})).get("type") == kind:
                    yield name, p, t


def investigate_blocks(lang):
    text = (REPO / "docs" / "investigate.md").read_text()
    return re.findall(r"```%s\n(.*?)```" % re.escape(lang), text, re.S)


def test_dashboards_are_generated_from_generate_py():
    sys.path.insert(0, str(REPO / "grafana" / "dashboards"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    rendered = generate.render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for name, text in rendered.items():
        assert (REPO / "grafana" / "dashboards" / name).read_text() == text, (
            f"{name} is stale: run python3 grafana/dashboards/generate.py")


def test_every_traceql_query_uses_known_attributes(attrs):
    queries = [(n, p["title"], t["query"]) for n, p, t in targets("tempo")]
    assert len(queries) >= 10
    errors = []
    for name, title, q in queries:
        if re.fullmatch(r"\$\w+", q):  # a trace-by-id panel
            continue
        errors += [f"{name} / {title}: {e}" for e in attrcheck.check_traceql(q, attrs)]
    assert not errors, "\n".join(errors)


def test_every_jaeger_search_uses_known_tags(attrs):
    searches = list(targets("jaeger"))
    assert searches
    errors = []
    for name, p, t in searches:
        assert t["service"] == "podtrail", "all of podtrail's spans share one service name"
        errors += [f"{name} / {p['title']}: {e}" for e in attrcheck.check_jaeger_tags(t["tags"], attrs)]
    assert not errors, "\n".join(errors)


# span names an operation filter may use: the fixed ones (process spans are named argv[0])
SPAN_NAMES = {"session opened", "alert", "connect", "outbound", "attribution", "sendto", "accept", "listen", "socket"}


def test_investigate_md_queries_use_known_attributes(attrs):
    traceql = investigate_blocks("traceql")
    jaeger = investigate_blocks("jaeger")
    assert len(traceql) >= 8 and len(jaeger) >= 4, (len(traceql), len(jaeger))
    errors = []
    for block in traceql:
        for q in block.strip().splitlines():
            errors += attrcheck.check_traceql(q, attrs)
    for block in jaeger:
        for line in block.strip().splitlines():
            m = re.fullmatch(r'service=podtrail(?:\s+operation=(?:"([^"]+)"|(\S+)))?\s+tags:\s*(.+)', line.strip())
            assert m, f"jaeger block line must read 'service=podtrail [operation=\"...\"] tags: k=v ...': {line!r}"
            op = m.group(1) or m.group(2)
            if op is not None and op not in SPAN_NAMES:
                errors.append(f"jaeger operation {op!r} is no span name podtrail sends ({sorted(SPAN_NAMES)})")
            errors += attrcheck.check_jaeger_tags(m.group(3), attrs)
    assert not errors, "\n".join(errors)


def test_a_renamed_attribute_breaks_the_check(attrs):
    """The check can fail: rename a key (or a value) in the table and the queries are wrong."""
    renamed = dict(attrs)
    renamed["k8s.namespace.name.renamed"] = renamed.pop("k8s.namespace.name")
    errors = [e for _, _, t in targets("tempo") if "{" in t["query"]
              for e in attrcheck.check_traceql(t["query"], renamed)]
    assert any("k8s.namespace.name" in e for e in errors)
    bad = attrcheck.check_traceql('{ span.podtrail.session.kind = "exce" }', attrs)
    assert any("no value" in e for e in bad), bad
    bad = attrcheck.check_traceql('{ span.podtrail.session.incomplete = "yes" }', attrs)
    assert any("compared" in e for e in bad), bad
    bad = attrcheck.check_traceql('{ resource.k8s.pod.name = "x" }', attrs)
    assert any("span. scope" in e for e in bad), bad
    bad = attrcheck.check_traceql('{ nmae = "tcpdump" }', attrs)
    assert any("nmae" in e for e in bad), bad
    assert attrcheck.check_jaeger_tags("k8s.namespace.nam=billing", attrs)


def test_dashboard_metrics_are_listed_for_the_agent():
    used = set()
    for _, _, t in targets("prometheus"):
        used |= set(PODTRAIL_METRIC.findall(t["expr"]))
    listed = [l.strip() for l in (REPO / "docs" / "metrics-used-by-dashboards.txt").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    assert len(listed) == len(set(listed))
    assert used == set(listed), f"dashboards use {sorted(used)}, file lists {sorted(listed)}"
    for need in ("podtrail_events_lost_total", "podtrail_spans_lost_total", "podtrail_export_queue_spans"):
        assert need in used


def test_provisioning_is_consistent():
    ds = yaml.safe_load((REPO / "grafana/provisioning/datasources/podtrail.yaml").read_text())
    uids = {d["uid"]: d["type"] for d in ds["datasources"]}
    assert uids == {"tempo": "tempo", "jaeger": "jaeger", "prometheus": "prometheus"}
    prov = yaml.safe_load((REPO / "grafana/provisioning/dashboards/podtrail.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    seen_uids = set()
    for name, board in dashboards().items():
        assert board["uid"] not in seen_uids
        seen_uids.add(board["uid"])
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), name
        defined = {v["name"] for v in board["templating"]["list"]} | GRAFANA_BUILTIN_VARS
        for p in panels(board):
            assert "gridPos" in p
            for t in p.get("targets", []):
                d = t.get("datasource", p.get("datasource"))
                assert uids.get(d["uid"]) == d["type"], (name, p["title"], d)
            for var in re.findall(r"\$\{?(\w+)", json.dumps(p)):
                assert var in defined, f"{name} / {p.get('title')}: undefined variable ${var}"


def test_compose_file_is_valid_compose_spec():
    compose = REPO / "docker-compose.yaml"
    p = run(["bash", str(REPO / "tests/harness/composecheck.sh"), str(compose)])
    assert p.returncode == 0, p.stderr
    doc = yaml.safe_load(compose.read_text())
    assert {"otel-collector", "tempo", "jaeger", "prometheus", "grafana"} <= set(doc["services"])
    for svc in doc["services"].values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"compose mounts missing {src}"
        if "build" in svc:
            assert (REPO / svc["build"]["context"] / "Dockerfile").exists()
    env = doc["services"]["otel-collector"]["environment"]
    assert env["TEMPO_ENDPOINT"].startswith("tempo:") and env["JAEGER_ENDPOINT"].startswith("jaeger:")


def test_compose_check_can_fail(tmp_path):
    bad = tmp_path / "docker-compose.yaml"
    bad.write_text((REPO / "docker-compose.yaml").read_text().replace("restart:", "restrat:"))
    p = run(["bash", str(REPO / "tests/harness/composecheck.sh"), "-schema-only", str(bad)])
    assert p.returncode != 0 and "restrat" in p.stderr, p.stderr


def test_stack_jaeger_config_is_valid_for_real_jaeger():
    jaeger = harness("jaeger.sh", "build").strip()
    p = run([jaeger, "validate", "--config", str(REPO / "grafana/stack/jaeger.yaml")])
    assert p.returncode == 0, p.stdout + p.stderr


def test_tempo_config_keeps_the_trail():
    cfg = yaml.safe_load((REPO / "grafana/stack/tempo.yaml").read_text())
    assert cfg["server"]["http_listen_port"] == 3200
    assert "otlp" in cfg["distributor"]["receivers"]
    retention = cfg["compactor"]["compaction"]["block_retention"]
    assert int(retention.rstrip("h")) >= 24 * 90, "keep at least 90 days"
    assert "local-blocks" in cfg["overrides"]["defaults"]["metrics_generator"]["processors"], \
        "TraceQL metrics (sessions over time) need the local-blocks processor"
    assert "sampl" not in (REPO / "grafana/stack/tempo.yaml").read_text().split("No sampling")[1].lower()


def test_the_sessions_no_request_explains_query_is_one_query_everywhere():
    """README.md, docs/investigate.md and the Sessions dashboard give the same query for the
    sessions no Kubernetes request explains, and it takes node sessions in."""
    sys.path.insert(0, str(REPO / "grafana" / "dashboards"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    q = generate.UNEXPLAINED
    assert '"none"' in q and "node" in q, q
    assert f"`{q}`" in (REPO / "README.md").read_text()
    assert any(line.strip().startswith(q) for block in investigate_blocks("traceql") for line in block.splitlines())
    board = dashboards()["podtrail-sessions.json"]
    assert any(t["query"].startswith(q) for p in panels(board) for t in p.get("targets", [])
               if p.get("title") == "Sessions no request explains")


def test_namespace_user_and_pod_are_dropdowns_of_tempo_tag_values():
    board = dashboards()["podtrail-investigate.json"]
    by_name = {v["name"]: v for v in board["templating"]["list"]}
    for name, attr in [("namespace", "span.k8s.namespace.name"), ("user", "span.user.name"),
                       ("pod", "span.k8s.pod.name")]:
        v = by_name[name]
        assert v["type"] == "query" and v["datasource"]["type"] == "tempo", v
        # type 1: Grafana's Tempo variable query "label values" (GET /api/v2/search/tag/<attr>/values)
        assert v["query"]["type"] == 1 and v["query"]["label"] == attr, v
