"""Autoexpansion against a real API server (``kube_control_plane``: kube-apiserver,
kube-controller-manager and kube-scheduler v1.20.2): the claim's requested size, its
``AutoExpandStopped`` condition and its Events change as docs/install.md says.

The claim is a real one: a StorageClass that allows expansion, a PV of our driver for a
volume in a real engine pool, a PVC bound to it by the real PV controller, and the
PersistentVolumeClaimResize admission plugin judging every patch. The filesystem usage is
given (the real filesystem growing online is tests/integration/csi/test_autoexpand.py),
and no csi-resizer runs: the test writes the claim's ``status.capacity`` as the resizer
would once a step is done.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from statehold.controller import autoexpand
from statehold.controller.autoexpand import Usage
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, MiB, Volume, VolumeMode
from statehold.errors import NotFound
from statehold.kube.client import ApiKube
from statehold.kube.kinds import EVENT, NAMESPACE, PV, PVC, STORAGE_CLASS
from tests.fixtures.controlplane import ControlPlane

pytestmark = pytest.mark.root

BIND_TIMEOUT = 120.0  # the PV controller's resync on 2 busy cores


@pytest.fixture
def api(kube_control_plane: ControlPlane) -> Iterator[tuple[ApiKube, str]]:
    kube = ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig))
    suffix = uuid.uuid4().hex[:8]
    ns = f"autoexpand-{suffix}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        yield kube, suffix
    finally:
        for kind, name, namespace in ((PVC, "data", ns), (PV, f"pv-{suffix}", None),
                                      (STORAGE_CLASS, f"grow-{suffix}", None), (NAMESPACE, ns, None)):
            with contextlib.suppress(NotFound):
                kube.delete(kind, name, namespace)


def test_the_claim_grows_in_steps_then_stops_at_its_ceiling_on_a_real_api_server(
        api: tuple[ApiKube, str], node: Node, pool: Pool) -> None:
    kube, suffix = api
    ns, sc, pv = f"autoexpand-{suffix}", f"grow-{suffix}", f"pv-{suffix}"
    vol = pool.create_volume(f"pvc-{suffix}", 512 * MiB, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
    kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": sc},
                 "provisioner": "csi.statehold.io", "allowVolumeExpansion": True,
                 "volumeBindingMode": "Immediate",
                 "parameters": {autoexpand.THRESHOLD: "80%", autoexpand.STEP: "25%",
                                autoexpand.MAX: "800Mi"}})
    kube.create({"apiVersion": "v1", "kind": "PersistentVolume",
                 "metadata": {"name": pv, "annotations": {
                     "pv.kubernetes.io/provisioned-by": "csi.statehold.io"}},
                 "spec": {"capacity": {"storage": "512Mi"}, "accessModes": ["ReadWriteOnce"],
                          "persistentVolumeReclaimPolicy": "Retain", "storageClassName": sc,
                          "csi": {"driver": "csi.statehold.io", "volumeHandle": vol.id, "fsType": "xfs"},
                          "claimRef": {"namespace": ns, "name": "data"}}})
    kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": "data", "namespace": ns},
                 "spec": {"storageClassName": sc, "accessModes": ["ReadWriteOnce"], "volumeName": pv,
                          "resources": {"requests": {"storage": "512Mi"}}}})
    deadline = time.monotonic() + BIND_TIMEOUT
    while (kube.get(PVC, "data", ns).get("status") or {}).get("phase") != "Bound":
        assert time.monotonic() < deadline, "the PV controller did not bind the claim"
        time.sleep(0.5)

    used = {"bytes": 0}

    def measure(v: Volume) -> Usage:
        total = autoexpand._quantity(kube.get(PVC, "data", ns), "status", "capacity", "storage")
        return Usage(total=total, used=used["bytes"], available=total - used["bytes"])

    def agent_pass() -> autoexpand.Report:
        return autoexpand.autoexpand_pass(kube, node, "n1", lambda: datetime.now(UTC), measure)[f"{ns}/data"]

    def request() -> str:
        return str(kube.get(PVC, "data", ns)["spec"]["resources"]["requests"]["storage"])

    def resized() -> None:  # what csi-resizer writes once the volume and filesystem grew
        kube.patch_status(PVC, "data", {"capacity": {"storage": request()}}, ns)

    def ours() -> list[tuple[str, str]]:
        events = [e for e in kube.list(EVENT, ns)
                  if e["involvedObject"].get("kind") == "PersistentVolumeClaim"
                  and e["reason"].startswith("AutoExpand")]
        return sorted((e["type"], e["reason"]) for e in events)

    def condition() -> tuple[str, str] | None:
        found = autoexpand.find(kube.get(PVC, "data", ns)["status"].get("conditions"), autoexpand.CONDITION)
        return None if found is None else (found["status"], found["reason"])

    used["bytes"] = 300 * MiB
    assert agent_pass().outcome == "within" and request() == "512Mi" and ours() == []

    used["bytes"] = 450 * MiB  # 88 %
    assert agent_pass().outcome == "grown"
    assert request() == "640Mi"  # accepted by the API server's resize admission
    assert condition() == ("False", "Expanding") and ours() == [("Normal", "AutoExpanded")]
    assert agent_pass().outcome == "resizing" and request() == "640Mi"

    resized()
    used["bytes"] = 600 * MiB  # 94 %: two steps would be needed; the ceiling clips it
    assert agent_pass().outcome == "grown" and request() == "800Mi"
    resized()
    used["bytes"] = 780 * MiB
    assert agent_pass().outcome == "stopped"
    assert condition() == ("True", "CeilingReached") and request() == "800Mi"
    assert agent_pass().outcome == "stopped"
    assert ours() == [("Normal", "AutoExpanded"), ("Normal", "AutoExpanded"),
                      ("Warning", "AutoExpandCeilingReached")]
    pvc = kube.get(PVC, "data", ns)
    assert pvc["status"]["phase"] == "Bound"  # the PV controller kept our condition beside its own
    assert pvc["spec"]["volumeName"] == pv

