"""Shared fixtures for podtrail's stack tests (collector, Jaeger, Grafana, deploy, docs).

Prerequisites (Go toolchain, kubectl/kustomize, network to package registries) are built or
installed by tests/harness/*.sh. When one is missing the test fails, in CI or not, saying
what is missing: a skipped test reads as a passed suite.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "harness"
sys.path.insert(0, str(HARNESS))
from harness_env import parse_env  # noqa: E402  (one reader of the harness scripts' output)


def require(ok, why):
    """Fail when a prerequisite is missing (never skip), saying what is missing."""
    if ok:
        return
    pytest.fail(
        f"test prerequisite missing: {why}. `sudo scripts/setup.sh` installs what the suite "
        "needs; tests/harness/*.sh build the rest (network to the package registries needed)"
    )


def run(cmd, **kw):
    """Run a command, returning CompletedProcess; output captured as text."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 1800)
    return subprocess.run(cmd, **kw)


def harness(script, *args, env=None, timeout=1800):
    """Run tests/harness/<script> and return its stdout lines parsed as KEY=VALUE (or raw)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = run(["bash", str(HARNESS / script), *args], env=full_env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return p.stdout


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def kustomize_cmd():
    """A command that renders a kustomization: `kubectl kustomize` or a built kustomize."""
    p = run(["bash", str(HARNESS / "kustomize.sh")], timeout=1800)
    require(p.returncode == 0 and p.stdout.strip(), f"no kustomize: {p.stderr[-2000:]}")
    return p.stdout.strip().split()
