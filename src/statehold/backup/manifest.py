"""Manifests (format §6.2/6.3): the complete description of one backup.

Entries are kept compact -- offsets in an ``array('Q')`` and ids in one bytes string of
32-byte digests -- because a 1 TiB volume has a million of them and memory must stay flat.
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from statehold.backup.crypto import ID_LEN
from statehold.errors import Corrupt, FailedPrecondition

FORMAT = "statehold-manifest"
VERSION = 2
"""The newest manifest version this release reads. Version 2 is written only by tree
backups cut by content (a ``chunking`` header, chunk entries with their lengths, format
§11.8); every other manifest is still written as version 1, so older releases keep
reading them and refuse only what they would misread."""
_ENTRY = struct.Struct(">Q32s")


@dataclass(frozen=True, slots=True)
class Stats:
    bytes_read: int = 0
    """Plaintext bytes read from the image (the cost an incremental backup saves)."""
    bytes_new: int = 0
    """Plaintext bytes of chunks this backup uploaded (not already in the repository)."""
    stored_new: int = 0
    """Encoded (compressed, encrypted) bytes this backup uploaded."""
    chunks: int = 0
    chunks_new: int = 0


@dataclass(frozen=True, slots=True)
class Manifest:
    backup_id: str
    volume: str
    size: int
    chunk_size: int
    created: float
    offsets: array[int] = field(repr=False)
    ids: bytes = field(repr=False)
    kind: str = "image"
    parent: str | None = None
    snapshot: str | None = None
    host: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    tree: list[dict[str, Any]] | None = field(default=None, repr=False)
    """File-tree entries (kind "tree") -- see backup.tree."""
    origin: str = ""
    """Who made the backup (format §6.2): ``schedule/<namespace>/<name>`` for a cluster
    BackupSchedule; empty for a backup made by hand (the CLI, a VolumeBackup written by a
    user) and for every manifest written before the field existed. A schedule's retention
    only ever considers the backups of its own origin."""
    chunking: dict[str, Any] | None = None
    """How a tree backup's files were cut (format §11.8): None for fixed, aligned
    ``chunk_size`` slices (§6.3); ``{"method": "fastcdc-2020", "min", "avg", "max"}`` for
    content-defined chunks. A child backup reuses a parent's chunk lists only when both
    were cut the same way."""

    def __len__(self) -> int:
        return len(self.offsets)

    def entries(self) -> Iterator[tuple[int, bytes]]:
        for i, off in enumerate(self.offsets):
            yield off, self.ids[i * ID_LEN : (i + 1) * ID_LEN]

    def chunk_ids(self) -> Iterator[bytes]:
        """Every chunk id the backup needs (image entries and tree file chunks)."""
        for i in range(len(self.offsets)):
            yield self.ids[i * ID_LEN : (i + 1) * ID_LEN]
        for entry in self.tree or ():
            for c in entry.get("chunks", ()):
                yield bytes.fromhex(c[1])

    def file_chunks(self, entry: Mapping[str, Any]) -> Iterator[tuple[int, bytes, int]]:
        """``(offset, chunk id, length)`` of each stored chunk of a tree file entry. Fixed
        chunking (§6.3) implies the length (aligned ``chunk_size`` slices); content-defined
        chunking (§11.8) records it as the entry's third element."""
        size = int(entry["size"])
        for c in entry.get("chunks", ()):
            off = int(c[0])
            length = int(c[2]) if self.chunking else min(self.chunk_size, size - off)
            yield off, bytes.fromhex(c[1]), length

    def chunk_length(self, offset: int) -> int:
        return min(self.chunk_size, self.size - offset)

    def header(self) -> dict[str, Any]:
        head: dict[str, Any] = {
            "format": FORMAT, "version": 2 if self.chunking else 1, "kind": self.kind,
            "backup_id": self.backup_id,
            "volume": self.volume, "size": self.size, "chunk_size": self.chunk_size,
            "created": self.created, "parent": self.parent, "snapshot": self.snapshot,
            "host": self.host, "labels": self.labels,
            "stats": {"bytes_read": self.stats.bytes_read, "bytes_new": self.stats.bytes_new,
                      "stored_new": self.stats.stored_new, "chunks": self.stats.chunks,
                      "chunks_new": self.stats.chunks_new},
        }
        if self.tree is not None:
            head["entries"] = self.tree
        if self.chunking:  # absent means fixed chunking, as in every version 1 manifest
            head["chunking"] = self.chunking
        if self.origin:  # absent means made by hand, as in manifests from before the field
            head["origin"] = self.origin
        return head

    def encode(self) -> bytes:
        head = json.dumps(self.header(), separators=(",", ":"), sort_keys=True).encode()
        parts = [struct.pack(">I", len(head)), head]
        ids = self.ids
        parts.extend(_ENTRY.pack(off, ids[i * ID_LEN : (i + 1) * ID_LEN])
                     for i, off in enumerate(self.offsets))
        return b"".join(parts)


def decode(data: bytes, key: str) -> Manifest:
    """Parse a manifest's plaintext; Corrupt on any structural fault, naming the key."""
    try:
        (hlen,) = struct.unpack_from(">I", data, 0)
        head = json.loads(data[4 : 4 + hlen])
        if head.get("format") != FORMAT:
            raise Corrupt(f"{key}: not a manifest")
        if int(head["version"]) > VERSION:
            raise FailedPrecondition(f"{key}: manifest version {head['version']} is newer than this "
                                     f"Statehold understands ({VERSION}); upgrade")
        body = memoryview(data)[4 + hlen :]
        if len(body) % _ENTRY.size:
            raise Corrupt(f"{key}: entry table has a partial entry")
        offsets: array[int] = array("Q")
        ids = bytearray()
        for off, cid in _ENTRY.iter_unpack(body):
            offsets.append(off)
            ids += cid
        st = head.get("stats") or {}
        return Manifest(
            backup_id=str(head["backup_id"]), volume=str(head["volume"]), size=int(head["size"]),
            chunk_size=int(head["chunk_size"]), created=float(head["created"]), offsets=offsets,
            ids=bytes(ids), kind=str(head.get("kind", "image")), parent=head.get("parent"),
            snapshot=head.get("snapshot"), host=str(head.get("host", "")),
            labels=dict(head.get("labels") or {}),
            stats=Stats(**{k: int(st.get(k, 0)) for k in Stats.__dataclass_fields__}),
            tree=head.get("entries"), origin=str(head.get("origin") or ""),
            chunking=_chunking(head.get("chunking"), key),
        )
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise Corrupt(f"{key}: manifest does not parse: {exc}") from exc


FASTCDC_2020 = "fastcdc-2020"
CHUNKING_METHODS = frozenset({FASTCDC_2020})


def _chunking(raw: Any, key: str) -> dict[str, Any] | None:
    """The ``chunking`` header checked: None (fixed) or a known method with its sizes."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("method") not in CHUNKING_METHODS:
        raise FailedPrecondition(f"{key}: chunking {raw!r} is not one this Statehold knows; "
                                 "upgrade")
    return {"method": raw["method"], "min": int(raw["min"]), "avg": int(raw["avg"]),
            "max": int(raw["max"])}
