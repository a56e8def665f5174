"""The over-size monitor: Warning events on the PV of a shared volume past its size."""

from __future__ import annotations

from pathlib import Path

from statehold.cli.shared import report_oversize
from statehold.csi.backend import AccessMode, BackendConfig, Capability, VolumeRequest
from statehold.csi.backend_shared import SharedBackend
from statehold.kube.kinds import PV
from statehold.kube.memory import MemoryKube

MiB = 1024 * 1024


def test_oversize_volume_gets_a_warning_event_on_its_pv(scratch: Path) -> None:
    share = scratch / "share"
    share.mkdir()
    backend = SharedBackend(BackendConfig(home=scratch / "home", node_id="n1"))
    cap = Capability(mode=AccessMode.MULTI_NODE_MULTI_WRITER, block=False)
    params = {"type": "shared", "sharedRoot": str(share)}
    infos = [backend.create_volume(VolumeRequest(name=n, required_bytes=MiB, limit_bytes=0,
                                                 capabilities=(cap,), parameters=params))
             for n in ("pvc-big", "pvc-ok")]
    kube = MemoryKube()
    for info in infos:
        kube.create({"apiVersion": "v1", "kind": "PersistentVolume",
                     "metadata": {"name": info.context["name"]},
                     "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                              "csi": {"driver": "csi.statehold.io", "volumeHandle": info.volume_id}}})
    assert report_oversize(backend, kube) == []
    (share / "pvc-big" / "f").write_bytes(b"x" * (2 * MiB))
    found = report_oversize(backend, kube)
    assert [vid for vid, _ in found] == [infos[0].volume_id]
    events = kube.events_for(kube.get(PV, "pvc-big"))
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "OverSize")]
    assert kube.events_for(kube.get(PV, "pvc-ok")) == []
