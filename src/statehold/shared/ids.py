"""Ids of shared volumes and snapshots: ``shared/<root key>/<name>``.

The key is the digest of the root's description (:class:`~statehold.shared.registry.RootSpec`),
recorded in each host's root registry, so an id alone finds the share again. The same id
names the volume to the CSI driver (its volume handle) and in a backup repository (the
volume its tree backups are listed under), which is why it belongs to shared mode and not
to an adapter. The prefix matches ``statehold.csi.backend.SHARED_PREFIX`` (a test checks).
"""

from __future__ import annotations

from statehold.errors import InvalidArgument
from statehold.shared.names import validate_name

PREFIX = "shared/"


def split_id(object_id: str) -> tuple[str, str]:
    """``shared/<key>/<name>`` → (key, name); InvalidArgument when malformed."""
    parts = object_id.split("/")
    if len(parts) != 3 or parts[0] + "/" != PREFIX or not parts[1] or not parts[2]:
        raise InvalidArgument(f"{object_id!r} is not a shared volume or snapshot id")
    return parts[1], validate_name(parts[2])


def make_id(key: str, name: str) -> str:
    """The id of volume or snapshot ``name`` on the root with ``key``."""
    return f"{PREFIX}{key}/{name}"
