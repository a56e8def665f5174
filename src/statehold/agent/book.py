"""Which replicas each primary volume of this node streams to, kept across restarts.

The controller says it (``SetReplicas``); standalone, ``statehold agent serve --replica``
does. Stored as ``<home>/agent/replicas.json`` (``{"version": 1, "volumes": {"pool/vol":
[{"node": "n2", "address": "10.0.0.2:7443", "pool": ""}]}}``), replaced atomically. Which
*role* the local copy has is not kept here: the replication core owns that (epochs, fencing), so a
volume listed here is streamed only while its copy is primary.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from statehold.agent.copies import VolumeRef
from statehold.errors import Corrupt, InvalidArgument

VERSION = 1


@dataclass(frozen=True, slots=True)
class Peer:
    node: str
    address: str      # "IP:PORT" of the peer's agent
    pool: str = ""    # the replica's pool on its node; "": the same pool name as here

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``node@IP:PORT`` or ``node:pool@IP:PORT``."""
        who, sep, address = text.partition("@")
        node, _, pool = who.partition(":")
        if not sep or not node or ":" not in address:
            raise InvalidArgument(f"replica {text!r} must be <node>[:<pool>]@<ip>:<port>")
        return cls(node, address, pool)

    def volume(self, local: VolumeRef) -> VolumeRef:
        """The name of ``local``'s copy on this peer (same volume name, its pool)."""
        return VolumeRef(self.pool or local.pool, local.name)


class ReplicaBook:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._volumes: dict[VolumeRef, tuple[Peer, ...]] = self._load()

    def _load(self) -> dict[VolumeRef, tuple[Peer, ...]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise Corrupt(f"cannot read {self.path}: {exc}") from exc
        if raw.get("version") != VERSION:
            raise Corrupt(f"{self.path}: unknown version {raw.get('version')!r}")
        return {VolumeRef.parse(v): tuple(Peer(p["node"], p["address"], p.get("pool", ""))
                                          for p in peers)
                for v, peers in raw.get("volumes", {}).items()}

    def _save(self) -> None:
        data = {"version": VERSION, "volumes": {
            str(v): [{"node": p.node, "address": p.address, "pool": p.pool} for p in peers]
            for v, peers in sorted(self._volumes.items(), key=lambda kv: str(kv[0]))}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def set(self, volume: VolumeRef, peers: tuple[Peer, ...]) -> None:
        """Replace the volume's replicas (none: forget the volume)."""
        if len({p.node for p in peers}) != len(peers):
            raise InvalidArgument(f"{volume}: a node is listed twice as a replica")
        with self._lock:
            if peers:
                self._volumes[volume] = peers
            else:
                self._volumes.pop(volume, None)
            self._save()

    def get(self, volume: VolumeRef) -> tuple[Peer, ...]:
        with self._lock:
            return self._volumes.get(volume, ())

    def items(self) -> list[tuple[VolumeRef, tuple[Peer, ...]]]:
        with self._lock:
            return sorted(self._volumes.items(), key=lambda kv: str(kv[0]))
