"""The pool, volume and snapshot commands against real file-backed pools (root)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.integration.cli.helpers import as_json, cli, loops_backed_under, ok, subprocess_run

pytestmark = pytest.mark.root


@pytest.fixture
def home(engine_home: Path) -> Path:
    """A home with one 2 GiB file-backed pool ``p``, made through the CLI itself."""
    assert ok(engine_home, "pool", "create", "p", "--image-size", "2Gi").strip() == "pool/p created"
    return engine_home


def test_pool_create_is_idempotent_and_get_shows_capacity(home: Path) -> None:
    assert ok(home, "pool", "create", "p", "--image-size", "2Gi").strip() == "pool/p unchanged"
    table = ok(home, "pool", "get").splitlines()
    assert table[0].split() == ["NAME", "TOTAL", "USED", "PROVISIONED", "FREE"]
    assert table[1].split()[0] == "p"
    wide = ok(home, "pool", "get", "-o", "wide").splitlines()
    assert "MOUNTPOINT" in wide[0]
    heads = wide[0].split()
    assert wide[1].split()[heads.index("LAYOUT")] == "file"
    items = as_json(home, "pool", "get")["items"]
    assert [i["name"] for i in items] == ["p"]
    cap = items[0]["capacity"]
    assert 0 < cap["free"] <= cap["total"] <= 2 << 30 and cap["provisioned"] == 0
    one = yaml.safe_load(ok(home, "pool", "get", "p", "-o", "yaml"))
    assert one["name"] == "p" and one["mountpoint"] == str(home / "pools" / "p")
    described = ok(home, "pool", "describe", "p")
    assert "Overprovision ratio:" in described
    assert "Layout:" in described and "file (snapshots are reflink copies)" in described


def test_pool_create_with_another_spec_is_already_exists(home: Path) -> None:
    result = cli(home, "pool", "create", "p", "--image-size", "3Gi")
    assert result.exit_code == 4 and result.stderr.startswith("error: ")


def test_volume_snapshot_clone_expand_round_trip(home: Path) -> None:
    assert ok(home, "volume", "create", "data", "--size", "400Mi").strip() == "volume/data created"
    assert ok(home, "volume", "create", "data", "--size", "400Mi").strip() == "volume/data unchanged"
    vol = as_json(home, "volume", "get", "data")
    assert vol["id"] == "p/data" and vol["size"] == 400 << 20 and vol["fs"] == "xfs"
    device = ok(home, "volume", "attach", "data").strip()
    assert device.startswith("/dev/loop") and Path(device).exists()
    assert ok(home, "volume", "attach", "data").strip() == device  # idempotent

    mnt = home / "mnt" / "data"
    ok(home, "volume", "mount", "data", str(mnt))
    payload = b"statehold" * 100_000
    (mnt / "f").write_bytes(payload)
    assert as_json(home, "volume", "get", "data")["mounts"] == [str(mnt)]
    wide = ok(home, "volume", "get", "-o", "wide").splitlines()
    assert wide[0].split()[:3] == ["NAME", "POOL", "SIZE"] and "FORMATTED" in wide[0]

    assert ok(home, "snapshot", "create", "s1", "--volume", "data").strip() == "snapshot/s1 created"
    (mnt / "f").write_bytes(b"changed")
    snaps = as_json(home, "snapshot", "get", "--volume", "data")["items"]
    assert [(s["name"], s["source_volume"], s["ready"]) for s in snaps] == [("s1", "data", True)]

    ok(home, "volume", "clone", "c1", "--from-snapshot", "s1")
    cmnt = home / "mnt" / "c1"
    ok(home, "volume", "mount", "c1", str(cmnt))
    assert hashlib.sha256((cmnt / "f").read_bytes()).digest() == hashlib.sha256(payload).digest()

    out = ok(home, "volume", "expand", "data", "--size", "1Gi")
    assert "1Gi" in out and "online" in out
    assert as_json(home, "volume", "get", "data")["size"] == 1 << 30
    assert "Snapshots:" in ok(home, "volume", "describe", "data")

    for name, target in (("c1", cmnt), ("data", mnt)):
        ok(home, "volume", "unmount", name, str(target))
        ok(home, "volume", "detach", name)
        ok(home, "volume", "delete", name)
    ok(home, "snapshot", "delete", "s1")
    assert as_json(home, "volume", "get")["items"] == []
    assert as_json(home, "snapshot", "get")["items"] == []
    pool_mount = home / "pools" / "p"
    assert loops_backed_under(pool_mount) == []


def test_errors_have_their_exit_codes_and_change_nothing(home: Path) -> None:
    ok(home, "volume", "create", "data", "--size", "400Mi")
    mnt = home / "mnt" / "data"
    ok(home, "volume", "mount", "data", str(mnt))
    before = as_json(home, "volume", "get")
    cases = [
        (("volume", "get", "nope"), 3),
        (("volume", "create", "data", "--size", "500Mi"), 4),
        (("volume", "create", "Bad_Name", "--size", "1Gi"), 2),
        (("volume", "create", "../etc", "--size", "1Gi"), 2),
        (("volume", "create", "huge", "--size", "100Ti"), 6),
        (("volume", "expand", "data", "--size", "100Mi"), 2),
        (("volume", "delete", "data"), 5),
        (("volume", "detach", "data"), 5),
        (("snapshot", "delete", "nope"), 3),
        (("volume", "clone", "c", "--from-snapshot", "nope"), 3),
        (("volume", "get", "--pool", "nope"), 3),
        (("volume", "create", "x", "--size", "1Gi", "--fs", "zfs"), 2),
    ]
    for args, code in cases:
        result = cli(home, *args)
        assert result.exit_code == code, (args, result.exit_code, result.stderr)
        assert result.stdout == ""
        if code != 2 or args[-1] != "zfs":  # click itself reports unknown choices
            assert result.stderr.startswith("error: "), (args, result.stderr)
    assert as_json(home, "volume", "get") == before
    ok(home, "volume", "unmount", "data", str(mnt))
    ok(home, "volume", "detach", "data")


def test_the_installed_command_runs_as_a_real_process(home: Path) -> None:
    created = subprocess_run(home, "volume", "create", "blk", "--size", "64Mi", "--mode", "block")
    assert created.returncode == 0, created.stderr
    got = subprocess_run(home, "volume", "get", "blk", "-o", "json")
    assert got.returncode == 0 and '"mode": "block"' in got.stdout
    missing = subprocess_run(home, "snapshot", "get", "nope")
    assert missing.returncode == 3
    assert missing.stderr.startswith("error: ") and missing.stdout == ""


def test_an_exported_pool_is_imported_with_its_volumes(home: Path) -> None:
    from statehold.engine.node import Node

    ok(home, "volume", "create", "keep", "--size", "400Mi", "-l", "app=db")
    ok(home, "snapshot", "create", "keep-1", "--volume", "keep", "--no-freeze")
    ok(home, "volume", "clone", "keep-copy", "--from-volume", "keep")
    node = Node(home)
    try:
        node.export_pool("p")
    finally:
        node.close()
    assert as_json(home, "pool", "get")["items"] == []
    empty = cli(home, "volume", "get")
    assert empty.exit_code == 0 and empty.stdout == "" and "No resources found" in empty.stderr
    assert cli(home, "volume", "create", "x", "--size", "1Gi").exit_code == 3  # no pool at all
    image = home / "disks" / "p-0.img"
    assert ok(home, "pool", "import", str(image), "--name", "moved").strip() == "pool/moved imported"
    vols = {v["name"]: v for v in as_json(home, "volume", "get")["items"]}
    assert set(vols) == {"keep", "keep-copy"} and vols["keep"]["labels"] == {"app": "db"}
    assert vols["keep-copy"]["source"] == {"kind": "volume", "name": "keep"}
    assert [s["name"] for s in as_json(home, "snapshot", "get", "-p", "moved")["items"]] == ["keep-1"]


def test_clone_of_a_snapshot_whose_volume_is_gone_keeps_its_filesystem(home: Path) -> None:
    ok(home, "volume", "create", "old", "--size", "400Mi", "--fs", "ext4")
    mnt = home / "mnt" / "old"
    ok(home, "volume", "mount", "old", str(mnt))
    (mnt / "f").write_bytes(b"kept")
    ok(home, "snapshot", "create", "old-1", "--volume", "old")
    ok(home, "volume", "unmount", "old", str(mnt))
    ok(home, "volume", "detach", "old")
    ok(home, "volume", "delete", "old")
    shown = as_json(home, "volume", "clone", "new", "--from-snapshot", "old-1")
    assert shown["fs"] == "ext4" and shown["mode"] == "filesystem"  # from the snapshot itself
    cmnt = home / "mnt" / "new"
    ok(home, "volume", "mount", "new", str(cmnt))
    assert (cmnt / "f").read_bytes() == b"kept"
    ok(home, "volume", "unmount", "new", str(cmnt))
    ok(home, "volume", "detach", "new")


def test_with_two_pools_get_lists_both_and_existing_objects_need_no_pool_flag(home: Path) -> None:
    ok(home, "pool", "create", "q", "--image-size", "1Gi")
    created = cli(home, "volume", "create", "v", "--size", "400Mi")
    assert created.exit_code == 2 and "--pool" in created.stderr  # which pool? say it
    ok(home, "volume", "create", "v", "--size", "400Mi", "--pool", "p")
    ok(home, "volume", "create", "w", "--size", "400Mi", "-p", "q")
    ok(home, "volume", "create", "both", "--size", "400Mi", "-p", "p")
    ok(home, "volume", "create", "both", "--size", "400Mi", "-p", "q")
    listed = {(v["pool"], v["name"]) for v in as_json(home, "volume", "get")["items"]}
    assert listed == {("p", "v"), ("q", "w"), ("p", "both"), ("q", "both")}
    assert {v["name"] for v in as_json(home, "volume", "get", "-p", "q")["items"]} == {"w", "both"}
    assert as_json(home, "volume", "get", "w")["pool"] == "q"
    ok(home, "snapshot", "create", "w-1", "--volume", "w")
    assert as_json(home, "snapshot", "get", "w-1")["pool"] == "q"
    ambiguous = cli(home, "volume", "describe", "both")
    assert ambiguous.exit_code == 2 and "p, q" in ambiguous.stderr
    assert cli(home, "volume", "get", "nope").exit_code == 3
    ok(home, "snapshot", "delete", "w-1")
    ok(home, "volume", "delete", "w")
    assert {v["name"] for v in as_json(home, "volume", "get", "-p", "q")["items"]} == {"both"}
