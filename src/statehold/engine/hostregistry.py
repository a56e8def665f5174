"""``<home>/node.json``: which pools this host has and where their disks are.

Only the location of each pool's disks (device paths, image files or a directory) lives
here; everything else lives inside the pool, so losing this file loses nothing that
``import`` cannot bring back. Writes are atomic (temp file, fsync, rename). Callers hold
the home's lock (``Node._exclusive``) around read-modify-write.

A pool entry may carry ``"exporting"``: the pool is being exported, and every process on
this home lets go of it and opens it no more (the release protocol of
docs/design/pool-metadata.md, "Export"). The mark is durable, so an exporter that dies
leaves it for a retry to finish, or for an import of the same disks to clear.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from statehold.engine.types import PoolSpec
from statehold.errors import Corrupt, FailedPrecondition, NotFound

REGISTRY = "node.json"
REGISTRY_VERSION = 1
DISKS = "disks"
DIRECTORY = "directory"
EXPORTING = "exporting"


def is_exporting(entry: Mapping[str, Any]) -> bool:
    """True for a registry entry marked as being exported."""
    return bool(entry.get(EXPORTING))


def spec_to_dict(spec: PoolSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "devices": list(spec.devices),
        "images": list(spec.images),
        "image_size": spec.image_size,
        "profile": str(spec.profile),
        "overprovision_ratio": float(spec.overprovision_ratio),
    } | ({"directory": os.path.abspath(spec.directory)} if spec.directory else {}) \
      | ({"layout": str(spec.layout)} if spec.layout != "file" else {})  # old specs stay equal


def identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What makes two pool specs the same pool (the overprovision ratio may change)."""
    return {k: v for k, v in spec.items() if k != "overprovision_ratio"}


class HostRegistry:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / REGISTRY

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": REGISTRY_VERSION, "pools": {}}
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise Corrupt(f"{self.path} is unreadable: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("pools", {}), dict):
            raise Corrupt(f"{self.path} is not a Statehold node registry")
        if int(data.get("version", 0)) > REGISTRY_VERSION:
            raise FailedPrecondition(f"{self.path} has version {data.get('version')}, too new")
        data.setdefault("pools", {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.home, prefix=".node.json.")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def register(self, name: str, sources: Sequence[str], spec: dict[str, Any],
                 kind: str = DISKS) -> None:
        data = self.load()
        data["pools"][name] = {"sources": list(sources), "spec": spec, "kind": kind,
                               "registered_at": time.time()}
        self.save(data)

    def unregister(self, name: str) -> None:
        data = self.load()
        data["pools"].pop(name, None)
        self.save(data)

    def mark_exporting(self, name: str) -> None:
        """Mark ``name`` as being exported (durably; idempotent). NotFound if unregistered."""
        data = self.load()
        entry = data["pools"].get(name)
        if entry is None:
            raise NotFound(f"pool {name!r} not found")
        if not is_exporting(entry):
            entry[EXPORTING] = {"since": time.time(), "pid": os.getpid()}
            self.save(data)

    def clear_exporting(self, name: str) -> bool:
        """Cancel the export mark of ``name``; True if there was one."""
        data = self.load()
        entry = data["pools"].get(name)
        if entry is None or not is_exporting(entry):
            return False
        del entry[EXPORTING]
        self.save(data)
        return True
