"""What the CLI shares: rendering objects, and the one error -> exit code table.

(Opening things, the home, the node, a repository, lives in ``statehold.cli.context``.)

Exit codes (the only place they are decided; every command, ``shared`` ones included, maps
errors through :func:`failures`; docs/usage.md repeats this table):

====  ===================================================================
code  meaning
====  ===================================================================
0     success
1     any other Statehold error (Corrupt, CommandError, an unexpected fault)
2     bad input: InvalidArgument, OutOfRange (click's own usage errors also exit 2)
3     NotFound
4     AlreadyExists
5     FailedPrecondition, Aborted (the object is in the wrong state or busy)
6     OutOfCapacity
7     Unavailable, Temporary (worth retrying)
8     PermissionDenied
====  ===================================================================

Errors go to stderr as ``error: <message>``; results go to stdout, so ``-o json`` output
can be piped into ``jq`` untouched.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from statehold import errors
from statehold.engine.names import parse_size

if TYPE_CHECKING:
    from statehold.engine.node import Node
    from statehold.engine.pool import Pool

EXIT_CODES: tuple[tuple[type[errors.StateholdError], int], ...] = (
    (errors.InvalidArgument, 2),
    (errors.OutOfRange, 2),
    (errors.NotFound, 3),
    (errors.AlreadyExists, 4),
    (errors.FailedPrecondition, 5),
    (errors.Aborted, 5),
    (errors.OutOfCapacity, 6),
    (errors.Unavailable, 7),
    (errors.Temporary, 7),
    (errors.PermissionDenied, 8),
)


def exit_code(exc: BaseException) -> int:
    """The process exit code for ``exc`` (see the module docstring)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return 1


class Format(enum.StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


HomeOption = typer.Option(
    None, "--home", help="State directory (default: $STATEHOLD_HOME, else ./.statehold)."
)
OutputOption = typer.Option(
    Format.TABLE, "--output", "-o", help="Output format: table (default), wide, json, yaml."
)
PoolOption = typer.Option(
    None, "--pool", "-p", help="Pool to use (default: the only pool of this node)."
)


@contextmanager
def failures() -> Iterator[None]:
    """Turn a Statehold error into ``error: <message>`` on stderr and its exit code."""
    try:
        yield
    except errors.StateholdError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exit_code(exc)) from exc
    except OSError as exc:  # e.g. a home directory we may not create: not a traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def pick_pool(n: Node, name: str | None) -> Pool:
    """The named pool, or the only one; several pools need ``--pool``."""
    if name:
        named: Pool = n.pool(name)
        return named
    pools: list[Pool] = n.pools()
    if len(pools) == 1:
        return pools[0]
    if not pools:
        raise errors.NotFound("no pool on this node: create one with `statehold pool create`")
    names = ", ".join(sorted(p.name for p in pools))
    raise errors.InvalidArgument(f"several pools ({names}): choose one with --pool")


def listed_pools(n: Node, name: str | None) -> list[Pool]:
    """Pools a ``get`` lists: the named one, else every pool of the node (like ``-A``)."""
    if name:
        return [n.pool(name)]
    return list(n.pools())


def pool_holding(n: Node, name: str | None, obj: str, *, kind: str = "volume") -> Pool:
    """The pool that holds volume (or snapshot) ``obj``: the named pool, else the only pool
    of the node that has it, so commands on an existing object need no ``--pool``."""
    if name:
        return pick_pool(n, name)
    pools: list[Pool] = n.pools()
    if len(pools) == 1:
        return pools[0]
    if kind == "volume":
        holders = [p for p in pools if any(v.name == obj for v in p.list_volumes())]
    else:
        holders = [p for p in pools if any(s.name == obj for s in p.list_snapshots())]
    if len(holders) == 1:
        return holders[0]
    if not holders:
        every = ", ".join(p.name for p in pools) or "none"
        raise errors.NotFound(f"{kind} {obj!r} not found in any pool (pools: {every})")
    names = ", ".join(p.name for p in holders)
    raise errors.InvalidArgument(f"{kind} {obj!r} exists in pools {names}: choose one with --pool")


def size_arg(value: str) -> int:
    """Parse a size such as ``10Gi`` (InvalidArgument with the value when wrong)."""
    return parse_size(value)


# ---- rendering -------------------------------------------------------------------------

def plain(obj: Any) -> Any:
    """A JSON-ready copy of a value type: enums as strings, paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if hasattr(obj, "id"):
            out = {"id": obj.id, **out}
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def human(size: int | None) -> str:
    """Bytes in the binary units users type (``10Gi``), exact where possible."""
    if size is None:
        return ""
    for unit, scale in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size >= scale:
            if size % scale == 0:
                return f"{size // scale}{unit}"
            return f"{size / scale:.1f}{unit}"
    return str(size)


def age(created_at: float, now: float | None = None) -> str:
    """kubectl-style age: 42s, 5m, 3h, 2d."""
    secs = max(0, int((now if now is not None else time.time()) - created_at))
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= scale:
            return f"{secs // scale}{unit}"
    return f"{secs}s"


def console(*, err: bool = False) -> Console:
    """A console that never wraps columns when stdout is a pipe (scripts parse tables)."""
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() else 1000
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


Column = tuple[str, Callable[[Any], str]]


def emit(
    items: Sequence[Any] | Any,
    fmt: Format,
    columns: Sequence[Column],
    wide: Sequence[Column] = (),
    *,
    plain_of: Callable[[Any], Any] = plain,
) -> None:
    """Print one object or a list as a table (kubectl columns), json or yaml on stdout."""
    single = not isinstance(items, (list, tuple))
    seq = [items] if single else list(items)
    if fmt in (Format.JSON, Format.YAML):
        data = plain_of(seq[0]) if single else {"items": [plain_of(i) for i in seq]}
        if fmt is Format.JSON:
            typer.echo(json.dumps(data, indent=2, sort_keys=False))
        else:
            typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip("\n"))
        return
    if not seq:
        typer.echo("No resources found.", err=True)
        return
    cols = list(columns) + (list(wide) if fmt is Format.WIDE else [])
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="", padding=(0, 3, 0, 0))
    for title, _ in cols:
        table.add_column(title, no_wrap=True, overflow="ignore")
    for item in seq:
        table.add_row(*(get(item) for _, get in cols))
    out = console()
    with out.capture() as captured:
        out.print(table)
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def describe(fields: Sequence[tuple[str, Any]]) -> None:
    """kubectl describe-like ``Key:  value`` lines; a list value becomes indented lines."""
    width = max(len(k) for k, _ in fields) + 2
    lines = []
    for key, value in fields:
        label = f"{key}:".ljust(width)
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:" if value else f"{label}<none>")
            lines.extend(f"  {v}" for v in value)
        else:
            lines.append(f"{label}{value if value not in (None, '') else '<none>'}")
    typer.echo("\n".join(lines))


def done(kind: str, name: str, verb: str) -> None:
    """kubectl's one-line confirmation: ``volume/data created``."""
    typer.echo(f"{kind}/{name} {verb}")
