"""podtrail's Helm chart (deploy/helm/podtrail) against the real API server of this cluster.

The chart itself is what conftest.py installs (`helm install`), so every other scenario of this
suite (the seed: a real `kubectl exec` read back as one attributed trace) runs on it. Here:
  - `helm lint --strict`, for the default values and with every option on;
  - every object `helm template` renders (default values, cert-manager on, every option on,
    this cluster's values) and the kustomize base (deploy/), validated by this API server
    with a server-side dry-run create: its own OpenAPI schemas, strict field validation,
    admission;
    cert-manager's Certificates and Issuers against cert-manager's CRDs, taken from its Go
    module (tests/harness/helm.sh cert-manager-crds) and installed here;
  - the kustomize base and the chart with default values compared object by object, so the
    two cannot drift;
  - the config.toml the chart renders accepted by podtrail itself (`podtrail config`).
Each check is shown to fail on a broken input, so none passes by construction.
"""
import copy
import json
import pathlib
import re
import shutil
import tomllib

import pytest
import yaml

from conftest import CHART, RELEASE_NAMESPACE, REPO, harness, sh

# Every option the chart has, on: rendered and validated like the defaults.
FULL_VALUES = {
    "clusterName": "prod-eu-1",
    "imagePullSecrets": [{"name": "regcred"}],
    "collector": {"endpoint": "https://collector.example.internal:4317", "protocol": "grpc",
                  "tls": {"enabled": True, "secretName": "my-otlp-tls"}},
    "scope": {"podCidrs": ["10.244.0.0/16"], "serviceCidrs": ["10.96.0.0/12"],
              "nodeCidrs": ["192.168.10.0/24"], "learn": False},
    "rules": {"enabled": True, "defaults": True, "disable": ["Exec without a Kubernetes request"],
              "custom": "- name: Netcat in a container\n  severity: high\n  on: exec\n  match:\n    process.name: [nc, ncat]\n"},
    "redaction": {"createSecret": True, "patterns": ["(?i)x-api-key: (\\S+)"]},
    "config": {"attribution": {"hold_ms": 5000}, "receiver": {"admission_unverified": True}},
    "agent": {"extraCapabilities": ["SYS_RESOURCE"], "nodeSelector": {"kubernetes.io/os": "linux"},
              "extraEnv": [{"name": "PODTRAIL_LOG", "value": "info"}], "podAnnotations": {"a": "b"}},
    "receiver": {"replicas": 3, "ports": {"audit": 18443, "admission": 19443, "stream": 17443, "metrics": 19464},
                 "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                 "service": {"type": "LoadBalancer", "nodePorts": {"audit": 30443, "admission": 30444},
                             "loadBalancerSourceRanges": ["10.0.0.0/24"],
                             "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}}},
    "admissionWebhook": {"timeoutSeconds": 2},
    "networkPolicy": {"webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]},
    "certManager": {"enabled": True, "apiserverClient": True, "receiverDnsNames": ["podtrail.example.internal"],
                    "receiverIpAddresses": ["192.0.2.10"]},
}
CERT_MANAGER = {"certManager": {"enabled": True}}
HELM_LABELS = {"app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version",
               "helm.sh/chart"}


def values_file(tmp_path, values, name="values.json"):
    p = tmp_path / name
    p.write_text(json.dumps(values))
    return p


def render(cluster, tmp_path, values=None, chart=CHART):
    args = ["template", "podtrail", chart, "--namespace", RELEASE_NAMESPACE]
    if values is not None:
        args += ["--values", values_file(tmp_path, values)]
    out = cluster.helm(*args).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs, "helm template rendered nothing"
    return docs


def kustomize_base(cluster):
    out = cluster.kubectl("kustomize", REPO / "deploy").stdout
    return [d for d in yaml.safe_load_all(out) if d]


# Where the dry runs happen: a namespace of their own, so the objects are validated as new ones
# (a dry-run apply over the installed release would merge lists such as ports with the live
# objects and validate the mix). Cluster-scoped objects get a suffix for the same reason.
DRY_RUN_NAMESPACE = "podtrail-validate"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration"}


@pytest.fixture(scope="module")
def dry_run_namespace(cluster):
    cluster.kubectl("create", "namespace", DRY_RUN_NAMESPACE)
    cluster.kubectl("label", "namespace", DRY_RUN_NAMESPACE, "pod-security.kubernetes.io/enforce=privileged")
    return DRY_RUN_NAMESPACE


def dry_run(cluster, objects, check=True):
    """`kubectl create --dry-run=server --validate=strict`: the API server validates each object
    against its schemas (strict: an unknown or misspelt field is an error), defaults it and runs
    admission, as for a real create, and stores nothing."""
    objs = copy.deepcopy(objects)
    for o in objs:
        if o["kind"] in CLUSTER_SCOPED:
            o["metadata"]["name"] += "-dry-run"
        else:
            o["metadata"]["namespace"] = DRY_RUN_NAMESPACE
    return cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                           input="\n---\n".join(yaml.safe_dump(o) for o in objs), check=check)


def find(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


@pytest.fixture(scope="module")
def cert_manager_crds(cluster):
    """cert-manager's CRDs from its Go module, installed into this cluster."""
    _, crds = harness("helm.sh", "cert-manager-crds")
    crds = pathlib.Path(crds)
    files = sorted(crds.glob("*.yaml"))
    assert any("certificates" in f.name for f in files) and any("issuers" in f.name for f in files), files
    for f in files:
        # server-side: the CRDs are larger than client-side apply's last-applied annotation allows
        cluster.kubectl("apply", "--server-side", "-f", f)
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names], timeout=90)
    return names


