"""The CLI reads the environment once and maps every error through one exit-code table."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

import statehold.cli
from statehold.cli.context import CliConfig
from statehold.cli.main import build_app
from statehold.cli.output import EXIT_CODES, exit_code
from statehold.errors import AlreadyExists
from statehold.settings import Secrets, Settings

CLI_DIR = Path(statehold.cli.__file__).parent


def test_only_the_entry_point_reads_the_environment() -> None:
    readers = {
        path.name
        for path in CLI_DIR.glob("*.py")
        if re.search(r"os\.environ|os\.getenv|\.from_env\(", path.read_text())
    }
    # main calls CliConfig.from_env; context defines it (and uses it when main did not run)
    assert readers == {"context.py", "main.py"}


def test_only_the_output_module_decides_exit_codes() -> None:
    deciders = {
        path.name
        for path in CLI_DIR.glob("*.py")
        if re.search(r"typer\.Exit\([2-8]\)", path.read_text())
    }
    # shared usage's "over size" report (4) is the one exit that is not an error's code
    assert deciders <= {"shared.py"}
    assert "typer.Exit(4)" in (CLI_DIR / "shared.py").read_text()


def test_settings_and_secrets_given_by_main_are_the_ones_commands_use(scratch: Path) -> None:
    home = scratch / "elsewhere"
    config = CliConfig(Settings(home=home), Secrets(repo_password="from-main"))
    # an empty environment: the password and home can only come from the object
    result = CliRunner(env={"STATEHOLD_REPO_PASSWORD": "", "STATEHOLD_HOME": str(scratch / "wrong")}).invoke(
        build_app(), ["target", "add", "t", "--path", str(scratch / "repo")], obj=config)
    assert result.exit_code == 0, result.output
    assert (home / "backup-targets.json").exists()
    assert not (scratch / "wrong").exists()


def test_secrets_never_show_in_their_repr() -> None:
    s = Secrets(repo_password="hunter2", s3_access_key="AKIA", s3_secret_key="shh")
    assert "hunter2" not in repr(s) and "AKIA" not in repr(s) and "shh" not in repr(s)


def test_secrets_and_settings_from_the_environment() -> None:
    env = {"STATEHOLD_HOME": "/srv/h", "STATEHOLD_REPO_PASSWORD": "pw", "AWS_ACCESS_KEY_ID": "a",
           "AWS_SECRET_ACCESS_KEY": "b", "STATEHOLD_CSI_ALLOWED_ROOTS": "/tmp/csi-a::/tmp/csi-b"}
    config = CliConfig.from_env(env)
    assert config.settings.home == Path("/srv/h")
    assert config.settings.csi_allowed_roots == (Path("/tmp/csi-a"), Path("/tmp/csi-b"))
    assert (config.secrets.repo_password, config.secrets.s3_access_key, config.secrets.s3_secret_key) == (
        "pw", "a", "b")
    assert CliConfig.from_env({}).secrets.s3_access_key is None


def test_shared_commands_use_the_one_table(scratch: Path) -> None:
    assert exit_code(AlreadyExists("x")) == dict(EXIT_CODES)[AlreadyExists] == 4
    root = str(scratch)
    first = CliRunner().invoke(build_app(), ["shared", "create", "data", "--size", "1Mi", "--root", root])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(build_app(), ["shared", "create", "data", "--size", "2Mi", "--root", root])
    assert again.exit_code == 4, again.output  # AlreadyExists, as for every other command
    assert again.stderr.startswith("error: ")
