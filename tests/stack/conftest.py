"""Shared fixtures for podtrail's stack tests (collector, Jaeger, Grafana, deploy, docs).

Prerequisites (Go toolchain, kubectl/kustomize, network to package registries) are built or
installed by tests/harness/*.sh. When one is missing: skip on a developer machine, fail when
CI is set (a test that silently skips in CI is a defect).
"""
import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "harness"
IN_CI = bool(os.environ.get("CI"))


def require(ok, why):
    """Skip (developer machine) or fail (CI) when a prerequisite is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"missing prerequisite in CI: {why}")
    pytest.skip(why)


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


def parse_env(text):
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def kustomize_cmd():
    """A command that renders a kustomization: `kubectl kustomize` or a built kustomize."""
    p = run(["bash", str(HARNESS / "kustomize.sh")], timeout=1800)
    require(p.returncode == 0 and p.stdout.strip(), f"no kustomize: {p.stderr[-2000:]}")
    return p.stdout.strip().split()
