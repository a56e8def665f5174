"""deploy/ and examples/: generated files are fresh, every object is valid, and the
workloads have what a CSI driver on local disks needs."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.agent_certs import AGENT_ROLE
from statehold.controller.node_grants import HOOKS_ROLE, SECRETS_ROLE
from tests.unit.kube.validation import ROOT, load_all, render, validate_object, yaml_blocks

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return list(render.render_chart())


def by(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


def containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def test_generated_crds_and_manifests_are_fresh() -> None:
    assert render.stale() == [], "run: .venv/bin/python deploy/render.py"


def test_every_rendered_manifest_is_valid() -> None:
    docs = load_all(render.MANIFESTS)
    assert len(docs) > 20
    for doc in docs:
        validate_object(doc)


@pytest.mark.parametrize("values", [
    {"storageClass": {"isDefault": True}, "namespace": {"create": False}},
    {"volumeSnapshotClass": {"create": False}, "storageClass": {"create": False},
     "node": {"nodeSelector": {"statehold.io/storage": "true"}, "tolerations": []},
     "operator": {"resources": {"limits": {"memory": "256Mi"}}}},
    {"groupSnapshots": {"enabled": True, "isDefault": True, "freezeTimeout": "1m30s"}},
])
def test_chart_output_with_other_values_is_valid(values: dict[str, Any]) -> None:
    docs = render.render_chart(values, name="sh", namespace="storage")
    for doc in docs:
        validate_object(doc)
    assert all(d["metadata"].get("namespace") in (None, "storage") for d in docs)


def test_csidriver_declares_attach_pod_info_capacity_and_fsgroup(rendered: list) -> None:
    spec = by(rendered, "CSIDriver", "csi.statehold.io")["spec"]
    assert spec["attachRequired"] is True
    assert spec["podInfoOnMount"] is True
    assert spec["storageCapacity"] is True
    assert spec["fsGroupPolicy"] == "File"


def test_storage_class_is_xfs_wait_for_first_consumer_expandable(rendered: list) -> None:
    sc = by(rendered, "StorageClass", "statehold-local")
    assert sc["provisioner"] == "csi.statehold.io"
    assert sc["parameters"]["csi.storage.k8s.io/fstype"] == "xfs"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["allowVolumeExpansion"] is True
    assert by(rendered, "VolumeSnapshotClass", "statehold-snapshot")["driver"] == "csi.statehold.io"


def test_namespace_allows_the_privileged_node_pods(rendered: list) -> None:
    labels = by(rendered, "Namespace", "statehold-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "baseline"


def test_node_daemonset_has_host_access_and_the_node_sidecars(rendered: list) -> None:
    ds = by(rendered, "DaemonSet", "statehold-node")
    c = containers(ds)
    assert {"statehold-plugin", "statehold-agent", "node-driver-registrar", "liveness-probe",
            "csi-provisioner", "csi-snapshotter"} <= set(c)
    plugin = c["statehold-plugin"]
    assert plugin["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in plugin["volumeMounts"]}
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    assert "/dev" in mounts
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dev"]["hostPath"]["path"] == "/dev"
    prov = c["csi-provisioner"]["args"]
    for flag in ("--node-deployment=true", "--feature-gates=Topology=true", "--enable-capacity=true",
                 "--capacity-ownerref-level=1", "--extra-create-metadata=true"):
        assert flag in prov
    assert "--node-deployment=true" in c["csi-snapshotter"]["args"]
    for sidecar in ("csi-provisioner", "csi-snapshotter", "node-driver-registrar", "liveness-probe"):
        assert c[sidecar]["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_group_snapshots_are_off_by_default_and_on_render_the_class_gate_and_grants(
        rendered: list) -> None:
    assert not [d for d in rendered if d["apiVersion"].startswith("groupsnapshot.")]
    snapshotter = containers(by(rendered, "DaemonSet", "statehold-node"))["csi-snapshotter"]
    assert not any("VolumeGroupSnapshot" in a for a in snapshotter["args"])
    docs = render.render_chart({"groupSnapshots": {"enabled": True, "isDefault": True}})
    cls = by(docs, "VolumeGroupSnapshotClass", "statehold-group")
    assert cls["driver"] == "csi.statehold.io" and cls["deletionPolicy"] == "Delete"
    assert cls["parameters"] == {"freezeTimeout": "10s"}
    assert cls["metadata"]["annotations"] == {
        "groupsnapshot.storage.kubernetes.io/is-default-class": "true"}
    args = containers(by(docs, "DaemonSet", "statehold-node"))["csi-snapshotter"]["args"]
    assert "--feature-gates=CSIVolumeGroupSnapshot=true" in args
    role = by(docs, "ClusterRole", "statehold-node-group-snapshotter")
    grants = {(g, r): rule["verbs"] for rule in role["rules"] for g in rule["apiGroups"]
              for r in rule["resources"]}
    assert "patch" in grants[("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents")]
    assert "patch" in grants[("groupsnapshot.storage.k8s.io",
                              "volumegroupsnapshotcontents/status")]
    binding = by(docs, "ClusterRoleBinding", "statehold-node-group-snapshotter")
    assert binding["subjects"][0]["name"] == "statehold-node"


def test_controller_and_operator_are_leader_elected_and_unprivileged(rendered: list) -> None:
    ctrl = containers(by(rendered, "Deployment", "statehold-controller"))
    assert {"statehold-plugin", "csi-attacher", "csi-resizer"} <= set(ctrl)
    for name in ("csi-attacher", "csi-resizer"):
        assert "--leader-election=true" in ctrl[name]["args"]
    op = containers(by(rendered, "Deployment", "statehold-operator"))["operator"]
    assert "--leader-election" in op["args"]
    for c in [*ctrl.values(), op]:
        assert c["securityContext"]["runAsNonRoot"] is True
        assert not c["securityContext"].get("privileged")


def test_rbac_is_least_privilege(rendered: list) -> None:
    roles = [d for d in rendered if d["kind"] in ("ClusterRole", "Role")]
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]["name"]
            if "secrets" in rule["resources"]:
                # the operator reads by name everywhere (targets' passwords and credentials)
                # and writes only the node agents' CA and certificates, in the release
                # namespace; the node plugin gets none from the chart (node_grants)
                writes = role["kind"] == "Role" and role["metadata"]["name"] == (
                    "statehold-operator-agent-certificates")
                assert rule["verbs"] == (["get", "list", "create", "patch", "delete"] if writes
                                         else ["get"]), role["metadata"]["name"]
    bound = {(b["roleRef"]["name"], s["name"]) for b in rendered
             if b["kind"] in ("ClusterRoleBinding", "RoleBinding") for s in b["subjects"]}
    # the one Role bound but not rendered: the agents' grant on their certificate Secrets,
    # by name, which the operator writes as Nodes come and go (agent_certs.AGENT_ROLE);
    # the one rendered but not bound: the node plugin's exec for hooks, which the operator
    # binds per namespace while a hooked StatefulSetBackup runs (node_grants.HOOKS_ROLE)
    assert ({r["metadata"]["name"] for r in roles} - {HOOKS_ROLE}) | {AGENT_ROLE} == {
        name for name, _ in bound}
    assert (AGENT_ROLE, "statehold-agent") in bound
    # the node plugin runs privileged on every node: no Secret and no exec from the chart
    node = [r for b in rendered if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
            and any(s["name"] == "statehold-node" for s in b["subjects"])
            for role in roles if role["metadata"]["name"] == b["roleRef"]["name"]
            and role["kind"] == b["roleRef"]["kind"] for r in role["rules"]]
    assert node and not [r for r in node if {"secrets", "pods/exec"} & set(r["resources"])]
    assert SECRETS_ROLE not in {r["metadata"]["name"] for r in roles}
    accounts = {d["metadata"]["name"] for d in rendered if d["kind"] == "ServiceAccount"}
    for kind in ("DaemonSet", "Deployment"):
        for w in (d for d in rendered if d["kind"] == kind):
            sa = w["spec"]["template"]["spec"]["serviceAccountName"]
            assert sa in accounts and any(s == sa for _, s in bound)


def test_chart_crds_are_the_generated_ones() -> None:
    from helm_python import Chart

    with Chart.load(render.CHART) as chart:
        names = sorted(c["name"] for c in chart.crds)
    assert len(names) == 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Any) -> None:
    docs = load_all(path)
    assert docs
    for doc in docs:
        validate_object(doc)


def test_install_guide_yaml_is_valid() -> None:
    docs = yaml_blocks(ROOT / "docs" / "install.md")
    assert docs
    for doc in docs:
        validate_object(doc)


def test_chart_lints_clean_for_kubernetes_1_30() -> None:
    from helm_python.chart import lint

    report = lint(render.CHART, namespace="statehold-system", strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_schema_accepts_the_defaults_and_refuses_typos() -> None:
    from helm_python import Chart
    from helm_python.errors import HelmValuesError

    with Chart.load(render.CHART) as chart:
        chart.validate_schema(chart.values)
        with pytest.raises(HelmValuesError):
            chart.validate_schema({**chart.values, "storageClas": {"name": "x"}})
        with pytest.raises(HelmValuesError):
            chart.validate_schema({**chart.values, "storageClass": {"fsType": "zfs"}})
