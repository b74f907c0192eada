"""deploy/kubernetes/, checked without a cluster: `kubectl kustomize` renders the base and
both overlays (with whatever kubectl is here: scripts/test.sh installs Debian's 1.20, whose
kustomize v2.0.3 the files are written for; a newer one renders them the same), every
rendered object validates offline against the Kubernetes schemas kubernetes-validate
bundles (strict: no unknown fields), and the objects mean what a Strata cluster needs:
three voters with stable ids and disks named in --controllers, autoscaled `--node-id auto`
brokers, disruption budgets, probes on the metrics port, a grace period above the drain
bound, zone spreading and the rack from the node's zone, a bootstrap Service over every
ready pod, secrets only from Secrets, IRSA in the s3 overlay.

The containers' start scripts are run for real with /bin/sh, a fake `strata` that records
its arguments and a fake `curl` that plays the API server, so the ids, addresses and rack
they derive are checked, not just their text. Every flag and STRATA_* variable they pass
is one `strata serve --help` lists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster import REPO_ROOT, STRATA_BIN

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is missing: run scripts/test.sh to install "
    "tests/integration/requirements.txt")

KUBE = REPO_ROOT / "deploy" / "kubernetes"
TARGETS = {"base": KUBE / "base", "minio": KUBE / "overlays" / "minio", "s3": KUBE / "overlays" / "s3"}
NAMESPACE = "strata"
# One fixed schema version: it has autoscaling/v2 and policy/v1 (both GA since 1.23), and
# is old enough for a conservative EKS or GKE.
K8S_VERSION = "1.30.0"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
# Fields kustomize v2.0.3 (kubectl <= 1.20) understands; newer ones (labels, patches,
# components, ...) would fail there.
OLD_KUSTOMIZE_FIELDS = {
    "apiVersion", "kind", "namespace", "namePrefix", "nameSuffix", "commonLabels",
    "commonAnnotations", "resources", "bases", "patchesStrategicMerge", "patchesJson6902", "images",
}

# Downward-API values for the pods whose scripts the tests run.
NODE = "node-a"
POD_IP = "10.1.2.3"


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("kubectl is not installed: scripts/test.sh installs it (apt-get install kubernetes-client)")
        pytest.skip("no kubectl here: scripts/test.sh installs it (apt-get install kubernetes-client)")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    exe = kubectl()
    out = {}
    for name, directory in TARGETS.items():
        proc = subprocess.run([exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize {directory}: {proc.stderr}"
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        assert docs, f"{directory} rendered nothing"
        out[name] = docs
    return out


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def voters(docs):
    return one(docs, "StatefulSet", "strata-voter")


def brokers(docs):
    return one(docs, "Deployment", "strata-broker")


def workloads(docs):
    return {"voter": voters(docs), "broker": brokers(docs)}


def container(workload: dict, name: str = "strata", init: bool = False) -> dict:
    spec = workload["spec"]["template"]["spec"]
    found = [c for c in spec.get("initContainers" if init else "containers", []) if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: container {name}"
    return found[0]


def config(docs: list[dict], workload: dict) -> dict[str, str]:
    """The variables the strata container gets from ConfigMaps (envFrom)."""
    out = {}
    for source in container(workload).get("envFrom", []):
        assert "configMapRef" in source, source
        out.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return out


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels expected: {selector}"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def port_number(c: dict, port) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert len(named) == 1, f"{c['name']}: no port named {port}"
    return named[0]


def host_port(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


# --- running the start scripts -----------------------------------------------------------

FAKE_STRATA = """#!/bin/sh
for a in "$@"; do printf '%s\\n' "$a"; done > "$STRATA_ARGS_OUT"
"""

# Answers GET /api/v1/nodes/<node> as the API server would, only with the token and the CA.
FAKE_CURL = """#!/bin/sh
case " $* " in *" -H Authorization: Bearer test-token "*) ;; *) echo "curl: no token" >&2; exit 22;; esac
case " $* " in *" --cacert $FAKE_SA/ca.crt "*) ;; *) echo "curl: no CA" >&2; exit 22;; esac
case " $* " in *" https://kubernetes.default.svc/api/v1/nodes/$FAKE_NODE "*) cat "$FAKE_NODE_JSON";;
  *) echo "curl: (22) 404 for $*" >&2; exit 22;; esac
