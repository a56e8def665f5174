"""Which backend serves a request: StorageClass ``type`` for new volumes, the id prefix after.

The shared backend is optional: it is loaded only if ``statehold.csi.backend_shared`` imports
and builds; otherwise shared requests are refused with INVALID_ARGUMENT and the local
driver works on its own.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from statehold.csi.backend import SHARED_PREFIX, BackendConfig, VolumeBackend
from statehold.errors import InvalidArgument

log = logging.getLogger("statehold.csi")

TYPE_PARAMETER = "type"
TYPES = ("local", "shared")


class Router:
    def __init__(self, local: VolumeBackend, shared: VolumeBackend | None = None) -> None:
        self.local = local
        self.shared = shared

    def backends(self) -> list[VolumeBackend]:
        return [b for b in (self.local, self.shared) if b is not None]

    def for_parameters(self, parameters: Mapping[str, str]) -> VolumeBackend:
        kind = parameters.get(TYPE_PARAMETER, "local") or "local"
        if kind not in TYPES:
            raise InvalidArgument(f"parameter type={kind!r} is not one of {list(TYPES)}")
        return self._shared() if kind == "shared" else self.local

    def for_id(self, object_id: str) -> VolumeBackend:
        return self._shared() if object_id.startswith(SHARED_PREFIX) else self.local

    def _shared(self) -> VolumeBackend:
        if self.shared is None:
            raise InvalidArgument("shared volumes are not available on this driver")
        return self.shared


def load_shared(config: BackendConfig) -> VolumeBackend | None:
    """The shared backend, or None when its module is absent or fails to build."""
    try:
        module = importlib.import_module("statehold.csi.backend_shared")
        backend: VolumeBackend = module.SharedBackend(config)
    except Exception as exc:  # its absence or failure must never stop the local driver
        log.warning("shared backend unavailable: %s: %s", type(exc).__name__, exc)
        return None
    return backend
