"""``statehold volume trim``, ``snapshot describe`` and ``pool thresholds`` on a real pool
(standalone mode, issue 14)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.cli.helpers import as_json, cli, ok

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture
def home(engine_home: Path) -> Path:
    ok(engine_home, "pool", "create", "p", "--image-size", "2Gi")
    return engine_home


def test_volume_trim_gives_deleted_space_back_and_describe_says_so(home: Path) -> None:
    bad = cli(home, "volume", "create", "v", "--size", "400Mi", "--trim-schedule", "daily")
    assert bad.exit_code == 2 and "trimSchedule" in bad.stderr
    ok(home, "volume", "create", "v", "--size", "400Mi", "--trim-schedule", "0 3 * * *")
    mnt = home / "mnt"
    ok(home, "volume", "mount", "v", str(mnt))
    with open(mnt / "junk", "wb") as f:
        f.write(os.urandom(48 * MiB))
        os.fsync(f.fileno())
    (mnt / "junk").unlink()
    used = as_json(home, "pool", "get", "p")["capacity"]["used"]
    out = ok(home, "volume", "trim", "v")
    assert out.startswith("volume/v trimmed at") and "gave back" in out
    assert used - as_json(home, "pool", "get", "p")["capacity"]["used"] >= 47 * MiB
    text = ok(home, "volume", "describe", "v")
    assert "Trim schedule:" in text and "0 3 * * *" in text
    assert "gave back" in text.split("Last trim:")[1].splitlines()[0]
    # created just now: its first slot (03:00 UTC) is still ahead
    assert cli(home, "volume", "trim", "--due").stderr.strip() == "nothing to trim"
    assert "volume/v trimmed" in ok(home, "volume", "trim", "--all")
    nothing = cli(home, "volume", "trim")
    assert nothing.exit_code == 2
    ok(home, "volume", "unmount", "v", str(mnt))
    refused = cli(home, "volume", "trim", "v")
    assert refused.exit_code == 5 and "not mounted" in refused.stderr


def test_snapshot_describe_shows_exclusive_and_shared_bytes(home: Path) -> None:
    ok(home, "volume", "create", "b", "--size", "64Mi", "--mode", "block")
    device = ok(home, "volume", "attach", "b").strip()
    with open(device, "r+b") as dev:
        dev.write(b"\x01" * 32 * MiB)
        dev.flush()
        os.fsync(dev.fileno())
    ok(home, "snapshot", "create", "s", "--volume", "b")
    with open(device, "r+b") as dev:
        dev.write(b"\x02" * 8 * MiB)
        dev.flush()
        os.fsync(dev.fileno())
    held = as_json(home, "snapshot", "describe", "s")
    assert (held["exclusive"], held["shared"]) == (8 * MiB, 24 * MiB)
    text = ok(home, "snapshot", "describe", "s")
    assert "Exclusive:" in text and "deleting the snapshot gives this back" in text
    wide = ok(home, "snapshot", "get", "-o", "wide").splitlines()
    assert wide[0].split()[-2:] == ["EXCLUSIVE", "SHARED"]
    assert wide[1].split()[-2:] == ["8Mi", "24Mi"]
    ok(home, "volume", "detach", "b")


def test_pool_thresholds_refuse_new_volumes_above_the_critical_mark(home: Path) -> None:
    ok(home, "volume", "create", "b", "--size", "256Mi", "--mode", "block")
    device = ok(home, "volume", "attach", "b").strip()
    with open(device, "r+b") as dev:
        dev.write(b"\x03" * 128 * MiB)
        dev.flush()
        os.fsync(dev.fileno())
    assert "warning at 80 %, critical at 90 %" in ok(home, "pool", "thresholds", "p")
    bad = cli(home, "pool", "thresholds", "p", "--warning", "95")
    assert bad.exit_code == 2
    out = ok(home, "pool", "thresholds", "p", "--warning", "1", "--critical", "2")
    assert out.rstrip().endswith("(critical)")
    refused = cli(home, "volume", "create", "more", "--size", "64Mi")
    assert refused.exit_code == 6 and "critical mark of 2 %" in refused.stderr
    assert as_json(home, "pool", "get", "p")["space"]["level"] == "critical"
    assert "SPACE" in ok(home, "pool", "get", "-o", "wide")
    ok(home, "pool", "thresholds", "p", "--warning", "80", "--critical", "90")
    ok(home, "volume", "create", "more", "--size", "64Mi")
    ok(home, "volume", "detach", "b")