# --- helm lint ---------------------------------------------------------------------------------


def test_helm_is_the_pinned_version(cluster):
    assert cluster.helm("version", "--short").stdout.startswith("v4.3.2")


def test_helm_lint(cluster, tmp_path):
    cluster.helm("lint", "--strict", CHART, "--namespace", RELEASE_NAMESPACE)
    cluster.helm("lint", "--strict", CHART, "--namespace", RELEASE_NAMESPACE,
                 "--values", values_file(tmp_path, FULL_VALUES))


def test_helm_lint_fails_on_a_broken_chart(cluster, tmp_path):
    broken = tmp_path / "podtrail"
    shutil.copytree(CHART, broken)
    t = broken / "templates" / "networkpolicy.yaml"
    t.write_text(t.read_text().replace("{{- end }}", "", 1))  # an unclosed `if`
    p = cluster.helm("lint", "--strict", broken, check=False)
    assert p.returncode != 0, p.stdout


def test_values_are_checked_up_front(cluster, tmp_path):
    """values.schema.json: a misspelt or out-of-range value stops `helm template`/`install`
    with its path, instead of being ignored or reaching a pod."""
    for values, expect in [({"agent": {"hostnetwork": True}}, "hostnetwork"),
                           ({"receiver": {"ports": {"audit": 0}}}, "/receiver/ports/audit"),
                           ({"collector": {"endpoint": "otel:4317"}}, "/collector/endpoint"),
                           ({"certManager": {"issuerRef": {"kind": "Issuers"}}}, "/certManager/issuerRef/kind"),
                           ({"receiver": {"service": {"type": "Nodeport"}}}, "/receiver/service/type"),
                           ({"receiver": {"service": {"nodePorts": {"audit": 8443}}}},
                            "/receiver/service/nodePorts/audit")]:
        p = cluster.helm("template", "podtrail", CHART, "--values", values_file(tmp_path, values), check=False)
        assert p.returncode != 0 and expect in p.stderr, (values, p.stderr)


# --- every rendered object, validated by the API server ------------------------------------------


def test_default_render_validates_server_side(cluster, tmp_path, dry_run_namespace):
    objs = render(cluster, tmp_path)
    dry_run(cluster, objs)
    kinds = {o["kind"] for o in objs}
    assert {"DaemonSet", "Deployment", "Service", "ValidatingWebhookConfiguration", "NetworkPolicy",
            "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap"} <= kinds, kinds
    assert not kinds & {"Certificate", "Issuer", "Namespace"}, kinds


def test_this_clusters_render_validates_server_side(cluster, tmp_path, dry_run_namespace):
    """The values conftest.py installed with."""
    dry_run(cluster, render(cluster, tmp_path, json.loads(cluster.values_file.read_text())))


