from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from statehold.cli.main import build_app
from statehold.errors import CommandError, InvalidArgument
from statehold.runner import run
from statehold.settings import Settings


def test_settings_read_home_from_environment() -> None:
    assert Settings.from_env({"STATEHOLD_HOME": "/srv/sh"}).home == Path("/srv/sh")


def test_settings_read_the_freeze_expedite_flag_and_refuse_a_bad_one() -> None:
    assert Settings.from_env({}).freeze_expedite_rcu
    assert not Settings.from_env({"STATEHOLD_FREEZE_EXPEDITE_RCU": "0"}).freeze_expedite_rcu
    assert Settings.from_env({"STATEHOLD_FREEZE_EXPEDITE_RCU": " Yes"}).freeze_expedite_rcu
    with pytest.raises(InvalidArgument, match="STATEHOLD_FREEZE_EXPEDITE_RCU"):
        Settings.from_env({"STATEHOLD_FREEZE_EXPEDITE_RCU": "maybe"})


def test_a_bad_freeze_expedite_flag_fails_the_command_with_exit_code_2() -> None:
    env = {**os.environ, "STATEHOLD_FREEZE_EXPEDITE_RCU": "maybe"}
    done = subprocess.run([sys.executable, "-m", "statehold.cli.main", "version"], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert "STATEHOLD_FREEZE_EXPEDITE_RCU" in done.stderr


def test_runner_raises_command_error_with_exit_code_and_stderr() -> None:
    try:
        run(["sh", "-c", "echo boom >&2; exit 3"])
    except CommandError as exc:
        assert exc.code == 3 and exc.stderr == "boom"
    else:
        raise AssertionError("no CommandError")


def test_cli_without_arguments_prints_help() -> None:
    result = CliRunner().invoke(build_app(), [])
    assert "Usage" in result.output
