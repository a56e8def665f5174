"""The parts of a pool's export that read no Node state: where a registered pool lives, what
keeps it from being exported, and what the exporter says when others still hold it.

``Node.export_pool`` runs the release protocol (docs/design/pool-metadata.md, "Export")
with these: mark the pool ``exporting`` in the registry, let every process on the home let
go of it, wait (bounded) until no process holds anything in it, unmount, detach, forget.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statehold.engine import fs, loop
from statehold.engine.holders import Holder
from statehold.engine.hostregistry import DIRECTORY, DISKS, HostRegistry, is_exporting
from statehold.engine.pool import META_DIR, SNAPSHOTS_DIR, VOLUMES_DIR
from statehold.engine.steps import FaultHook
from statehold.errors import Aborted, CommandError, FailedPrecondition, Temporary

log = logging.getLogger("statehold.engine.poolexport")

RETRY_AFTER = 5.0
"""Seconds a caller told that the pool is still held should wait before asking again."""


@dataclass(frozen=True, slots=True)
class Where:
    """A registered pool's place on this host, from its registry entry alone (a pool being
    exported is not opened, so nothing else may be asked)."""

    name: str
    mountpoint: Path
    sources: tuple[str, ...]
    directory: bool

    @property
    def images(self) -> list[str]:
        """Sources that are image files (loop-attached under a disk pool)."""
        if self.directory:
            return []
        return [s for s in self.sources if os.path.isfile(s)]

    @property
    def roots(self) -> list[Path]:
        """What no process may hold for the export to go on: the whole mount of a disk
        pool; what the pool made inside a directory pool's directory (the directory itself
        is the host's, and others may well use it)."""
        if self.directory:
            return [self.mountpoint / sub for sub in (META_DIR, VOLUMES_DIR, SNAPSHOTS_DIR)]
        return [self.mountpoint]


def where(pools_dir: Path, name: str, entry: Mapping[str, Any]) -> Where:
    sources = tuple(entry.get("sources", ()))
    directory = entry.get("kind", DISKS) == DIRECTORY
    mountpoint = Path(sources[0]) if directory and sources else pools_dir / name
    return Where(name, mountpoint, sources, directory)


def refuse_attached(place: Where) -> None:
    """FailedPrecondition while a volume or snapshot of the pool is attached: its loop
    device keeps the pool's filesystem busy whoever closes what, and a pod may be using it."""
    busy = loop.under(place.mountpoint / VOLUMES_DIR) | loop.under(place.mountpoint / SNAPSHOTS_DIR)
    if busy:
        raise FailedPrecondition(
            f"pool {place.name!r} has attached volumes or snapshots: {', '.join(sorted(busy))}")


def marked_with(pools: Mapping[str, Mapping[str, Any]], sources: Sequence[str]) -> str | None:
    """The pool marked as being exported whose sources are exactly ``sources``, if any (an
    import of them cancels that export)."""
    wanted = sorted(os.path.abspath(s) for s in sources)
    for name, entry in pools.items():
        if is_exporting(entry) and sorted(
                os.path.abspath(s) for s in entry.get("sources", ())) == wanted:
            return name
    return None


def state(registry: HostRegistry, name: str) -> str:
    """``exporting``, ``cancelled`` (registered, the mark cleared by an import) or ``gone``
    (unregistered: exported)."""
    entry = registry.load()["pools"].get(name)
    if entry is None:
        return "gone"
    return "exporting" if is_exporting(entry) else "cancelled"


def finish(registry: HostRegistry, pools_dir: Path, name: str, fault: FaultHook) -> tuple[bool, str]:
    """The export's last step, once no holder was seen, under the home lock: check the mark
    and attachments again, unmount, detach the images, unregister. (True, "") once done (or
    done by another exporter); (False, why) while the mount is still busy. Aborted if an
    import cancelled the export; FailedPrecondition, with the mark cleared, if a volume was
    attached meanwhile (the pool stays)."""
    entry = registry.load()["pools"].get(name)
    if entry is None:  # another exporter finished it
        return True, ""
    if not is_exporting(entry):
        raise Aborted(f"the export of pool {name!r} was cancelled: its disks were imported again")
    place = where(pools_dir, name, entry)
    try:
        refuse_attached(place)
    except FailedPrecondition:
        registry.clear_exporting(name)
        raise
    if not place.directory:
        try:
            fs.umount(place.mountpoint)
        except CommandError as exc:  # held by something no scan showed, or a race
            return False, exc.stderr
        fault("export_pool.unmounted")
        for image in place.images:
            loop.detach_file(image)
        if place.mountpoint.is_dir() and not os.path.ismount(place.mountpoint):
            place.mountpoint.rmdir()
    registry.unregister(name)
    log.info("pool exported pool=%s", name)
    return True, ""


def still_held(name: str, held: Sequence[Holder], busy: str) -> Temporary:
    """The error of an export that waited in vain: who still holds the pool, if anyone this
    process can see, and what now (the mark stays)."""
    if held:
        who = "; ".join(h.describe() for h in held)
        what = f"still in use by {who}"
    else:
        what = (f"its mount is still busy ({busy or 'umount refused'}), held by nothing this "
                "process can see (another PID namespace, or the kernel)")
    return Temporary(
        f"pool {name!r} is being exported, but {what}. It stays marked as exporting, so "
        "nothing on this node opens it again: retry the export to finish it, or import its "
        "disks to keep it", retry_after=RETRY_AFTER)