def test_cert_manager_render_validates_against_cert_managers_crds(cluster, cert_manager_crds, tmp_path,
                                                                   dry_run_namespace):
    for values in (CERT_MANAGER, FULL_VALUES):
        objs = render(cluster, tmp_path, values)
        kinds = [o["kind"] for o in objs]
        assert kinds.count("Certificate") == 5 and kinds.count("Issuer") == 4, kinds
        dry_run(cluster, objs)


def test_cert_manager_render_is_consistent(cluster, tmp_path):
    """What cert-manager issues is what the pods mount, the webhook's CA comes from the
    receiver's Certificate, and the receiver's names cover what the agents dial."""
    objs = render(cluster, tmp_path, CERT_MANAGER)
    vwc = find(objs, "ValidatingWebhookConfiguration", "podtrail-exec")
    ns, name = vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    receiver_cert = find(objs, "Certificate", name)
    assert ns == RELEASE_NAMESPACE == receiver_cert["metadata"]["namespace"]
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    config = tomllib.loads(find(objs, "ConfigMap", "podtrail-config")["data"]["config.toml"])
    (url,) = config["attribution"]["receivers"]
    host = re.match(r"https://([^:/]+):", url).group(1)
    assert host in receiver_cert["spec"]["dnsNames"]
    svc = vwc["webhooks"][0]["clientConfig"]["service"]
    assert f"{svc['name']}.{svc['namespace']}.svc" in receiver_cert["spec"]["dnsNames"]
    assert "server auth" in receiver_cert["spec"]["usages"]
    secrets = {c["spec"]["secretName"]: c for c in objs if c["kind"] == "Certificate"}
    rec = find(objs, "Deployment", "podtrail-receiver")["spec"]["template"]["spec"]
    agent = find(objs, "DaemonSet", "podtrail-agent")["spec"]["template"]["spec"]
    rvol = {v["name"]: v["secret"]["secretName"] for v in rec["volumes"] if "secret" in v}
    avol = {v["name"]: v["secret"]["secretName"] for v in agent["volumes"] if "secret" in v}
    assert secrets[rvol["tls"]]["metadata"]["name"] == "podtrail-receiver"
    assert "client auth" in secrets[avol["agent-tls"]]["spec"]["usages"]
    # the receiver trusts the agents' CA and, apart from it, the API server's client CA
    assert rvol["client-ca"] == avol["agent-tls"]
    api_client = secrets[rvol["apiserver-ca"]]
    assert api_client["spec"]["commonName"] == "kube-apiserver"
    assert api_client["spec"]["issuerRef"]["name"] != secrets[avol["agent-tls"]]["spec"]["issuerRef"]["name"]


def test_full_render_validates_server_side_without_cert_manager(cluster, tmp_path, dry_run_namespace):
    values = copy.deepcopy(FULL_VALUES)
    values["certManager"]["enabled"] = False
    objs = render(cluster, tmp_path, values)
    dry_run(cluster, objs)
    ds = find(objs, "DaemonSet", "podtrail-agent")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    assert "SYS_RESOURCE" in c["securityContext"]["capabilities"]["add"]
    assert {"name": "rules", "mountPath": "/etc/podtrail-rules", "readOnly": True} in c["volumeMounts"]
    assert find(objs, "ConfigMap", "podtrail-rules")["data"]["rules.yaml"] == FULL_VALUES["rules"]["custom"]


def test_receiver_service_types_validate_server_side(cluster, tmp_path, dry_run_namespace):
    """receiver.service: the audit and admission ports on a node port or a load balancer, for an
    API server outside the pod network; each render accepted by this API server."""
    for service, want in [
        ({"type": "NodePort", "nodePorts": {"audit": 30443}}, {"audit": 30443, "admission": None}),
        (FULL_VALUES["receiver"]["service"], {"audit": 30443, "admission": 30444}),
    ]:
        objs = render(cluster, tmp_path, {"receiver": {"service": service}})
        dry_run(cluster, objs)
        spec = find(objs, "Service", "podtrail-receiver")["spec"]
        assert spec["type"] == service["type"], spec
        assert {p["name"]: p.get("nodePort") for p in spec["ports"]} == want, spec
        assert spec.get("loadBalancerSourceRanges") == service.get("loadBalancerSourceRanges"), spec
    # the default stays a cluster IP with no node port (the kustomize base's)
    spec = find(render(cluster, tmp_path), "Service", "podtrail-receiver")["spec"]
    assert spec["type"] == "ClusterIP" and not any("nodePort" in p for p in spec["ports"]), spec