"""

FIELD_VALUES = {"metadata.name": None, "metadata.namespace": NAMESPACE, "status.podIP": POD_IP,
                "spec.nodeName": NODE}


def script(c: dict) -> str:
    assert c.get("command") == ["/bin/sh", "-c"], f"{c['name']}: command {c.get('command')}"
    assert len(c["args"]) == 1, c["args"]
    return c["args"][0]


def script_env(c: dict, pod_name: str, tmp: Path) -> dict[str, str]:
    """Only the variables the container spec gives (each downward-API field a made-up
    value), so that a script reading an undefined one fails under `set -u`."""
    env = {"PATH": f"{tmp / 'bin'}:/usr/bin:/bin", "STRATA_ARGS_OUT": str(tmp / "args"),
           "FAKE_SA": str(tmp / "sa"), "FAKE_NODE": NODE, "FAKE_NODE_JSON": str(tmp / "node.json")}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in FIELD_VALUES, f"{c['name']}: unexpected downward-API field {path}"
            env[e["name"]] = pod_name if path == "metadata.name" else FIELD_VALUES[path]
        else:
            env[e["name"]] = "from-a-secret"
    return env


def shared_zone_mounts(workload: dict) -> tuple[str, str]:
    """The emptyDir the `zone` init container writes and the strata container reads: its
    mount path in each."""
    spec = workload["spec"]["template"]["spec"]
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    init = {m["name"]: m["mountPath"] for m in container(workload, "zone", init=True)["volumeMounts"]}
    main = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
    shared = empty & set(init) & set(main)
    assert len(shared) == 1, f"{workload['metadata']['name']}: init and main share {shared}"
    name = shared.pop()
    assert next(m for m in container(workload)["volumeMounts"] if m["name"] == name).get("readOnly")
    return init[name], main[name]


def prepare(tmp: Path, node_labels: dict | None, pretty: bool = False) -> None:
    """A pod's world under tmp: the fakes on PATH, the ServiceAccount mount, the shared
    emptyDir, and the API server's answer about node NODE."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "bin").mkdir()
    for name, text in (("strata", FAKE_STRATA), ("curl", FAKE_CURL)):
        (tmp / "bin" / name).write_text(text)
        (tmp / "bin" / name).chmod(0o755)
    (tmp / "sa").mkdir()
    (tmp / "sa" / "token").write_text("test-token")
    (tmp / "sa" / "ca.crt").write_text("not a real CA")
    (tmp / "zone").mkdir()
    node = {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, **(node_labels or {})}}}
    # The API server answers compact JSON; pretty-printed (?pretty=true) must work too.
    (tmp / "node.json").write_text(json.dumps(node, indent=2 if pretty else None))


def run_init(workload: dict, pod_name: str, tmp: Path, **env) -> subprocess.CompletedProcess:
    """The `zone` init container's script, its mounts moved under tmp (see prepare)."""
    init_mount, _ = shared_zone_mounts(workload)
    init = container(workload, "zone", init=True)
    text = script(init).replace(init_mount + "/", f"{tmp / 'zone'}/")
    text = text.replace("/var/run/secrets/kubernetes.io/serviceaccount", str(tmp / "sa"))
    return subprocess.run(["/bin/sh", "-c", text], env={**script_env(init, pod_name, tmp), **env},
                          capture_output=True, text=True, timeout=60)


