"""deploy/ renders with kustomize and every object validates against the Kubernetes schemas
of the newest release kubernetes-validate carries; the security-relevant choices of the
manifests (not privileged, only the needed capabilities, read-only RBAC, a webhook that can
never block exec) are asserted, so a careless edit fails here rather than in a cluster."""
import copy
import os

import kubernetes_validate
import pytest
import yaml

from conftest import REPO, run

AGENT_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"}


@pytest.fixture(scope="module")
def objects(kustomize_cmd):
    p = run([*kustomize_cmd, str(REPO / "deploy")], timeout=600)
    assert p.returncode == 0, p.stderr
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    assert docs, "kustomize rendered nothing"
    return docs


def by_kind(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} in deploy/"
    return found[0] if name else found


def test_every_object_validates_against_current_kubernetes_schemas(objects):
    version = kubernetes_validate.latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 33), version
    for obj in objects:
        # strict: unknown fields (typos such as `readOnlyRootFileSystem`) are errors too.
        kubernetes_validate.validate(obj, version, strict=True)


def test_validator_rejects_a_broken_object(objects):
    """Proves the check above can fail: a misspelt field must not validate."""
    ds = copy.deepcopy(by_kind(objects, "DaemonSet", "podtrail-agent"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)


def test_expected_objects_present(objects):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for want in [
        ("Namespace", "podtrail"),
        ("DaemonSet", "podtrail-agent"),
        ("Deployment", "podtrail-receiver"),
        ("Service", "podtrail-receiver"),
        ("Service", "podtrail-receiver-peers"),
        ("ServiceAccount", "podtrail-agent"),
        ("ClusterRole", "podtrail-agent"),
        ("ClusterRoleBinding", "podtrail-agent"),
        ("ValidatingWebhookConfiguration", "podtrail-exec"),
        ("NetworkPolicy", "podtrail-receiver"),
    ]:
        assert want in kinds, f"{want} missing from deploy/"
    for o in objects:
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                             "ValidatingWebhookConfiguration"):
            assert o["metadata"].get("namespace") == "podtrail", o["metadata"]


def test_agent_daemonset_is_least_privilege(objects):
    pod = by_kind(objects, "DaemonSet", "podtrail-agent")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork"), "the agent does not need the host network"
    (c,) = pod["containers"]
    assert c["command"] == ["podtrail", "run", "--config", "/etc/podtrail/config.toml"]
    sc = c["securityContext"]
    assert sc.get("privileged") is not True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= AGENT_CAPS
    assert {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"} <= set(sc["capabilities"]["add"])
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    for k in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][k]), k
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for host, where in [("/sys/kernel/btf", "/sys/kernel/btf"), ("/sys/fs/cgroup", "/sys/fs/cgroup"),
                        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
                        ("/run/containerd/containerd.sock", "/run/containerd/containerd.sock")]:
        m = mounts.get(where)
        assert m is not None, f"no mount at {where}"
        assert m.get("readOnly") is True, f"{where} must be read-only"
        assert vols[m["name"]]["hostPath"]["path"] == host
    assert pod["serviceAccountName"] == "podtrail-agent"
    # the durable queue outlives the pod: a writable hostPath at the default state directory
    state = mounts.get("/var/lib/podtrail")
    assert state is not None and not state.get("readOnly"), "the state directory is mounted writable"
    assert vols[state["name"]]["hostPath"]["path"] == "/var/lib/podtrail"


def test_receiver_is_unprivileged_with_tls(objects):
    dep = by_kind(objects, "Deployment", "podtrail-receiver")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][:2] == ["podtrail", "receiver"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not c["securityContext"]["capabilities"].get("add")
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert {"podtrail-receiver-tls", "podtrail-client-ca"} <= secrets
    assert dep["spec"]["replicas"] >= 2
    peers = by_kind(objects, "Service", "podtrail-receiver-peers")
    assert peers["spec"]["clusterIP"] == "None", "agents subscribe to every replica"
    sel = dep["spec"]["selector"]["matchLabels"]
    for svc in by_kind(objects, "Service"):
        assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items() \
            or svc["spec"]["selector"] == sel


def test_rbac_is_read_only(objects):
    role = by_kind(objects, "ClusterRole", "podtrail-agent")
    resources = set()
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        assert "*" not in rule["resources"] and "secrets" not in rule["resources"], rule
        resources |= set(rule["resources"])
    assert {"pods", "nodes", "servicecidrs"} <= resources
    # the cluster ranges: ServiceCIDRs live in networking.k8s.io; services only by the one name
    (cidrs,) = [r for r in role["rules"] if "servicecidrs" in r["resources"]]
    assert cidrs["apiGroups"] == ["networking.k8s.io"] and {"list", "watch"} <= set(cidrs["verbs"]), cidrs
    for rule in role["rules"]:
        if "services" in rule["resources"]:
            assert rule.get("resourceNames") == ["kubernetes"] and rule["verbs"] == ["get"], rule


def test_admission_webhook_never_blocks_exec(objects):
    vwc = by_kind(objects, "ValidatingWebhookConfiguration", "podtrail-exec")
    (wh,) = vwc["webhooks"]
    assert wh["failurePolicy"] == "Ignore"
    assert wh["sideEffects"] == "None"
    assert wh["timeoutSeconds"] <= 5
    (rule,) = wh["rules"]
    assert rule["operations"] == ["CONNECT"]
    assert {"pods/exec", "pods/attach"} <= set(rule["resources"])
    svc = wh["clientConfig"]["service"]
    target = by_kind(objects, "Service", svc["name"])
    assert target["metadata"]["namespace"] == svc["namespace"]
    assert target["spec"].get("clusterIP") != "None", "the API server needs a cluster IP"
    assert svc["port"] in [p["port"] for p in target["spec"]["ports"]]


def test_documented_overlay_sets_the_cluster_name(kustomize_cmd, tmp_path):
    """docs/deploy.md tells users to patch env/5 for k8s.cluster.name: that must stay true."""
    import re
    doc = (REPO / "docs" / "deploy.md").read_text()
    m = re.search(r"# my-cluster/kustomization.yaml\n(.*?)```", doc, re.S)
    assert m, "overlay example missing from docs/deploy.md"
    overlay = tmp_path / "my-cluster"
    overlay.mkdir()
    body = "\n".join(line[3:] for line in m.group(1).splitlines())
    body = body.replace("../deploy", os.path.relpath(REPO / "deploy", overlay))
    (overlay / "kustomization.yaml").write_text(body)
    p = run([*kustomize_cmd, str(overlay)], timeout=600)
    assert p.returncode == 0, p.stderr
    ds = by_kind([d for d in yaml.safe_load_all(p.stdout) if d], "DaemonSet", "podtrail-agent")
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "k8s.cluster.name=prod-eu-1"