def test_kustomize_base_validates_server_side(cluster, dry_run_namespace):
    dry_run(cluster, kustomize_base(cluster))


def test_dry_run_refuses_a_broken_object(cluster, cert_manager_crds, tmp_path, dry_run_namespace):
    """Proves the checks above can fail: a misspelt field in a DaemonSet, and in a Certificate
    (which only cert-manager's CRD schema knows), are refused by the API server."""
    objs = render(cluster, tmp_path, CERT_MANAGER)
    ds = copy.deepcopy(find(objs, "DaemonSet", "podtrail-agent"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    p = dry_run(cluster, [ds], check=False)
    assert p.returncode != 0 and "readOnlyRootFileSystem" in p.stderr, p.stderr
    cert = copy.deepcopy(find(objs, "Certificate", "podtrail-receiver"))
    cert["spec"]["dnsName"] = cert["spec"].pop("dnsNames")
    p = dry_run(cluster, [cert], check=False)
    assert p.returncode != 0 and "dnsName" in p.stderr, p.stderr
    cert = copy.deepcopy(find(objs, "Certificate", "podtrail-receiver"))
    cert["spec"]["privateKey"]["algorithm"] = "DSA"  # not in the CRD's enum
    p = dry_run(cluster, [cert], check=False)
    assert p.returncode != 0 and "algorithm" in p.stderr, p.stderr


# --- the kustomize base cannot drift from the chart ------------------------------------------------


def normalise(obj, chart):
    """An object with what may differ between the two installs taken out: Helm's own labels
    (which the chart adds), the chart's config checksum on pod templates (which rolls pods when
    the config changes), and config.toml's text (compared as TOML: comments and order differ)."""
    o = copy.deepcopy(obj)
    labels = o["metadata"].get("labels") or {}
    if chart:
        missing = HELM_LABELS - labels.keys()
        assert not missing, f"{o['kind']}/{o['metadata']['name']} lacks {missing}"
        for k in HELM_LABELS:
            labels.pop(k)
    tmpl = (o.get("spec") or {}).get("template")
    if chart and tmpl:
        tmpl["metadata"]["annotations"].pop("checksum/config")
        if not tmpl["metadata"]["annotations"]:
            del tmpl["metadata"]["annotations"]
    if o["kind"] == "ConfigMap" and "config.toml" in o.get("data", {}):
        o["data"]["config.toml"] = tomllib.loads(o["data"]["config.toml"])
    return o


def differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a.keys() | b.keys()):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'only in the base' if k in a else 'only in the chart'}")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path}: base {a!r} != chart {b!r}"]


def drift(base, chart):
    """Object-by-object differences between the kustomize base and the chart's render. The
    base's Namespace has no counterpart: Helm keeps its release record in the namespace, so it
    must exist before the chart (docs/deploy.md says how to create and label it)."""
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    b = {key(o): normalise(o, chart=False) for o in base if o["kind"] != "Namespace"}
    c = {key(o): normalise(o, chart=True) for o in chart}
    out = [f"{k}: only in the base" for k in b.keys() - c.keys()]
    out += [f"{k}: only in the chart" for k in c.keys() - b.keys()]
    for k in sorted(b.keys() & c.keys()):
        out += [f"{k[0]}/{k[1]}{d}" for d in differences(b[k], c[k])]
    return out


def test_kustomize_base_matches_the_chart(cluster, tmp_path):
    base = kustomize_base(cluster)
    assert ("Namespace", "podtrail") in {(o["kind"], o["metadata"]["name"]) for o in base}
    found = drift(base, render(cluster, tmp_path))
    assert not found, "deploy/ and deploy/helm/podtrail differ (change both):\n" + "\n".join(found)


