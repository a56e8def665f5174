"""What every command is handed: the settings and secrets, read once, and the one way to
open what they name (the home, this host's node, a backup target's repository).

``main`` reads the environment once (:meth:`CliConfig.from_env`) and gives it to click as
the root context's ``obj``; a command reaches it through its ``typer.Context`` with
:func:`config`. An app run without ``main`` (``CliRunner`` in tests) reads the environment
on first use, into the same place, so it is still read once per invocation.

A typo in ``--home`` must not leave a new, empty home behind: only commands that make a
home's first objects (``pool create``, ``pool import``, ``target add``, ``demo``, the
servers) may create it. Every other command on a missing home fails with NotFound naming
the path, and creates nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from statehold.cli.output import failures
from statehold.errors import InvalidArgument, NotFound
from statehold.settings import Secrets, Settings

if TYPE_CHECKING:
    from statehold.backup.repository import Repository
    from statehold.backup.store import Store
    from statehold.backup.targets import Target, TargetBook
    from statehold.engine.node import Node


@dataclass(frozen=True, slots=True)
class CliConfig:
    """One invocation's settings and secrets."""

    settings: Settings
    secrets: Secrets

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CliConfig:
        return cls(Settings.from_env(env), Secrets.from_env(env))


def config(ctx: typer.Context) -> CliConfig:
    """The invocation's config, kept on the root context (read from the environment on
    first use when ``main`` did not put it there)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliConfig):
        root.obj = CliConfig.from_env()
    cfg: CliConfig = root.obj
    return cfg


def settings(ctx: typer.Context, home: Path | None = None) -> Settings:
    """The settings with this command's ``--home`` (if given) applied."""
    s = config(ctx).settings
    return replace(s, home=home) if home is not None else s


def home_dir(ctx: typer.Context, home: Path | None, *, create: bool = False) -> Path:
    """The absolute home directory; made if missing only when ``create`` (see the module
    docstring), else NotFound naming it."""
    path = settings(ctx, home).home.absolute()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise NotFound(
            f"Statehold home {path} does not exist (check --home or STATEHOLD_HOME; "
            "`statehold pool create` or `statehold target add` makes one)")
    return path.resolve()


@contextmanager
def node(ctx: typer.Context, home: Path | None, *, create: bool = False) -> Iterator[Node]:
    """Open this host's node (the pools under the home) and close it afterwards; errors
    inside become ``error: ...`` and their exit code."""
    from statehold.engine.node import Node  # the engine is imported only when a command runs

    with failures():
        n = Node(home_dir(ctx, home, create=create))
        try:
            yield n
        finally:
            n.close()


# ---- backup targets and their repositories -----------------------------------------------

def target_book(ctx: typer.Context, home: Path | None, *, create: bool = False) -> TargetBook:
    """The home's backup targets (``statehold target add``)."""
    from statehold.backup.targets import TargetBook

    return TargetBook(home_dir(ctx, home, create=create))


PasswordFileOption = typer.Option(
    None, "--password-file", help="File holding the repository password (default: $STATEHOLD_REPO_PASSWORD)."
)


def repo_password(ctx: typer.Context, password_file: Path | None) -> str:
    """The repository password: ``--password-file``, else $STATEHOLD_REPO_PASSWORD."""
    if password_file is not None:
        try:
            return password_file.read_text().rstrip("\n")
        except OSError as exc:
            raise InvalidArgument(f"cannot read password file {password_file}: {exc.strerror}") from exc
    password = config(ctx).secrets.repo_password
    if not password:
        raise InvalidArgument("no repository password: set STATEHOLD_REPO_PASSWORD or pass --password-file")
    return password


def target_store(ctx: typer.Context, target: Target, *, create: bool = False) -> Store:
    """A target's store; S3 keys from $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, else the
    target's credentials file. ``create`` makes the directory or bucket."""
    from statehold.backup.targets import open_store

    secrets = config(ctx).secrets
    return open_store(target, access_key=secrets.s3_access_key, secret_key=secrets.s3_secret_key,
                      create=create)


def open_repository(ctx: typer.Context, home: Path | None, target: str,
                    password_file: Path | None) -> Repository:
    """The repository of a defined backup target: the CLI's one way to open one."""
    from statehold.backup.repository import Repository

    t = target_book(ctx, home).get(target)
    password = repo_password(ctx, password_file)
    return Repository.open(target_store(ctx, t), password)
