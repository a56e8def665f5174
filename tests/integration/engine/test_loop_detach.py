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
