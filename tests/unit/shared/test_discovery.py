"""Local PV discovery: the pure plan on tables, then the loop over the in-memory kube."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.cli.shared import KubePvApi
from statehold.kube.kinds import PV
from statehold.kube.memory import MemoryKube
from statehold.shared.discovery import (
    HOSTNAME_KEY,
    Action,
    Discoverer,
    Disk,
    PvView,
    plan,
    pv_manifest,
    pv_name,
)

D1 = Disk("ssd1", "/mnt/disks/ssd1", "Filesystem", 100)
D2 = Disk("nvme0", "/mnt/disks/nvme0", "Block", 200)


def pv(path: str, phase: str, *, deleting: bool = False, name: str | None = None) -> PvView:
    return PvView(name or pv_name("n1", path), path, phase, deleting)


@pytest.mark.parametrize(
    ("disks", "pvs", "expected"),
    [
        ([D1], [], [("create", D1.path)]),
        ([D1, D2], [], [("create", D2.path), ("create", D1.path)]),
        ([D1], [pv(D1.path, "Available")], []),
        ([D1], [pv(D1.path, "Bound")], []),
        ([D1], [pv(D1.path, "Pending")], []),
        ([D1], [pv(D1.path, "Released")],
         [("wipe", D1.path), ("delete", pv_name("n1", D1.path)), ("create", D1.path)]),
        ([D1], [pv(D1.path, "Released", deleting=True)], []),
        ([D1], [pv(D1.path, "Failed")], []),
        ([], [pv(D1.path, "Available")], [("delete", pv_name("n1", D1.path))]),
        ([], [pv(D1.path, "Released")], [("delete", pv_name("n1", D1.path))]),
        ([], [pv(D1.path, "Bound")], [("warn", pv_name("n1", D1.path))]),
        ([], [pv(D1.path, "Available", deleting=True)], []),
    ],
)
def test_plan(disks: list[Disk], pvs: list[PvView], expected: list[tuple[str, str]]) -> None:
    def short(a: Action) -> tuple[str, str]:
        return (a.kind, a.disk.path if a.kind in ("create", "wipe") and a.disk else a.pv)

    assert [short(a) for a in plan(disks, pvs)] == expected


def test_pv_manifest_pins_the_node() -> None:
    m = pv_manifest(D2, node="n1", storage_class="local-disks")
    assert m["metadata"]["name"] == pv_name("n1", D2.path)
    assert m["spec"]["volumeMode"] == "Block" and m["spec"]["local"] == {"path": D2.path}
    terms = m["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": HOSTNAME_KEY, "operator": "In", "values": ["n1"]}]}]
    assert pv_name("n1", D2.path) != pv_name("n2", D2.path)


def _release(kube: MemoryKube, name: str) -> None:
    kube.patch_status(PV, name, {"phase": "Released"})


def test_discoverer_offers_wipes_and_offers_again(scratch: Path) -> None:
    disk_dir = scratch / "ssd1"
    disk_dir.mkdir()
    disk = Disk("ssd1", str(disk_dir), "Filesystem", 1 << 30)
    kube = MemoryKube()
    disc = Discoverer(KubePvApi(kube), node="n1", directory=scratch, storage_class="local-disks")

    assert [a.kind for a in disc.run_once([disk])] == ["create"]
    [obj] = kube.list(PV)
    assert obj["spec"]["local"]["path"] == str(disk_dir)
    assert disc.run_once([disk]) == []  # nothing to do: idempotent

    (disk_dir / "dir").mkdir()
    (disk_dir / "dir" / "old-data").write_text("tenant A")
    (disk_dir / "lost+found").mkdir()
    _release(kube, obj["metadata"]["name"])
    assert [a.kind for a in disc.run_once([disk])] == ["wipe", "delete", "create"]
    assert sorted(p.name for p in disk_dir.iterdir()) == ["lost+found"]
    [again] = kube.list(PV)
    assert again["metadata"]["name"] == obj["metadata"]["name"]
    assert again.get("status", {}).get("phase", "Pending") != "Released"

    # The disk is unplugged while its PV is Available: the PV is withdrawn.
    kube.patch_status(PV, again["metadata"]["name"], {"phase": "Available"})
    assert [a.kind for a in disc.run_once([])] == ["delete"]
    assert kube.list(PV) == []


def test_other_nodes_pvs_are_not_touched(scratch: Path) -> None:
    kube = MemoryKube()
    other = pv_manifest(D1, node="n2", storage_class="x")
    kube.create(other)
    disc = Discoverer(KubePvApi(kube), node="n1", directory=scratch, storage_class="x")
    assert disc.run_once([]) == []
    assert [o["metadata"]["name"] for o in kube.list(PV)] == [other["metadata"]["name"]]


def test_failed_wipe_keeps_the_pv_released(scratch: Path) -> None:
    kube = MemoryKube()
    missing = Disk("gone", str(scratch / "gone"), "Filesystem", 1)
    disc = Discoverer(KubePvApi(kube), node="n1", directory=scratch, storage_class="x")
    disc.run_once([missing])
    name = pv_name("n1", missing.path)
    _release(kube, name)
    assert disc.run_once([missing]) == []  # wipe failed: no delete, no create
    assert kube.get(PV, name)["status"]["phase"] == "Released"


def test_bound_pv_whose_disk_vanished_gets_a_warning_event(scratch: Path) -> None:
    kube = MemoryKube()
    disc = Discoverer(KubePvApi(kube), node="n1", directory=scratch, storage_class="x")
    disc.run_once([D1])
    name = pv_name("n1", D1.path)
    kube.patch_status(PV, name, {"phase": "Bound"})
    assert [a.kind for a in disc.run_once([])] == ["warn"]
    events = kube.events_for(kube.get(PV, name))
    assert [e["reason"] for e in events] == ["DiskMissing"]
    assert kube.get(PV, name)["status"]["phase"] == "Bound"
