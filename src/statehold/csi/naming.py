"""CSI names and ids <-> engine names.

The CO names volumes and snapshots freely (any Unicode up to the spec's limit; the
Kubernetes sidecars send ``pvc-<uuid>``, conformance suites send mixed case). The engine
accepts DNS-1123 labels only, because names become file names. A CO name that already is a
label is used as is, so ``pvc-…`` volumes stay readable on disk; any other name maps to a
slug plus a hash of the full name, deterministic so a retried CreateVolume finds the
volume it made the first time.
"""

from __future__ import annotations

import hashlib
import re

from statehold.engine.names import validate_name
from statehold.errors import InvalidArgument, NotFound

_BAD = re.compile(r"[^a-z0-9-]+")


def engine_name(co_name: str) -> str:
    """The engine name for a CO-chosen volume or snapshot name."""
    try:
        return validate_name(co_name)
    except InvalidArgument:
        pass
    digest = hashlib.sha256(co_name.encode()).hexdigest()[:12]
    slug = _BAD.sub("-", co_name.lower()).strip("-")[:40].strip("-")
    return f"{slug}-{digest}" if slug else f"x-{digest}"


def split_id(object_id: str) -> tuple[str, str]:
    """``"<pool>/<name>"`` -> (pool, name). A malformed id names nothing: NotFound."""
    pool, sep, name = object_id.partition("/")
    if not sep or not pool or not name or "/" in name:
        raise NotFound(f"no volume or snapshot with id {object_id!r}")
    return pool, name


def join_id(pool: str, name: str) -> str:
    return f"{pool}/{name}"
