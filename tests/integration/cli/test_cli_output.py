"""The CLI's shared parts that need no root: exit codes, rendering, bad input before any I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold import errors
from statehold.cli.output import age, exit_code, human, plain
from statehold.engine.types import Source, SourceKind, Volume, VolumeMode
from tests.integration.cli.helpers import cli


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgument("x"), 2),
        (errors.OutOfRange("x"), 2),
        (errors.NotFound("x"), 3),
        (errors.AlreadyExists("x"), 4),
        (errors.FailedPrecondition("x"), 5),
        (errors.Aborted("x"), 5),
        (errors.OutOfCapacity("x"), 6),
        (errors.Unavailable("x"), 7),
        (errors.Temporary("x"), 7),
        (errors.PermissionDenied("x"), 8),
        (errors.Corrupt("x"), 1),
        (errors.CommandError(["mount"], 32, "busy"), 1),
    ],
)
def test_each_error_kind_has_its_documented_exit_code(exc: Exception, code: int) -> None:
    assert exit_code(exc) == code


def test_sizes_print_in_the_units_users_type() -> None:
    assert [human(n) for n in (512, 1 << 20, 10 << 30, 1536 << 20)] == ["512", "1Mi", "10Gi", "1.5Gi"]
    assert age(100.0, now=100.0 + 3 * 3600 + 5) == "3h"


def test_json_view_of_a_volume_has_its_id_and_plain_values() -> None:
    vol = Volume("p", "v", 1 << 20, VolumeMode.BLOCK, None, Path("/x/v.img"), 1.0,
                 source=Source(SourceKind.SNAPSHOT, "s"), mounts=("/m",))
    view = plain(vol)
    assert view["id"] == "p/v" and view["mode"] == "block" and view["path"] == "/x/v.img"
    assert view["source"] == {"kind": "snapshot", "name": "s"} and view["mounts"] == ["/m"]


def test_a_bad_size_is_exit_2_with_an_error_line_and_touches_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = cli(home, "volume", "create", "data", "--size", "10Zi")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "10Zi" in result.stderr
    assert result.stdout == ""
    assert not home.exists()


def test_clone_without_a_source_is_invalid(tmp_path: Path) -> None:
    result = cli(tmp_path / "home", "volume", "clone", "c")
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_a_malformed_label_is_invalid(tmp_path: Path) -> None:
    result = cli(tmp_path / "home", "volume", "create", "v", "--size", "1Gi", "--label", "novalue")
    assert result.exit_code == 2 and "key=value" in result.stderr
