"""Which replicas each primary volume of this node streams to, kept across restarts.

The controller says it (``SetReplicas``); standalone, ``statehold agent serve --replica``
does. Stored as ``<home>/agent/replicas.json`` (``{"version": 1, "volumes": {"pool/vol":
[{"node": "n2", "address": "10.0.0.2:7443", "pool": ""}]}, "rpo": {"pool/vol": 15}}``),
replaced atomically; ``rpo`` holds the RPO the controller gave for a volume (absent: none
given; a book written before it existed has none). Which
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
        self._volumes: dict[VolumeRef, tuple[Peer, ...]] = {}
        self._rpo: dict[VolumeRef, int] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise Corrupt(f"cannot read {self.path}: {exc}") from exc
        if raw.get("version") != VERSION:
            raise Corrupt(f"{self.path}: unknown version {raw.get('version')!r}")
        try:
            self._volumes = {VolumeRef.parse(v): tuple(Peer(p["node"], p["address"], p.get("pool", ""))
                                                       for p in peers)
                             for v, peers in raw.get("volumes", {}).items()}
            self._rpo = {VolumeRef.parse(v): int(seconds) for v, seconds in raw.get("rpo", {}).items()
                         if VolumeRef.parse(v) in self._volumes and int(seconds) > 0}
        except (AttributeError, KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise Corrupt(f"{self.path}: {exc}") from exc

    def _save(self) -> None:
        ordered = sorted(self._volumes.items(), key=lambda kv: str(kv[0]))
        data = {"version": VERSION, "volumes": {
            str(v): [{"node": p.node, "address": p.address, "pool": p.pool} for p in peers]
            for v, peers in ordered},
            "rpo": {str(v): self._rpo[v] for v, _p in ordered if v in self._rpo}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def set(self, volume: VolumeRef, peers: tuple[Peer, ...], *, rpo_seconds: int = 0) -> None:
        """Replace the volume's replicas (none: forget the volume) and its RPO (0: none
        given, as by a controller older than the field)."""
        if len({p.node for p in peers}) != len(peers):
            raise InvalidArgument(f"{volume}: a node is listed twice as a replica")
        if rpo_seconds < 0:
            raise InvalidArgument(f"{volume}: rpo_seconds {rpo_seconds} is negative")
        with self._lock:
            if peers:
                self._volumes[volume] = peers
            else:
                self._volumes.pop(volume, None)
            if peers and rpo_seconds:
                self._rpo[volume] = rpo_seconds
            else:
                self._rpo.pop(volume, None)
            self._save()

    def rpo(self, volume: VolumeRef) -> int | None:
        """The volume's RPO in seconds as the controller gave it; None when none was."""
        with self._lock:
            return self._rpo.get(volume)

    def get(self, volume: VolumeRef) -> tuple[Peer, ...]:
        with self._lock:
            return self._volumes.get(volume, ())

    def items(self) -> list[tuple[VolumeRef, tuple[Peer, ...]]]:
        with self._lock:
            return sorted(self._volumes.items(), key=lambda kv: str(kv[0]))