def run_pod(workload: dict, pod_name: str, tmp: Path, node_labels: dict | None, pretty: bool = False) -> list[str]:
    """Runs the zone init container's script, then the strata container's, as the pod would
    (the shared emptyDir and the ServiceAccount mount moved under tmp); returns the
    arguments `strata` was started with."""
    prepare(tmp, node_labels, pretty)
    proc = run_init(workload, pod_name, tmp)
    assert proc.returncode == 0, f"zone init script: {proc.stderr}"
    _, main_mount = shared_zone_mounts(workload)
    main = container(workload)
    main_script = script(main).replace(main_mount + "/", f"{tmp / 'zone'}/")
    proc = subprocess.run(["/bin/sh", "-c", main_script], env=script_env(main, pod_name, tmp),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"strata start script: {proc.stderr}"
    return (tmp / "args").read_text().splitlines()


def serve_flags(args: list[str]) -> dict[str, str]:
    assert args and args[0] == "serve", args
    out = {}
    for arg in args[1:]:
        m = re.fullmatch(r"--([a-z][a-z0-9-]*)=(.+)", arg)
        assert m, f"argument {arg!r} is not --flag=value"
        assert m.group(1) not in out, f"--{m.group(1)} given twice"
        out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def started(rendered, tmp_path_factory) -> dict[tuple[str, str], dict[str, str]]:
    """{(target, pod): serve flags} for each voter ordinal and one broker, on a node in
    zone us-east-1b (the voters' API answers compact, the brokers' pretty-printed)."""
    out = {}
    labels = {"topology.kubernetes.io/region": "us-east-1", "topology.kubernetes.io/zone": "us-east-1b"}
    for target, docs in rendered.items():
        for ordinal in range(voters(docs)["spec"]["replicas"]):
            pod = f"strata-voter-{ordinal}"
            out[target, pod] = serve_flags(run_pod(voters(docs), pod, tmp_path_factory.mktemp(target) / pod, labels))
        pod = "strata-broker-7d9c8b-x2x4q"
        out[target, pod] = serve_flags(run_pod(brokers(docs), pod, tmp_path_factory.mktemp(target) / pod, labels,
                                               pretty=True))
    return out


def voter_flags(started, target: str) -> dict[int, dict[str, str]]:
    return {int(pod.rsplit("-", 1)[1]): f for (t, pod), f in started.items() if t == target and "voter" in pod}


def broker_flags(started, target: str) -> dict[str, str]:
    return next(f for (t, pod), f in started.items() if t == target and "broker" in pod)


def all_flags(started, target: str) -> list[dict[str, str]]:
    return [f for (t, _), f in started.items() if t == target]


# --- the tests ---------------------------------------------------------------------------

def test_kustomizations_use_only_old_fields():
    """kubectl 1.20's kustomize (v2.0.3) rejects newer fields and directories in
    `resources`; scripts/test.sh installs that kubectl on a fresh machine."""
    files = sorted(KUBE.rglob("kustomization.yaml"))
    assert {f.parent for f in files} == set(TARGETS.values()), files
    for path in files:
        k = yaml.safe_load(path.read_text())
        assert set(k) <= OLD_KUSTOMIZE_FIELDS, f"{path}: {set(k) - OLD_KUSTOMIZE_FIELDS}"
        for entry in k.get("resources", []) + k.get("patchesStrategicMerge", []):
            assert (path.parent / entry).is_file(), f"{path}: {entry} is not a file (directories go in `bases`)"
        for entry in k.get("bases", []):
            assert (path.parent / entry / "kustomization.yaml").is_file(), f"{path}: base {entry}"
    assert (KUBE / "README.md").is_file()


def test_every_object_validates(rendered):
    """Strict schema validation (unknown fields are errors) against the schemas
    kubernetes-validate bundles: no network."""
    assert K8S_VERSION.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    for target, docs in rendered.items():
        for doc in docs:
            where = f"{target}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                used = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: {e.message} at {'.'.join(str(p) for p in e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                pytest.fail(f"{where}: {e.message}")
            assert used == K8S_VERSION.rsplit(".", 1)[0], where


def test_validation_can_fail():
    """The validator rejects what the tests rely on it to reject."""
    bad = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"},
           "spec": {"maxUnavailible": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                                      "metadata": {"name": "x"}}, K8S_VERSION, strict=True)


