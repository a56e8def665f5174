"""``statehold target add|get``: where backups go, a directory (any mount) or an S3 bucket.

Adding a target initialises its repository, or opens the one already there to check the
password; a name already taken for another place is refused before anything is made. The
targets file holds no secret (the password and S3 keys come from the environment or files,
see :mod:`statehold.cli.backup`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from statehold.backup.repository import Repository
from statehold.backup.targets import Target
from statehold.cli.context import PasswordFileOption, repo_password, target_book, target_store
from statehold.cli.output import Format, HomeOption, OutputOption, done, emit, failures
from statehold.errors import AlreadyExists, InvalidArgument, NotFound

target_app = typer.Typer(help="Backup targets (a directory or an S3 bucket).", no_args_is_help=True)


@target_app.command("add")
def target_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Target name (DNS-1123 label)."),
    path: Path | None = typer.Option(None, "--path", help="Directory target (any mount)."),
    s3_bucket: str | None = typer.Option(None, "--s3-bucket", help="S3 bucket."),
    s3_prefix: str = typer.Option("", "--s3-prefix", help="Key prefix inside the bucket."),
    s3_endpoint: str | None = typer.Option(None, "--s3-endpoint", help="S3-compatible server URL."),
    s3_region: str = typer.Option("us-east-1", "--s3-region", help="S3 region."),
    s3_credentials_file: Path | None = typer.Option(
        None, "--s3-credentials-file", help="AWS shared-credentials file (default: $AWS_* keys)."),
    create_bucket: bool = typer.Option(False, "--create-bucket", help="Create the S3 bucket if missing."),
    chunk_size: int | None = typer.Option(
        None, "--chunk-size", help="Chunk size of a new repository, bytes (default 256 KiB in format 2, "
        "1 MiB in format 1)."),
    repo_format: int = typer.Option(2, "--format", help="Format of a new repository: 2 (packs and an "
                                    "index) or 1 (one object per chunk, for older Statehold releases)."),
    pack_size: int | None = typer.Option(None, "--pack-size", help="Format 2: pack size of a new "
                                         "repository, bytes (default 16 MiB)."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Define a target and initialise its repository (or open the existing one to check the password)."""
    with failures():
        if (path is None) == (s3_bucket is None):
            raise InvalidArgument("give exactly one of --path or --s3-bucket")
        creds = str(s3_credentials_file.resolve()) if s3_credentials_file else None
        t = Target(name=name, kind="dir", path=str(path.resolve())) if path is not None else Target(
            name=name, kind="s3", bucket=s3_bucket, prefix=s3_prefix, endpoint=s3_endpoint,
            region=s3_region, credentials_file=creds)
        t.validate()
        password = repo_password(ctx, password_file)
        book = target_book(ctx, home, create=True)
        try:  # a taken name is refused before anything is made at the new place
            known: Target | None = book.get(name)
        except NotFound:
            known = None
        if known is not None and known != t:
            raise AlreadyExists(f"backup target {name!r} already points at {known.url()}")
        store = target_store(ctx, t, create=create_bucket or t.kind == "dir")
        if store.exists("config"):
            Repository.open(store, password)
            state = "opened existing repository"
        else:
            Repository.init(store, password, chunk_size=chunk_size, version=repo_format, pack_size=pack_size)
            state = f"initialised format {repo_format} repository"
        changed = book.add(t)
    done("target", name, f"{'added' if changed else 'unchanged'} ({state} at {t.url()})")


@target_app.command("get")
def target_get(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="One target; all when omitted."),
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """List backup targets."""
    with failures():
        book = target_book(ctx, home)
        items: Target | list[Target] = book.get(name) if name else book.all()
    emit(items, output, [("NAME", lambda t: t.name), ("KIND", lambda t: t.kind), ("URL", lambda t: t.url())])


def register(app: typer.Typer) -> None:
    """Add ``statehold target ...`` to app."""
    app.add_typer(target_app, name="target")
