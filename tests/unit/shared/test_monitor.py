"""The over-size monitor: Warning events on the PV of a shared volume past its size."""

from __future__ import annotations

from pathlib import Path

from statehold.cli.shared import report_oversize
from statehold.kube.kinds import PV
from statehold.kube.memory import MemoryKube
from statehold.shared.parameters import VolumeClass
from statehold.shared.service import SharedVolumes

MiB = 1024 * 1024


def test_oversize_volume_gets_a_warning_event_on_its_pv(scratch: Path) -> None:
    share = scratch / "share"
    share.mkdir()
    volumes = SharedVolumes(scratch / "home")
    cls = VolumeClass.from_parameters({"type": "shared", "sharedRoot": str(share)})
    recs = [volumes.create_volume(n, MiB, cls) for n in ("pvc-big", "pvc-ok")]
    kube = MemoryKube()
    for rec in recs:
        kube.create({"apiVersion": "v1", "kind": "PersistentVolume",
                     "metadata": {"name": rec.context["name"]},
                     "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                              "csi": {"driver": "csi.statehold.io", "volumeHandle": rec.id}}})
    assert report_oversize(volumes, kube) == []
    (share / "pvc-big" / "f").write_bytes(b"x" * (2 * MiB))
    found = report_oversize(volumes, kube)
    assert [vid for vid, _ in found] == [recs[0].id]
    events = kube.events_for(kube.get(PV, "pvc-big"))
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "OverSize")]
    assert kube.events_for(kube.get(PV, "pvc-ok")) == []
