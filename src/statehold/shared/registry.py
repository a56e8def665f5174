"""Which shared roots a process knows, by a short key that goes into volume ids.

CSI's DeleteVolume, ControllerExpandVolume and NodeGetVolumeStats carry only the volume id
(at most 128 bytes), not the StorageClass parameters, yet the controller must find the
share again. So every id is ``shared/<key>/<name>`` where ``key`` is a digest of the root's
description, and the description is recorded under ``<home>/shared/roots/<key>.json`` when
a volume is created (controller) or staged (node; the description also travels in the
volume context). The home directory must therefore persist across restarts.

Two styles:

* ``host``: the share is already mounted at ``path`` on every node (a start-up script or
  fstab does it); we only use the path.
* ``native``: we mount ``source`` with ``fstype`` and ``options`` ourselves, once per node
  (see :mod:`statehold.shared.share`), and the root is that mount point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from statehold.errors import InvalidArgument, NotFound
from statehold.shared.metadata import read_json, write_json
from statehold.shared.share import ShareSpec

HOST = "host"
NATIVE = "native"


@dataclass(frozen=True, slots=True)
class RootSpec:
    style: str                       # "host" or "native"
    path: Path | None = None         # host style
    share: ShareSpec | None = None   # native style

    @property
    def key(self) -> str:
        if self.share is not None:
            return self.share.key
        digest = hashlib.sha256(f"host:{self.path}".encode()).hexdigest()
        return digest[:16]

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> RootSpec:
        """From StorageClass parameters (or a volume context): ``sharedRoot`` for the host
        style; ``source`` (or ``server`` + ``share``), ``fsType``, ``mountOptions`` for the
        native style. InvalidArgument names the parameter that is wrong."""
        root = params.get("sharedRoot", "")
        source = params.get("source", "")
        if not source and params.get("server"):
            share = params.get("share", "")
            source = f"{params['server']}:{share if share.startswith('/') else '/' + share}"
        if root and source:
            raise InvalidArgument("give either sharedRoot (host-based) or source/server (native), not both")
        if root:
            path = Path(root)
            if not path.is_absolute() or ".." in path.parts:
                raise InvalidArgument(f"sharedRoot {root!r} must be an absolute path without '..'")
            return cls(style=HOST, path=path)
        if source:
            fstype = params.get("fsType", "") or params.get("csi.storage.k8s.io/fstype", "")
            if not fstype:
                raise InvalidArgument("a native shared volume needs fsType (glusterfs, nfs, cephfs, cifs)")
            return cls(style=NATIVE, share=ShareSpec.parse(source, fstype, params.get("mountOptions", ""),
                                                           credentials=params.get("credentialsFile", "")))
        raise InvalidArgument("type=shared needs sharedRoot (host-based) or source/server (native)")

    def to_context(self) -> dict[str, str]:
        if self.share is not None:
            context = {"source": self.share.source, "fsType": self.share.fstype,
                       "mountOptions": ",".join(self.share.options)}
            if self.share.credentials:  # the file's path; its content stays in the Secret
                context["credentialsFile"] = self.share.credentials
            return context
        return {"sharedRoot": str(self.path)}

    def to_json(self) -> dict[str, object]:
        return {"version": 1, "style": self.style, **self.to_context()}


class RootRegistry:
    """``<home>/shared/roots/<key>.json``: the root descriptions this process has used."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "shared" / "roots"

    def remember(self, spec: RootSpec) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{spec.key}.json"
        if not path.exists():
            write_json(path, spec.to_json())
        return spec.key

    def lookup(self, key: str) -> RootSpec:
        if not key.isalnum():
            raise InvalidArgument(f"root key {key!r} is malformed")
        data = read_json(self.dir / f"{key}.json")
        if data is None:
            raise NotFound(f"shared root {key} is not known on this host")
        return RootSpec.from_parameters({str(k): str(v) for k, v in data.items() if k != "version"})

    def known(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json"))
