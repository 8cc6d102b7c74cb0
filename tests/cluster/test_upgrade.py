"""`helm upgrade` and `helm rollback` of the installed release, as an operator changes podtrail's
settings on a running cluster.

Runs last (pytest takes the files in name order): it restarts podtrail's pods twice.
  - the upgrade changes one setting (`kube.pod_labels`, through the chart's `config` value,
    adding the key `tier` to the default keys): the config checksum on the pod templates
    changes, so the DaemonSet and the Deployment roll, and a `kubectl exec` made after the
    rollout comes out as one attributed trace carrying `k8s.pod.label.tier`;
  - the rollback restores the first revision's values: the pods roll again, and the next
    exec's trace is attributed and no longer carries it.
The traces before the upgrade and after the rollback lack `k8s.pod.label.tier` (so the check
on the upgraded trace cannot pass by the setting being on from the start) and all three carry
the default key's `k8s.pod.label.app` (so its absence is the setting, not a broken pod watch).
"""
import json
import time

from conftest import CHART, NAMESPACE, RELEASE_NAMESPACE
from test_exec import session_root, wait_trace

TIER = "k8s.pod.label.tier"
APP = "k8s.pod.label.app"
DEFAULT_POD_LABELS = ["app", "app.kubernetes.io/name", "app.kubernetes.io/instance"]


def revision(cluster):
    status = json.loads(cluster.helm.cluster("status", "podtrail", "--namespace", RELEASE_NAMESPACE,
                                             "--output", "json").stdout)
    assert status["info"]["status"] == "deployed", status["info"]
    return status["version"]


def pod_uids(cluster):
    out = json.loads(cluster.kubectl("-n", RELEASE_NAMESPACE, "get", "pods", "-o", "json").stdout)
    return {p["metadata"]["uid"] for p in out["items"] if p["metadata"].get("deletionTimestamp") is None}


def rolled_out(cluster):
    for what in ("deploy/podtrail-receiver", "ds/podtrail-agent"):
        p = cluster.kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", what, "--timeout=240s",
                            check=False, timeout=260)
        assert p.returncode == 0, f"{what} did not roll out: {p.stdout}{p.stderr}\n{cluster.why_not_ready()}"


def exec_trace(cluster, marker):
    """One non-interactive `kubectl exec` by alice into the `shell` pod; its trace from Jaeger.
    Retried while the new agent connects to the new receiver: an exec made in that window is
    traced (the agent holds a session for its attribution), but the test wants one made after."""
    t0 = time.time() - 1
    p = cluster.kubectl("-n", NAMESPACE, "exec", "shell", "--", "sh", "-c", f"echo {marker}; cat /etc/hostname",
                        user="alice")
    assert marker in p.stdout
    ids = cluster.audit_ids_for("shell", after=t0)
    assert ids, "the exec is not in the audit log"
    t = wait_trace(cluster, ids[-1], lambda t: any(s.name == "cat" for s in t.spans), f"({marker})")
    root = session_root(t)
    assert root.get("user.name") == "alice@example.com", root.attrs
    return root


def test_upgrade_changes_a_setting_and_rollback_restores_it(cluster, pods):
    cluster.kubectl("-n", NAMESPACE, "label", "pod", "shell", "tier=probe", "--overwrite")
    before_rev = revision(cluster)
    before = exec_trace(cluster, "before-upgrade")
    assert before.get(APP) == "shell", f"the default pod_labels are not applied: {before.attrs}"
    assert before.get(TIER) is None, f"tier is on before the upgrade: {before.attrs}"

    uids = pod_uids(cluster)
    values = json.loads(cluster.values_file.read_text())
    values.setdefault("config", {})["kube"] = {"pod_labels": DEFAULT_POD_LABELS + ["tier"]}
    upgraded = cluster.values_file.with_name("values-upgrade.json")
    upgraded.write_text(json.dumps(values))
    cluster.helm.cluster("upgrade", "podtrail", CHART, "--namespace", RELEASE_NAMESPACE, "--values", upgraded,
                         timeout=300)
    assert revision(cluster) == before_rev + 1
    rolled_out(cluster)
    assert not uids & pod_uids(cluster), "the upgrade changed the config but restarted no pod"
    cm = json.loads(cluster.kubectl("-n", RELEASE_NAMESPACE, "get", "configmap", "podtrail-config", "-o",
                                    "json").stdout)
    assert '"tier"' in cm["data"]["config.toml"], cm["data"]["config.toml"]

    after = exec_trace(cluster, "after-upgrade")
    assert after.get(TIER) == "probe" and after.get(APP) == "shell", \
        f"the upgraded agent does not apply kube.pod_labels: {after.attrs}"

    uids = pod_uids(cluster)
    cluster.helm.cluster("rollback", "podtrail", str(before_rev), "--namespace", RELEASE_NAMESPACE,
                         "--wait", "--timeout", "240s", timeout=300)
    assert revision(cluster) == before_rev + 2
    rolled_out(cluster)
    assert not uids & pod_uids(cluster), "the rollback restarted no pod"
    back = exec_trace(cluster, "after-rollback")
    assert back.get(TIER) is None and back.get(APP) == "shell", f"the rollback left tier on: {back.attrs}"