def test_namespace_and_labels(rendered):
    for target, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "StatefulSet",
                "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"} <= kinds, target
        assert one(docs, "Namespace", NAMESPACE)
        for d in docs:
            meta = d["metadata"]
            if d["kind"] in CLUSTER_SCOPED:
                assert "namespace" not in meta, f"{target}: {d['kind']}/{meta['name']}"
            else:
                assert meta.get("namespace") == NAMESPACE, f"{target}: {d['kind']}/{meta['name']}"
            labels = meta.get("labels", {})
            assert labels.get("app.kubernetes.io/name") in ("strata", "minio"), f"{target}: {d['kind']}/{meta['name']}"
            if labels["app.kubernetes.io/name"] == "minio":
                assert target == "minio" and labels.get("app.kubernetes.io/part-of") == "strata"


def test_images_are_pinned(rendered):
    expected = {"base": "strata", "minio": "strata:local"}
    for target, docs in rendered.items():
        for w in [d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")]:
            spec = w["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                image = c["image"]
                if c["name"] == "strata":
                    if target in expected:
                        assert image == expected[target], (target, image)
                    else:
                        assert re.fullmatch(r"\S+/strata:[^:\s]+", image) and not image.endswith(":latest"), image
                else:
                    assert re.fullmatch(r"\S+:[^:/\s]+", image) and not image.endswith(":latest"), image


def test_voters(rendered, started):
    for target, docs in rendered.items():
        sts = voters(docs)
        spec = sts["spec"]
        assert spec["replicas"] == 3, target
        assert spec["podManagementPolicy"] == "Parallel", "OrderedReady never starts voter 2 of 3"
        assert matches(spec["selector"], pod_labels(sts))
        # Stable names: the headless Service, publishing not-ready pods (they become
        # ready only once they have found each other).
        svc = one(docs, "Service", spec["serviceName"])
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
        assert svc["spec"]["selector"] == spec["selector"]["matchLabels"]

        controllers = config(docs, sts)["STRATA_CONTROLLERS"]
        entries = dict(e.split("@") for e in controllers.split(","))
        assert sorted(entries) == ["1", "2", "3"], controllers
        flags = voter_flags(started, target)
        assert sorted(flags) == [0, 1, 2]
        raft_port = port_number(container(sts), "raft")
        for ordinal, f in flags.items():
            node_id = ordinal + 1
            assert f["node-id"] == str(node_id), f"strata-voter-{ordinal} must be node {node_id}"
            # Its own entry in --controllers, at a name the Service gives it.
            assert f["raft-advertise"] == entries[str(node_id)]
            host, port = host_port(f["raft-advertise"])
            assert host == f"strata-voter-{ordinal}.{spec['serviceName']}" and port == raft_port
            assert host_port(f["raft-listen"]) == ("0.0.0.0", raft_port)
            # Kafka clients in any namespace reach a voter at its full Service name.
            assert f["advertise"] == f"strata-voter-{ordinal}.{spec['serviceName']}.{NAMESPACE}.svc:9092"
            assert host_port(f["listen"]) == ("0.0.0.0", port_number(container(sts), "kafka"))

        # The Raft log on a persistent volume per voter, at --data-dir.
        claims = {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
        mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
        data_dirs = {f["data-dir"] for f in flags.values()}
        assert len(data_dirs) == 1
        claim = claims[mounts[data_dirs.pop()]]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["resources"]["requests"]["storage"]
        assert not any(v["name"] == claim["metadata"]["name"] for v in spec["template"]["spec"].get("volumes", []))


def test_brokers(rendered, started):
    for target, docs in rendered.items():
        dep = brokers(docs)
        spec = dep["spec"]
        assert "replicas" not in spec, "the HPA owns the broker count"
        assert matches(spec["selector"], pod_labels(dep))
        assert not matches(spec["selector"], pod_labels(voters(docs)))
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        f = broker_flags(started, target)
        assert f["node-id"] == "auto"
        assert f["advertise"] == f"{POD_IP}:9092" and f["raft-advertise"] == f"{POD_IP}:9093"
        assert host_port(f["raft-listen"]) == ("0.0.0.0", port_number(container(dep), "raft"))
        assert host_port(f["listen"]) == ("0.0.0.0", port_number(container(dep), "kafka"))
        # Its data dir (node_id, cache) is the pod's own: an emptyDir.
        mount = next(m for m in container(dep)["volumeMounts"] if m["mountPath"] == f["data-dir"])
        volume = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        assert "emptyDir" in volume
        # The same voters as the voters themselves name.
        assert config(docs, dep)["STRATA_CONTROLLERS"] == config(docs, voters(docs))["STRATA_CONTROLLERS"]
        # Everything but the per-pod flags is the same for voters and brokers.
        per_pod = {"node-id", "advertise", "raft-advertise", "rack"}
        for v in voter_flags(started, target).values():
            assert {k: x for k, x in v.items() if k not in per_pod} == {k: x for k, x in f.items() if k not in per_pod}


def test_hpa(rendered):
    for target, docs in rendered.items():
        hpas = find(docs, "HorizontalPodAutoscaler")
        assert len(hpas) == 1, target
        hpa = hpas[0]
        assert hpa["apiVersion"] == "autoscaling/v2"
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "strata-broker"}
        assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 60)
        assert spec["metrics"] == [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]
        # Utilisation is relative to the CPU request, which must therefore be set.
        assert container(brokers(docs))["resources"]["requests"]["cpu"]
        down = spec["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 1800, "scale down slowly (WarpStream: 30 minutes)"
        assert down["policies"], "a scale-down rate"
        for policy in down["policies"]:
            assert policy["periodSeconds"] >= 60
            gentle = {"Pods": 2, "Percent": 20}
            assert policy["value"] <= gentle[policy["type"]], policy
        assert down.get("selectPolicy", "Max") in ("Max", "Min")


def test_disruption_budgets(rendered):
    for target, docs in rendered.items():
        pdbs = find(docs, "PodDisruptionBudget")
        for w in workloads(docs).values():
            covering = [p for p in pdbs if matches(p["spec"]["selector"], pod_labels(w))]
            assert len(covering) == 1, f"{target}: {w['metadata']['name']} has {len(covering)} budgets"
            pdb = covering[0]
            assert pdb["apiVersion"] == "policy/v1"
            assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
            # Each budget covers one workload only.
            others = [x for x in workloads(docs).values() if x is not w]
            assert not any(matches(pdb["spec"]["selector"], pod_labels(x)) for x in others)


def test_probes_and_grace_period(rendered, started):
    for target, docs in rendered.items():
        for role, w in workloads(docs).items():
            c = container(w)
            pod = w["spec"]["template"]["spec"]
            flags = broker_flags(started, target) if role == "broker" else voter_flags(started, target)[0]
            # The kubelet probes the pod IP: the metrics listener must not be loopback.
            host, metrics_port = host_port(flags["metrics-listen"])
            assert host == "0.0.0.0", flags["metrics-listen"]
            for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
                get = c[probe]["httpGet"]
                assert get["path"] == path, (target, role, probe)
                assert port_number(c, get["port"]) == metrics_port, (target, role, probe)
            # The drain (SIGTERM) must finish before the kubelet's SIGKILL.
            drain_ms = int(flags.get("shutdown-timeout-ms", 30000))
            assert pod["terminationGracePeriodSeconds"] > drain_ms / 1000 + 5, (target, role)
            annotations = w["spec"]["template"]["metadata"].get("annotations", {})
            assert annotations.get("prometheus.io/port") == str(metrics_port)


def test_zone_spread_and_rack(rendered, started, tmp_path):
    for target, docs in rendered.items():
        for role, w in workloads(docs).items():
            pod = w["spec"]["template"]["spec"]
            spreads = [s for s in pod["topologySpreadConstraints"] if s["topologyKey"] == "topology.kubernetes.io/zone"]
            assert len(spreads) == 1 and len(pod["topologySpreadConstraints"]) == 1, (target, role)
            assert spreads[0]["maxSkew"] == 1 and matches(spreads[0]["labelSelector"], pod_labels(w))
            assert dict(spreads[0]["labelSelector"]["matchLabels"]) == pod_labels(w)
            if role == "voter" and target != "minio":
                assert spreads[0]["whenUnsatisfiable"] == "DoNotSchedule", "one voter per zone"

            # The init container asks the API server about its node: it needs the node's
            # name and the RBAC to read it.
            init = container(w, "zone", init=True)
            env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in init["env"]}
            assert "spec.nodeName" in env.values()
            sa = pod["serviceAccountName"]
            assert pod.get("automountServiceAccountToken", True) is not False
            bindings = [b for b in find(docs, "ClusterRoleBinding")
                        if {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE} in b["subjects"]]
            assert bindings, f"{target}: no ClusterRoleBinding for ServiceAccount {sa}"
            assert one(docs, "ServiceAccount", sa)
            rules = [r for b in bindings for r in one(docs, "ClusterRole", b["roleRef"]["name"])["rules"]]
            assert any("" in r["apiGroups"] and "nodes" in r["resources"] and "get" in r["verbs"] for r in rules)
            assert not any(v in r["verbs"] for r in rules for v in ("create", "update", "patch", "delete", "*"))

        # The node's zone label becomes --rack (us-east-1b in `started`) ...
        for f in all_flags(started, target):
            assert f["rack"] == "us-east-1b", f
        # ... and a node without one gives no --rack at all.
        for role, w in workloads(docs).items():
            pod_name = "strata-voter-1" if role == "voter" else "strata-broker-abc"
            f = serve_flags(run_pod(w, pod_name, tmp_path / target / role, node_labels=None))
            assert "rack" not in f and f["node-id"] == ("2" if role == "voter" else "auto")


def test_init_script_fails_without_the_node(rendered, tmp_path):
    """An API error (RBAC, no such node) stops the pod rather than dropping the rack."""
    prepare(tmp_path, {"topology.kubernetes.io/zone": "us-east-1b"})
    proc = run_init(brokers(rendered["base"]), "strata-broker-x", tmp_path, NODE_NAME="some-other-node")
    assert proc.returncode != 0 and "404" in proc.stderr, proc
    proc = run_init(brokers(rendered["base"]), "strata-broker-x", tmp_path)
    assert proc.returncode == 0 and (tmp_path / "zone" / "zone").read_text() == "us-east-1b", proc


def test_bootstrap_service(rendered):
    for target, docs in rendered.items():
        svc = one(docs, "Service", "strata")
        spec = svc["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP" and spec.get("clusterIP") != "None"
        assert not spec.get("publishNotReadyAddresses"), "route clients to ready pods only"
        assert [p["port"] for p in spec["ports"]] == [9092]
        selector = {"matchLabels": spec["selector"]}
        for w in workloads(docs).values():
            assert matches(selector, pod_labels(w)), f"{target}: bootstrap misses {w['metadata']['name']}"
            assert port_number(container(w), spec["ports"][0]["targetPort"]) == 9092
        for other in [d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")
                      and d["metadata"]["name"] not in ("strata-voter", "strata-broker")]:
            assert not matches(selector, other["spec"]["template"]["metadata"]["labels"]), other["metadata"]["name"]


def secret_refs(docs: list[dict]) -> set[tuple[str, str | None]]:
    """(secret, key) pairs the pods read: secretKeyRef env and Secret volumes."""
    refs = set()
    for w in [d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")]:
        spec = w["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            assert not any("secretRef" in s for s in c.get("envFrom", [])), "name the keys: secretKeyRef"
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs.add((v["secret"]["secretName"], None))
    return refs


def test_secrets(rendered, started):
    sensitive = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE", re.I)
    for target, docs in rendered.items():
        # No literal secret in a ConfigMap or a container's env.
        for cm in find(docs, "ConfigMap"):
            assert not [k for k in cm["data"] if sensitive.search(k)], f"{target}: {cm['metadata']['name']}"
        for w in [d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")]:
            spec = w["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                for e in c.get("env", []):
                    if sensitive.search(e["name"]):
                        assert "secretKeyRef" in e.get("valueFrom", {}), f"{target}: {c['name']} {e['name']}"
        # --cluster-secret-file is in a Secret volume.
        for role, w in workloads(docs).items():
            f = broker_flags(started, target) if role == "broker" else voter_flags(started, target)[0]
            path = Path(f["cluster-secret-file"])
            mounts = [m for m in container(w)["volumeMounts"] if path.parent == Path(m["mountPath"])]
            assert len(mounts) == 1 and mounts[0].get("readOnly"), (target, role)
            volume = next(v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[0]["name"])
            assert volume["secret"]["secretName"] == "strata-cluster-secret"
            assert volume["secret"].get("items") is None  # the key is the file name
            assert ("strata-cluster-secret", None) in secret_refs(docs)
            cluster_secret_key = path.name

    # minio: every Secret read is in the overlay, with the keys read; the S3 keys come
    # from MinIO's credentials.
    docs = rendered["minio"]
    secrets = {s["metadata"]["name"]: {**s.get("stringData", {}), **s.get("data", {})} for s in find(docs, "Secret")}
    for name, key in secret_refs(docs):
        assert name in secrets, f"minio: Secret {name} is read but not defined"
        assert key is None or key in secrets[name], f"minio: Secret {name} has no key {key}"
    assert cluster_secret_key in secrets["strata-cluster-secret"]
    assert len(secrets["strata-cluster-secret"][cluster_secret_key].strip()) >= 16, "at least 16 bytes"
    for w in workloads(docs).values():
        env = {e["name"]: e for e in container(w)["env"]}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "minio-credentials", var
        assert config(docs, w)["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert config(docs, w)["STRATA_STORE"].startswith("s3://strata/")
    job = one(docs, "Job", "minio-create-bucket")
    assert "mc mb --ignore-existing local/strata" in script(container(job, "mc"))

    # s3: no keys at all (the role gives credentials), no Secret shipped (the cluster
    # secret is created by hand), no endpoint override.
    docs = rendered["s3"]
    text = yaml.safe_dump_all(docs)
    assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)
    assert not find(docs, "Secret")
    for w in workloads(docs).values():
        assert "AWS_ENDPOINT_URL" not in config(docs, w)
        assert config(docs, w)["STRATA_STORE"].startswith("s3://")


def test_s3_overlay_uses_an_iam_role(rendered):
    docs = rendered["s3"]
    for w in workloads(docs).values():
        sa = one(docs, "ServiceAccount", w["spec"]["template"]["spec"]["serviceAccountName"])
        arn = sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", arn), arn
    for target in ("base", "minio"):
        assert not any("eks.amazonaws.com/role-arn" in s["metadata"].get("annotations", {})
                       for s in find(rendered[target], "ServiceAccount")), target


def test_flags_and_variables_exist(rendered, started):
    """Every flag the start scripts pass and every STRATA_* variable the pods get is one
    `strata serve` accepts."""
    assert STRATA_BIN.exists(), f"build the broker first: {STRATA_BIN}"
    help_text = subprocess.run([str(STRATA_BIN), "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    known_flags = set(re.findall(r"--([a-z][a-z0-9-]*)", help_text))
    known_vars = set(re.findall(r"\[env: (STRATA_[A-Z0-9_]+)", help_text))
    assert {"node-id", "controllers", "rack", "metrics-listen"} <= known_flags
    assert "STRATA_CONTROLLERS" in known_vars
    for (target, pod), f in started.items():
        assert set(f) <= known_flags, f"{target} {pod}: unknown flags {set(f) - known_flags}"
    for target, docs in rendered.items():
        for w in workloads(docs).values():
            names = set(config(docs, w)) | {e["name"] for e in container(w).get("env", [])}
            strata_vars = {n for n in names if n.startswith("STRATA_")}
            assert strata_vars <= known_vars, f"{target}: unknown variables {strata_vars - known_vars}"
            # A flag and its variable both set would be one setting in two places.
            for var in strata_vars:
                flag = var[len("STRATA_"):].lower().replace("_", "-")
                assert all(flag not in f for (t, _), f in started.items() if t == target), var
