"""The shipped grafana/stack/tempo.yaml in a real Tempo (tests/harness/tempo.sh).

tempo.sh runs the shipped file with only loopback listeners, local paths and fast flush
periods changed, so a key real Tempo refuses fails here, and so do the query limits the
dashboards depend on: their default range is 7 days, and Tempo's default limit for TraceQL
metrics is 3 hours (HTTP 400 on every "sessions over time" panel).
"""
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import HARNESS, harness, parse_env, run


@pytest.fixture(scope="module")
def tempo(tmp_path_factory):
    d = tmp_path_factory.mktemp("tempo")
    env = parse_env(harness("tempo.sh", "start", str(d), timeout=1800))
    yield env
    harness("tempo.sh", "stop", str(d))


def get(url):
    """(status, body) of a GET; Tempo answers a refused query with 400 and a text reason."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_real_tempo_takes_otlp_and_answers_search_and_trace_by_id(tempo):
    p = run([os.environ.get("PODTRAIL_PYTHON") or harness("pyenv.sh").strip(),
             str(HARNESS / "tempo_check.py")], env={**os.environ, **tempo}, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "search:" in p.stdout and "trace:" in p.stdout


def test_dashboards_seven_day_range_is_within_the_query_limits(tempo):
    # a span to count, so the metrics query proves the local-blocks processor is fed too
    p = run([os.environ.get("PODTRAIL_PYTHON") or harness("pyenv.sh").strip(),
             str(HARNESS / "tempo_check.py")], env={**os.environ, **tempo}, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    now = int(time.time())
    q = urllib.parse.urlencode({"q": '{ span.foo = "bar" } | count_over_time()',
                                "start": now - 7 * 86400, "end": now, "step": "3600s"})
    deadline = time.time() + 15
    while True:
        status, body = get(f"{tempo['TEMPO_HTTP']}/api/metrics/query_range?{q}")
        assert status == 200, f"7-day TraceQL metrics query refused: {body}"
        if '"value"' in body or time.time() > deadline:
            break
        time.sleep(0.5)
    assert '"value"' in body, f"the metrics query counted nothing: {body}"
    q = urllib.parse.urlencode({"q": '{ span.foo = "bar" }', "start": now - 30 * 86400, "end": now})
    status, body = get(f"{tempo['TEMPO_HTTP']}/api/search?{q}")
    assert status == 200, f"30-day search refused: {body}"


def test_the_four_questions_search_dedicated_columns(repo):
    """Every span attribute the README's four questions match on has a dedicated column."""
    import re

    import yaml

    cfg = yaml.safe_load((repo / "grafana" / "stack" / "tempo.yaml").read_text())
    cols = cfg["storage"]["trace"]["block"]["parquet_dedicated_columns"]
    assert len([c for c in cols if c["scope"] == "span"]) <= 10, "Tempo allows 10 span-level columns"
    dedicated = {c["name"] for c in cols if c["scope"] == "span"}
    readme = (repo / "README.md").read_text()
    keys = set(re.findall(r"span\.([a-z0-9_.]+)\s*=\s*\"", readme))
    assert {"k8s.namespace.name", "user.name", "podtrail.process.identity"} <= keys, keys
    assert keys <= dedicated, f"README queries match on keys without a dedicated column: {keys - dedicated}"
