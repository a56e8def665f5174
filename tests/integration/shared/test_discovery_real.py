"""Local PV discovery on real mounts and a real loop block device under a discovery dir."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from statehold.cli.shared import KubePvApi
from statehold.kube.kinds import PV
from statehold.kube.memory import MemoryKube
from statehold.shared.discovery import Discoverer, scan

pytestmark = pytest.mark.root
MiB = 1024 * 1024


def test_scan_finds_mounts_and_block_devices_only(scratch: Path, make_loopfs: Callable[..., object],
                                                  mounts: list[Path]) -> None:
    disks = scratch / "disks"
    disks.mkdir()
    fs = make_loopfs("xfs", 300)
    (disks / "ssd1").mkdir()
    subprocess.run(["mount", "--bind", str(fs.mountpoint), str(disks / "ssd1")],  # type: ignore[attr-defined]
                   check=True, capture_output=True)
    mounts.append(disks / "ssd1")
    (disks / "not-a-disk").mkdir()  # a plain directory: not offered
    raw = make_loopfs("ext4", 64)  # its device stands for a raw disk
    os.symlink(raw.device, disks / "nvme0")  # type: ignore[attr-defined]

    found = {d.name: d for d in scan(disks)}
    assert sorted(found) == ["nvme0", "ssd1"]
    assert found["ssd1"].mode == "Filesystem" and found["ssd1"].capacity > 200 * MiB
    assert found["nvme0"].mode == "Block" and found["nvme0"].capacity == 64 * MiB

    kube = MemoryKube()
    disc = Discoverer(KubePvApi(kube), node="n1", directory=disks, storage_class="local-disks")
    assert sorted(a.kind for a in disc.run_once()) == ["create", "create"]
    pvs = {p["spec"]["local"]["path"]: p for p in kube.list(PV)}
    assert pvs[str(disks / "nvme0")]["spec"]["volumeMode"] == "Block"

    # Tenant data on both, then both claims released.
    (disks / "ssd1" / "tenant").write_text("secret")
    for pv in pvs.values():
        kube.patch_status(PV, pv["metadata"]["name"], {"phase": "Released"})
    # The raw disk is still mounted somewhere (busy): it is not wiped and not offered again.
    kinds = [a.kind for a in disc.run_once()]
    assert kinds == ["wipe", "delete", "create"]
    assert not (disks / "ssd1" / "tenant").exists()
    nvme_pv = pvs[str(disks / "nvme0")]["metadata"]["name"]
    assert kube.get(PV, nvme_pv)["status"]["phase"] == "Released"
    subprocess.run(["umount", str(raw.mountpoint)], check=True, capture_output=True)  # type: ignore[attr-defined]
    assert [a.kind for a in disc.run_once()] == ["wipe", "delete", "create"]
    blkid = subprocess.run(["blkid", "-p", str(disks / "nvme0")], capture_output=True, text=True)
    assert blkid.returncode == 2  # no filesystem signature left on the device
    assert len(kube.list(PV)) == 2
