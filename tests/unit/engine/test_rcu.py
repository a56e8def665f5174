"""The expedited-grace-period lease (engine/rcu.py) on a stand-in knob file: who turns the
host's knob on, who puts it back, and what a holder killed while holding it leaves.

The real knob (/sys/kernel/rcu_expedited) is host-wide, so these tests point the lease at a
file of their own; tests/integration/engine/test_group_snapshots.py checks the real one."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from statehold.engine import freezekeeper, rcu


@pytest.fixture()
def policy(tmp_path: Path) -> rcu.Expedite:
    knob = tmp_path / "rcu_expedited"
    knob.write_text("0\n")
    return rcu.Expedite(knob, tmp_path / "run" / "rcu-expedited.json")


def _registry(policy: rcu.Expedite) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(policy.registry.read_text())
    return loaded


def test_the_knob_is_on_inside_and_put_back_after(policy: rcu.Expedite) -> None:
    with rcu.expedited(policy) as held:
        assert held
        assert policy.knob.read_text().strip() == "1"
    assert policy.knob.read_text().strip() == "0"
    assert _registry(policy) == {"holders": []}


def test_a_knob_already_on_is_left_on(policy: rcu.Expedite) -> None:
    policy.knob.write_text("1\n")
    with rcu.expedited(policy) as held:
        assert held
    assert policy.knob.read_text().strip() == "1"
    assert _registry(policy) == {"holders": []}


def test_nested_holders_restore_only_when_the_last_leaves(policy: rcu.Expedite) -> None:
    with rcu.expedited(policy):
        with rcu.expedited(policy):
            pass
        assert policy.knob.read_text().strip() == "1"  # the outer holder still holds it
    assert policy.knob.read_text().strip() == "0"


def test_no_policy_or_an_unwritable_knob_changes_nothing(tmp_path: Path) -> None:
    with rcu.expedited(None) as held:
        assert not held
    missing = rcu.Expedite(tmp_path / "no" / "such" / "knob", tmp_path / "reg.json")
    with rcu.expedited(missing) as held:
        assert not held
    assert not missing.knob.exists()
    raw = missing.registry.read_text()
    assert raw == "" or json.loads(raw)["holders"] == []  # nobody registered


@pytest.mark.parametrize("content", [
    "[not json", "[1, 2]", '{"holders": "x"}',
    '{"holders": [0, -1, true, 99999999999999999999, "7"], "saved": "0"}',
])
def test_a_corrupt_registry_is_read_as_empty(policy: rcu.Expedite, content: str) -> None:
    """Nothing in it names a live holder (0 and -1 would signal whole process groups, true
    would be pid 1), so the knob is put back when this holder leaves."""
    policy.registry.parent.mkdir(parents=True)
    policy.registry.write_text(content)
    with rcu.expedited(policy) as held:
        assert held
    assert policy.knob.read_text().strip() == "0"
    assert _registry(policy) == {"holders": []}


def _holder(policy: rcu.Expedite) -> subprocess.Popen[str]:
    """A process that takes the lease, says so, and waits to be killed."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from statehold.engine import rcu
        with rcu.expedited(rcu.Expedite(Path({str(policy.knob)!r}), Path({str(policy.registry)!r}))):
            print("held", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_holder_killed_while_holding_is_settled_by_the_next_keeper(policy: rcu.Expedite) -> None:
    proc = _holder(policy)
    proc.kill()
    proc.wait()
    assert policy.knob.read_text().strip() == "1"  # nobody put it back: the holder died
    freezekeeper.configure(policy)
    try:
        with freezekeeper.FreezeKeeper(5.0):  # waits for "ready": its settle has run
            assert policy.knob.read_text().strip() == "0"
    finally:
        freezekeeper.configure(rcu.Expedite())
    assert _registry(policy) == {"holders": []}


def test_a_live_holder_in_another_process_keeps_the_knob_on(policy: rcu.Expedite) -> None:
    proc = _holder(policy)
    try:
        with rcu.expedited(policy):
            pass
        rcu.settle(policy)
        assert policy.knob.read_text().strip() == "1"  # the other holder is still inside
    finally:
        proc.kill()
        proc.wait()
    rcu.settle(policy)
    assert policy.knob.read_text().strip() == "0"
    assert _registry(policy) == {"holders": []}


def test_a_registry_locked_too_long_means_a_plain_freeze(policy: rcu.Expedite) -> None:
    """A holder stopped while it holds the registry's lock must not stall anyone's freeze."""
    policy.registry.parent.mkdir(parents=True)
    with policy.registry.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # another open file: a conflicting lock
        with rcu.expedited(policy) as held:
            assert not held
        rcu.settle(policy)
    assert policy.knob.read_text().strip() == "0"
