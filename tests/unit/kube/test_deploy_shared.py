"""The chart's shared-mode parts: `type: shared` StorageClasses from values, what the node
pods need for them (the roots at the same path, the persistent home), Local PV discovery and
the over-size monitor with least-privilege RBAC. Every output is validated."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python.errors import HelmError

from statehold.shared.registry import RootSpec
from tests.unit.kube.test_deploy import by, containers
from tests.unit.kube.validation import render, validate_object

HOST = {"name": "shared-host", "sharedRoot": "/mnt/share", "deletionPolicy": "archive"}
GLUSTER = {"name": "shared-gluster", "source": "gluster1.example:/gv0", "fsType": "glusterfs",
           "mountOptions": "log-level=WARNING", "enforceQuota": True}
SHARED = {"sharedStorageClasses": [HOST, GLUSTER],
          "shared": {"extraHostRoots": ["/srv/nfs", "/mnt/share"], "monitor": {"enabled": True}},
          "localDiscovery": {"enabled": True, "directory": "/mnt/disks", "intervalSeconds": 15}}


@pytest.fixture(scope="module")
def shared_docs() -> list[dict[str, Any]]:
    docs = render.render_chart(SHARED)
    for doc in docs:
        validate_object(doc)
    return list(docs)


def test_shared_classes_carry_the_parameters_the_backend_reads(shared_docs: list) -> None:
    host = by(shared_docs, "StorageClass", "shared-host")
    assert host["provisioner"] == "csi.statehold.io"
    assert host["parameters"] == {"type": "shared", "sharedRoot": "/mnt/share",
                                  "deletionPolicy": "archive", "enforceQuota": "false"}
    native = by(shared_docs, "StorageClass", "shared-gluster")["parameters"]
    assert native["source"] == "gluster1.example:/gv0" and native["fsType"] == "glusterfs"
    assert native["mountOptions"] == "log-level=WARNING" and native["enforceQuota"] == "true"
    assert native["deletionPolicy"] == "delete"
    for params in (host["parameters"], native):  # the shared backend accepts them as they are
        RootSpec.from_parameters(params)
    assert host["allowVolumeExpansion"] is True  # the node raises the limit (node expansion)
    opted = render.render_chart({"sharedStorageClasses": [{**HOST, "allowVolumeExpansion": False}]})
    assert by(opted, "StorageClass", "shared-host")["allowVolumeExpansion"] is False
    assert host["volumeBindingMode"] == "WaitForFirstConsumer"


def test_node_pods_mount_each_host_root_at_its_own_path_seeing_later_mounts(shared_docs: list) -> None:
    ds = by(shared_docs, "DaemonSet", "statehold-node")
    spec = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    roots = {v["hostPath"]["path"]: v for v in volumes.values()
             if v["name"].startswith("shared-root-")}
    assert set(roots) == {"/mnt/share", "/srv/nfs"}  # unique, native shares need no hostPath
    assert all(v["hostPath"]["type"] == "Directory" for v in roots.values())
    for name in ("statehold-plugin", "statehold-agent"):
        mounts = {m["mountPath"]: m for m in containers(ds)[name]["volumeMounts"]}
        for path, vol in roots.items():
            assert mounts[path]["name"] == vol["name"]
            assert mounts[path]["mountPropagation"] == "HostToContainer"
        # <home>/shared/roots (root keys) and native share mounts persist on the host
        home = mounts["/var/lib/statehold"]
        assert home["mountPropagation"] == "Bidirectional"
        assert volumes[home["name"]]["hostPath"]["path"] == "/var/lib/statehold"


def test_discovery_runs_in_the_node_pod_with_its_directory_and_rbac(shared_docs: list) -> None:
    ds = by(shared_docs, "DaemonSet", "statehold-node")
    disc = containers(ds)["local-discovery"]
    assert disc["args"][:2] == ["shared", "discover"]
    assert {"--node=$(NODE_NAME)", "--dir=/mnt/disks", "--interval=15",
            "--storage-class=statehold-local-disks"} <= set(disc["args"])
    mounts = {m["mountPath"]: m for m in disc["volumeMounts"]}
    assert mounts["/mnt/disks"]["mountPropagation"] == "HostToContainer"
    sc = by(shared_docs, "StorageClass", "statehold-local-disks")
    assert sc["provisioner"] == "kubernetes.io/no-provisioner"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    rules = by(shared_docs, "ClusterRole", "statehold-node-discovery")["rules"]
    assert {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]} == {
        ("persistentvolumes", "get"), ("persistentvolumes", "list"),
        ("persistentvolumes", "create"), ("persistentvolumes", "delete"),
        ("events", "create"), ("events", "get"), ("events", "patch")}
    binding = by(shared_docs, "ClusterRoleBinding", "statehold-node-discovery")
    assert binding["subjects"][0]["name"] == ds["spec"]["template"]["spec"]["serviceAccountName"]


def test_monitor_is_one_periodic_replica_with_read_and_event_rights_only(shared_docs: list) -> None:
    dep = by(shared_docs, "Deployment", "statehold-shared-monitor")
    assert dep["spec"]["replicas"] == 1
    mon = containers(dep)["monitor"]
    assert "statehold shared monitor" in mon["args"][0] and "sleep 300" in mon["args"][0]
    mounts = {m["mountPath"]: m for m in mon["volumeMounts"]}
    assert {"/var/lib/statehold", "/mnt/share", "/srv/nfs"} <= set(mounts)
    rules = by(shared_docs, "ClusterRole", "statehold-shared-monitor")["rules"]
    assert {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]} == {
        ("persistentvolumes", "list"), ("events", "create"), ("events", "get"),
        ("events", "patch")}


def test_everything_shared_is_off_by_default() -> None:
    docs = render.render_chart()
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "StorageClass"} == {"statehold-local"}
    ds = by(docs, "DaemonSet", "statehold-node")
    assert "local-discovery" not in containers(ds)
    assert not [v for v in ds["spec"]["template"]["spec"]["volumes"]
                if v["name"].startswith("shared-root-")]
    assert not [d for d in docs if "shared-monitor" in d["metadata"]["name"]
                or "discovery" in d["metadata"]["name"]]


@pytest.mark.parametrize("entry", [
    {"name": "both", "sharedRoot": "/mnt/a", "source": "h:/v", "fsType": "nfs"},
    {"name": "neither"},
    {"name": "no-fstype", "source": "h:/v"},
    {"name": "relative", "sharedRoot": "mnt/share"},
    {"name": "traversal", "sharedRoot": "/mnt/../etc"},
    {"name": "bad-policy", "sharedRoot": "/mnt/a", "deletionPolicy": "shred"},
    {"name": "bad-fs", "source": "h:/v", "fsType": "ext4"},
    {"name": "typo", "sharedRoot": "/mnt/a", "enforceQuotas": True},
    {"sharedRoot": "/mnt/a"},
])
def test_bad_shared_class_values_are_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(HelmError):
        render.render_chart({"sharedStorageClasses": [entry]})


@pytest.mark.parametrize("path", sorted((render.CHART / "ci").glob("*.yaml")), ids=lambda p: p.name)
def test_example_values_files_render_valid_objects(path: Any) -> None:
    import yaml

    values = yaml.safe_load(path.read_text())
    docs = render.render_chart(values)
    assert len(docs) > 20
    for doc in docs:
        validate_object(doc)


def test_rbac_stays_least_privilege_with_every_option_on() -> None:
    from tests.unit.kube.test_deploy import test_rbac_is_least_privilege

    docs = render.render_chart({**SHARED, "schedulerExtender": {"enabled": True}})
    test_rbac_is_least_privilege(list(docs))


def values_blocks(markdown: Any) -> list[dict[str, Any]]:
    """The chart values shown in a Markdown file (```yaml values fences)."""
    import yaml

    out, block, inside = [], [], False
    for line in markdown.read_text().splitlines():
        if line.strip() == "```yaml values":
            inside, block = True, []
        elif line.strip() == "```" and inside:
            inside = False
            out.append(yaml.safe_load("\n".join(block)))
        elif inside:
            block.append(line)
    return out


def test_install_guide_values_render_what_the_guide_shows() -> None:
    from tests.unit.kube.validation import ROOT, yaml_blocks

    guide = ROOT / "docs" / "install.md"
    blocks = values_blocks(guide)
    assert len(blocks) == 3
    merged: dict[str, Any] = {}
    for values in blocks:
        merged.update(values)
    docs = render.render_chart(merged)
    for doc in docs:
        validate_object(doc)
    shown = {(d["kind"], d["metadata"]["name"]): d for d in yaml_blocks(guide)
             if d["kind"] == "StorageClass"}
    for key in [("StorageClass", "shared-host"), ("StorageClass", "statehold-local-disks")]:
        got = by(docs, *key)
        got["metadata"].pop("labels")
        assert shown[key] == got
    assert by(docs, "ConfigMap", "statehold-scheduler-config")
