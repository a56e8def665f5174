"""Detaching a loop device that another process still holds open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.engine import loop
from statehold.errors import FailedPrecondition

pytestmark = [pytest.mark.root]


def test_detach_of_a_device_held_open_reports_it_and_the_binding_goes_when_closed(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = scratch / "held.img"
    image.write_bytes(b"\0" * (8 << 20))
    device = loop.attach(image)
    holder = os.open(device, os.O_RDONLY)  # stands for a blkid probe or a reader
    try:
        monkeypatch.setattr(loop, "DETACH_WAIT", 0.3)
        with pytest.raises(FailedPrecondition, match="held open"):
            loop.detach(device)
        assert loop.find(image) == [device]  # not silently reported as detached
    finally:
        os.close(holder)
    # auto-clear was armed: closing the last opener releases the binding; detach agrees
    loop.detach(device)
    assert loop.find(image) == []


def _iostats(device: str) -> Path:
    return Path("/sys/block") / device.removeprefix("/dev/") / "queue" / "iostats"


def test_a_device_whose_last_user_turned_io_accounting_off_counts_again(scratch: Path) -> None:
    """Queue settings outlive a detach: the next volume on that device must still be
    counted (the agent's statehold_volume_device_* metrics read its stat)."""
    for attempt in range(5):  # the same device number comes back unless a parallel test takes it
        first = scratch / f"first-{attempt}.img"
        first.write_bytes(b"\0" * (8 << 20))
        device = loop.attach(first)
        try:
            _iostats(device).write_text("0")  # ours: the last user turns accounting off
        finally:
            loop.detach(device)
        second = scratch / f"second-{attempt}.img"
        second.write_bytes(b"\0" * (8 << 20))
        again = loop.attach(second)
        try:
            if again != device:
                continue
            assert _iostats(again).read_text().strip() == "1"
            fd = os.open(again, os.O_WRONLY | os.O_DIRECT)
            before = (Path("/sys/block") / again.removeprefix("/dev/") / "stat").read_text().split()[6]
            import mmap

            buf = mmap.mmap(-1, 1 << 20)
            try:
                os.write(fd, buf)
                os.fsync(fd)
            finally:
                os.close(fd)
                buf.close()
            after = (Path("/sys/block") / again.removeprefix("/dev/") / "stat").read_text().split()[6]
            assert int(after) - int(before) >= (1 << 20) // 512  # the write was counted
            return
        finally:
            loop.detach(again)
    pytest.fail("the detached device never came back to this test (parallel tests took it)")
