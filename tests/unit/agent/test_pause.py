"""Test pause points: armed by a file, held until another appears, then disarmed."""

from __future__ import annotations

import threading
from pathlib import Path

from statehold.agent.pause import NO_PAUSE, Pauser


def test_unarmed_points_and_no_directory_pass_through(tmp_path: Path) -> None:
    NO_PAUSE.point("send.0")
    Pauser(tmp_path).point("send.0")
    assert list(tmp_path.iterdir()) == []


def test_an_armed_point_holds_until_released_then_disarms(tmp_path: Path) -> None:
    pauser = Pauser(tmp_path, poll=0.005)
    (tmp_path / "apply.3.wait").touch()
    passed = threading.Event()
    t = threading.Thread(target=lambda: (pauser.point("apply.3"), passed.set()))
    t.start()
    reached = tmp_path / "apply.3.reached"
    while not reached.exists():
        assert t.is_alive()
        threading.Event().wait(0.005)
    assert not passed.is_set()
    (tmp_path / "apply.3.go").touch()
    t.join(10)
    assert passed.is_set()
    assert not (tmp_path / "apply.3.wait").exists() and not (tmp_path / "apply.3.go").exists()
    pauser.point("apply.3")  # disarmed: passes at once
