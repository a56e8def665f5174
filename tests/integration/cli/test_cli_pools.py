"""``pool export`` and ``pool delete`` on real file-backed pools, and ``volume mount``
failures that must leave nothing behind (root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli.helpers import as_json, cli, loops_backed_under, ok

pytestmark = pytest.mark.root


@pytest.fixture
def home(engine_home: Path) -> Path:
    """A home with one 2 GiB file-backed pool ``p``, made through the CLI itself."""
    assert ok(engine_home, "pool", "create", "p", "--image-size", "2Gi").strip() == "pool/p created"
    return engine_home


def test_pool_export_releases_everything_and_import_brings_the_volumes_back(home: Path) -> None:
    ok(home, "volume", "create", "data", "--size", "400Mi")
    ok(home, "snapshot", "create", "data-1", "--volume", "data")
    image = home / "disks" / "p-0.img"

    out = ok(home, "pool", "export", "p").splitlines()

    assert out[0] == "pool/p exported"
    assert out[1] == f"import it again with: statehold pool import {image} --name p"
    assert as_json(home, "pool", "get")["items"] == []
    assert loops_backed_under(home) == [] and not (home / "pools" / "p").exists()
    assert image.exists()  # the disk keeps everything
    ok(home, "pool", "import", str(image), "--name", "p")
    assert [v["name"] for v in as_json(home, "volume", "get")["items"]] == ["data"]
    assert [s["name"] for s in as_json(home, "snapshot", "get")["items"]] == ["data-1"]


def test_pool_export_is_refused_while_a_volume_is_attached(home: Path) -> None:
    ok(home, "volume", "create", "data", "--size", "400Mi")
    device = ok(home, "volume", "attach", "data").strip()

    refused = cli(home, "pool", "export", "p")

    assert refused.exit_code == 5, refused.output  # FailedPrecondition
    assert refused.stderr.startswith("error: ") and "attached" in refused.stderr
    assert [p["name"] for p in as_json(home, "pool", "get")["items"]] == ["p"]
    assert as_json(home, "volume", "get", "data")["device"] == device
    ok(home, "volume", "detach", "data")


def test_pool_delete_is_refused_while_the_pool_holds_volumes_or_snapshots(home: Path) -> None:
    ok(home, "volume", "create", "data", "--size", "400Mi")
    ok(home, "snapshot", "create", "data-1", "--volume", "data")
    image = home / "disks" / "p-0.img"

    refused = cli(home, "pool", "delete", "p")
    assert refused.exit_code == 5, refused.output
    assert "volume data" in refused.stderr and "snapshot data-1" in refused.stderr
    assert "pool export p" in refused.stderr  # the way to keep them
    ok(home, "volume", "delete", "data")
    still = cli(home, "pool", "delete", "p")
    assert still.exit_code == 5 and "snapshot data-1" in still.stderr  # a snapshot is data too
    assert image.exists() and [p["name"] for p in as_json(home, "pool", "get")["items"]] == ["p"]

    ok(home, "snapshot", "delete", "data-1")
    assert ok(home, "pool", "delete", "p").strip() == "pool/p deleted"

    assert as_json(home, "pool", "get")["items"] == []
    assert not image.exists() and loops_backed_under(home) == []
    assert not (home / "pools" / "p").exists()


@pytest.mark.parametrize("verb", ["export", "delete"])
def test_pool_export_or_delete_of_an_unknown_pool_is_not_found(home: Path, verb: str) -> None:
    result = cli(home, "pool", verb, "nosuch")
    assert result.exit_code == 3 and "nosuch" in result.stderr
    assert [p["name"] for p in as_json(home, "pool", "get")["items"]] == ["p"]


def test_volume_mount_of_a_missing_volume_creates_no_directory(home: Path) -> None:
    target = home.parent / "mnt" / "db"
    result = cli(home, "volume", "mount", "nosuch", str(target))
    assert result.exit_code == 3 and "nosuch" in result.stderr
    assert not (home.parent / "mnt").exists()


def test_a_failed_mount_removes_the_directories_it_made(home: Path) -> None:
    ok(home, "volume", "create", "raw", "--size", "64Mi", "--mode", "block")
    existing = home.parent / "mnt"
    existing.mkdir()
    result = cli(home, "volume", "mount", "raw", str(existing / "a" / "b"))
    assert result.exit_code == 5, result.output  # a block volume has no filesystem to mount
    assert existing.exists() and list(existing.iterdir()) == []  # ours removed, the user's kept


def test_pool_create_with_layout_subvolume_makes_btrfs_and_shows_its_layout(
        engine_home: Path) -> None:
    one = as_json(engine_home, "pool", "create", "one", "--image-size", "1Gi",
                  "--layout", "subvolume")
    assert one["layout"] == "subvolume" and one["fs"] == "btrfs"  # one disk, formatted btrfs
    ok(engine_home, "pool", "delete", "one")

    made = as_json(engine_home, "pool", "create", "sv", "--images", "2", "--image-size", "1Gi",
                   "--layout", "subvolume")
    assert made["layout"] == "subvolume" and made["fs"] == "btrfs"
    wide = ok(engine_home, "pool", "get", "-o", "wide").splitlines()
    assert wide[1].split()[wide[0].split().index("LAYOUT")] == "subvolume"
    assert "subvolume (snapshots are btrfs subvolume snapshots)" in ok(
        engine_home, "pool", "describe", "sv")
    ok(engine_home, "volume", "create", "data", "--size", "64Mi", "--mode", "block")
    ok(engine_home, "snapshot", "create", "data-1", "--volume", "data")
    assert (engine_home / "pools" / "sv" / "snapshots" / "data-1" / "volume.img").exists()
    ok(engine_home, "snapshot", "delete", "data-1")
    ok(engine_home, "volume", "delete", "data")
    assert ok(engine_home, "pool", "delete", "sv").strip() == "pool/sv deleted"
    assert loops_backed_under(engine_home) == []