def test_drift_check_sees_a_difference(cluster, tmp_path):
    """Proves the comparison can fail: one capability, one port, one config key changed in
    the base are each reported."""
    base = kustomize_base(cluster)
    chart = render(cluster, tmp_path)
    for mutate, expect in [
        (lambda o: o["kind"] == "DaemonSet" and o["spec"]["template"]["spec"]["containers"][0]
         ["securityContext"]["capabilities"]["add"].append("SYS_ADMIN"), "capabilities/add"),
        (lambda o: o["kind"] == "Service" and o["metadata"]["name"] == "podtrail-receiver"
         and o["spec"]["ports"][1].update(port=8444), "ports/1/port"),
        (lambda o: o["kind"] == "ConfigMap" and o["data"].update(
            {"config.toml": o["data"]["config.toml"] + "\n[kube]\nwatch = \"off\"\n"}), "config.toml/kube"),
    ]:
        changed = copy.deepcopy(base)
        for o in changed:
            mutate(o)
        found = drift(changed, chart)
        assert any(expect in d for d in found), (expect, found)


def test_versions_agree():
    """The chart's appVersion (its default image tag), the base's image tag and podtrail's
    version are one."""
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    kust = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())
    assert chart["appVersion"] == cargo
    (img,) = kust["images"]
    assert img["newTag"] == cargo


# --- the config podtrail reads ----------------------------------------------------------------------


def test_rendered_config_is_accepted_by_podtrail(cluster, tmp_path):
    """podtrail refuses unknown keys and bad values at start-up: `podtrail config` runs the
    same check on what the chart renders, with every option on."""
    binary = REPO / "target" / "release" / "podtrail"
    assert binary.exists(), "no target/release/podtrail (cargo build --release)"
    objs = render(cluster, tmp_path, FULL_VALUES)
    text = find(objs, "ConfigMap", "podtrail-config")["data"]["config.toml"]
    # what the pods mount at those paths, here: the rules ConfigMap (podtrail parses the rules
    # too) and a redaction key
    mounts = {"/etc/podtrail-rules/rules.yaml": find(objs, "ConfigMap", "podtrail-rules")["data"]["rules.yaml"],
              "/etc/podtrail-redact/key": "a-redaction-key"}
    for path, content in mounts.items():
        assert f'"{path}"' in text, path
        local = tmp_path / pathlib.Path(path).name
        local.write_text(content)
        text = text.replace(f'"{path}"', f'"{local}"')
    f = tmp_path / "config.toml"
    f.write_text(text)
    p = sh([binary, "config", "--config", f])
    effective = tomllib.loads(p.stdout)
    assert effective["spans"]["scope"]["pod_cidrs"] == ["10.244.0.0/16"]
    assert effective["spans"]["scope"]["learn"] is False
    assert effective["spans"]["redact"]["patterns"] == FULL_VALUES["redaction"]["patterns"]
    assert effective["rules"]["file"] == str(tmp_path / "rules.yaml")
    assert effective["rules"]["disable"] == ["Exec without a Kubernetes request"]
    assert effective["attribution"]["hold_ms"] == 5000
    assert effective["receiver"]["admission_unverified"] is True
    assert effective["receiver"]["stream_listen"] == "0.0.0.0:17443"
    assert effective["attribution"]["receivers"] == [f"https://podtrail-receiver-peers.{RELEASE_NAMESPACE}.svc:17443"]
    # and a key podtrail does not know is refused, so the check above can fail
    f.write_text(text + "\n[spans.scope_typo]\nlearn = true\n")
    assert sh([binary, "config", "--config", f], check=False).returncode != 0


def test_installed_release_is_the_chart(cluster):
    """conftest.py installed podtrail with `helm install`: the running objects are the chart's."""
    status = json.loads(cluster.helm.cluster("status", "podtrail", "--namespace", RELEASE_NAMESPACE,
                                             "--output", "json").stdout)
    assert status["info"]["status"] == "deployed", status["info"]
    for kind, name in [("ds", "podtrail-agent"), ("deploy", "podtrail-receiver")]:
        labels = json.loads(cluster.kubectl("-n", RELEASE_NAMESPACE, "get", kind, name, "-o", "json").stdout)[
            "metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["helm.sh/chart"].startswith("podtrail-")
