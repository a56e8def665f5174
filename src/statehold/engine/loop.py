"""Loop devices, through ``losetup`` (the ``LOOP_*`` ioctls' one user-space driver).

Every volume is attached with direct I/O (the loop driver then submits I/O to the backing
file with O_DIRECT, so pages are not cached twice) and 4096-byte logical blocks (matching
the pool filesystem's block size, which direct I/O needs to stay aligned). Devices are
found by *exact* backing-file path, read from ``/sys/block/loopN/loop/backing_file``;
nothing here ever acts on a device it did not find that way.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from statehold.errors import CommandError, FailedPrecondition, StateholdError
from statehold.runner import run

log = logging.getLogger("statehold.engine.loop")

SYS_BLOCK = Path("/sys/block")
SECTOR_SIZE = 4096
_DELETED = " (deleted)"


def backing_files() -> dict[str, str]:
    """Map every bound loop device (``/dev/loopN``) to its backing file path.

    A backing file that was unlinked while attached keeps its old path plus the kernel's
    `` (deleted)`` suffix; it is reported with that suffix so it never matches a live path.
    """
    result: dict[str, str] = {}
    try:
        entries = list(SYS_BLOCK.iterdir())
    except OSError:
        return result
    for entry in entries:
        if not entry.name.startswith("loop"):
            continue
        try:
            backing = (entry / "loop" / "backing_file").read_text().rstrip("\n")
        except OSError:
            continue  # not bound
        if backing:
            result[f"/dev/{entry.name}"] = backing
    return result


def find(path: Path | str) -> list[str]:
    """Loop devices whose backing file is exactly ``path`` (absolute), sorted."""
    wanted = os.path.abspath(str(path))
    return sorted(dev for dev, backing in backing_files().items() if backing == wanted)


def under(root: Path | str, *, include_deleted: bool = True) -> dict[str, str]:
    """Loop devices whose backing file lies under directory ``root`` (exact prefix)."""
    prefix = os.path.abspath(str(root)).rstrip("/") + "/"
    out: dict[str, str] = {}
    for dev, backing in backing_files().items():
        live = backing[: -len(_DELETED)] if backing.endswith(_DELETED) else backing
        if live is not backing and not include_deleted:
            continue
        if live.startswith(prefix):
            out[dev] = backing
    return out


def attach(path: Path | str, *, readonly: bool = False) -> str:
    """Attach ``path`` (or return the device it is already attached to)."""
    existing = find(path)
    if existing:
        return existing[0]
    argv = [
        "losetup",
        "--find",
        "--show",
        "--direct-io=on",
        "--sector-size",
        str(SECTOR_SIZE),
    ]
    if readonly:
        argv.append("--read-only")
    argv.append(os.path.abspath(str(path)))
    proc = run(argv, timeout=60)
    device = proc.stdout.strip()
    if not device.startswith("/dev/loop"):
        raise StateholdError(f"losetup returned no device for {path}: {proc.stdout!r}")
    if not readonly:
        # a read-only flag set by BLKROSET (a fenced copy's seal, engine/readonly.py)
        # outlives the detach: this device's previous user may have left it
        run(["blockdev", "--setrw", device], timeout=30)
    _account_io(device)
    return device


def _account_io(device: str) -> None:
    """Turn the device's I/O accounting on. Queue settings outlive the detach too, and a
    previous user (a benchmark, an administrator) may have set ``queue/iostats`` to 0: the
    volume's I/O counters (``statehold_volume_device_*``, read from its ``stat``) would then
    never move, and its metrics say it is idle while it is written."""
    knob = SYS_BLOCK / device.removeprefix("/dev/") / "queue" / "iostats"
    try:
        if knob.read_text().strip() != "1":
            knob.write_text("1")
    except OSError as exc:  # no such knob on this kernel: nothing to turn back on
        log.warning("cannot turn I/O accounting on device=%s error=%s", device, exc)


def refresh_capacity(device: str) -> None:
    """Tell the loop driver that the backing file changed size (``LOOP_SET_CAPACITY``)."""
    run(["losetup", "-c", device], timeout=60)


DETACH_WAIT = 10.0
"""Seconds to wait for the kernel to release a device after ``losetup -d``."""


def _backing(device: str) -> str | None:
    try:
        return (SYS_BLOCK / device.removeprefix("/dev/") / "loop" / "backing_file").read_text().rstrip("\n")
    except OSError:
        return None


def detach(device: str) -> None:
    """Detach ``device``; a device that is already gone counts as detached.

    ``losetup -d`` on a device some other process still holds open (a ``blkid`` probe, a
    backup reading it) only marks it for auto-clear and returns at once: the binding goes
    when the last opener closes. Callers go on to delete the backing file or to check for
    leaks, so wait (bounded) until the kernel really let go of *this* binding.
    """
    before = _backing(device)
    try:
        run(["losetup", "-d", device], timeout=60)
    except CommandError as exc:
        if _backing(device) is None:
            return
        raise exc
    deadline = time.monotonic() + DETACH_WAIT
    pause = 0.005
    while before is not None and _backing(device) == before:
        if time.monotonic() > deadline:
            raise FailedPrecondition(
                f"{device} is still held open by another process; it detaches when that closes"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def detach_file(path: Path | str) -> list[str]:
    """Detach every loop device backed by exactly ``path``; returns the devices."""
    devices = find(path)
    for dev in devices:
        detach(dev)
    return devices


def size_of(device: str) -> int:
    """Size of a block device in bytes (from sysfs, in 512-byte units)."""
    name = device.removeprefix("/dev/")
    return int((SYS_BLOCK / name / "size").read_text()) * 512


def discard_max_bytes(device: str) -> int:
    """Largest discard the device accepts in one request; 0 when it takes none.

    The loop driver turns a discard (``fstrim`` or a filesystem mounted ``-o discard``
    inside the volume) into ``fallocate(PUNCH_HOLE)`` on the backing file, so the blocks go
    back to the pool. It offers discard only when the backing file's filesystem can punch
    holes (XFS and btrfs, every pool filesystem, can); this says whether it did.
    """
    name = device.removeprefix("/dev/")
    try:
        return int((SYS_BLOCK / name / "queue" / "discard_max_bytes").read_text())
    except (OSError, ValueError):
        return 0


def in_flight(device: str) -> int:
    """Requests the device has started and not completed (reads + writes, discards count as
    writes); 0 when the device is gone."""
    name = device.removeprefix("/dev/")
    try:
        return sum(int(n) for n in (SYS_BLOCK / name / "inflight").read_text().split())
    except (OSError, ValueError):
        return 0


def wait_idle(device: str, timeout: float) -> bool:
    """Wait until ``device`` has nothing in flight (True), or ``timeout`` s (False).

    XFS's ``FITRIM`` returns once it has *issued* its discards; the loop driver punches the
    holes as it completes them. Waiting here is how a trim knows what it gave back. A
    volume under constant I/O may never be idle: the caller then measures early, and the
    rest of the space still comes back moments later.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while in_flight(device):
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return True
