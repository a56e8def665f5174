"""Decoding and validating CSI request fields into the backend's plain types.

Pure functions: protobuf in, dataclasses out, :class:`~statehold.errors.InvalidArgument` for
anything malformed (the spec answers a missing or malformed required field with
INVALID_ARGUMENT). No I/O, so they are fuzzed directly with Hypothesis.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from statehold.csi.backend import AccessMode, Capability, ContentSource, VolumeBackend
from statehold.csi.gen import csi_pb2
from statehold.errors import InvalidArgument

LOCAL_FS_TYPES = frozenset({"ext4", "xfs", "btrfs"})
"""Filesystems a local volume can be formatted with."""

FS_PARAMETERS = ("fsType", "csi.storage.k8s.io/fstype")
"""StorageClass parameter keys naming the filesystem (ours, and the one the k8s sidecars set)."""

MAX_ID = 1024
"""Longest id or name accepted (the spec's lower bound for plugin support is 128 bytes)."""

_MODES = {
    csi_pb2.VolumeCapability.AccessMode.Mode.Name(v): v
    for v in csi_pb2.VolumeCapability.AccessMode.Mode.values()
}


def _banned(c: str) -> bool:
    """The spec's banned characters: U+0000-0008, 000B, 000C, 000E-001F, 007F-009F
    (control characters other than tab, newline and carriage return)."""
    o = ord(c)
    return o <= 0x08 or o in (0x0B, 0x0C) or 0x0E <= o <= 0x1F or 0x7F <= o <= 0x9F


def require(value: str, field: str) -> str:
    """A REQUIRED string field: non-empty, bounded, none of the spec's banned characters."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_ID:
        raise InvalidArgument(f"{field} is longer than {MAX_ID} characters")
    if any(_banned(c) for c in value):
        raise InvalidArgument(f"{field} contains control characters")
    return value


def capability(cap: csi_pb2.VolumeCapability) -> Capability:
    """Decode one VolumeCapability: exactly one access type and a known access mode."""
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise InvalidArgument("volume capability needs an access type (block or mount)")
    if not cap.HasField("access_mode"):
        raise InvalidArgument("volume capability needs an access mode")
    mode_value = cap.access_mode.mode
    if mode_value == csi_pb2.VolumeCapability.AccessMode.UNKNOWN:
        raise InvalidArgument("access mode UNKNOWN is not a mode")
    try:
        mode = AccessMode(csi_pb2.VolumeCapability.AccessMode.Mode.Name(mode_value))
    except ValueError as exc:
        raise InvalidArgument(f"unknown access mode {mode_value}") from exc
    if kind == "block":
        return Capability(mode=mode, block=True)
    flags = tuple(cap.mount.mount_flags)
    if sum(len(f) for f in flags) > 4096:
        raise InvalidArgument("mount_flags exceed 4 KiB")
    for flag in flags:
        if not flag or "\x00" in flag:
            raise InvalidArgument("empty or NUL-containing mount flag")
    return Capability(
        mode=mode,
        block=False,
        fs_type=cap.mount.fs_type,
        mount_flags=flags,
        volume_mount_group=cap.mount.volume_mount_group,
    )


def capabilities(caps: Iterable[csi_pb2.VolumeCapability]) -> tuple[Capability, ...]:
    """The REQUIRED, non-empty repeated volume_capabilities field."""
    decoded = tuple(capability(c) for c in caps)
    if not decoded:
        raise InvalidArgument("volume_capabilities is required")
    return decoded


def unsupported(backend: VolumeBackend, caps: Sequence[Capability]) -> str:
    """Why ``backend`` cannot serve ``caps`` ("" when it can): used to refuse CreateVolume
    with INVALID_ARGUMENT and to leave ValidateVolumeCapabilities unconfirmed."""
    for cap in caps:
        if cap.mode not in backend.access_modes:
            return f"access mode {cap.mode.value} is not supported by {backend.kind} volumes"
        if cap.block and not backend.supports_block:
            return f"block access is not supported by {backend.kind} volumes"
        if not cap.block and cap.fs_type and backend.kind == "local" and cap.fs_type not in LOCAL_FS_TYPES:
            return f"fs_type {cap.fs_type!r} is not one of {sorted(LOCAL_FS_TYPES)}"
    if any(c.block for c in caps) and any(not c.block for c in caps):
        return "a volume cannot be both block and mount"
    fs = {c.fs_type for c in caps if not c.block and c.fs_type}
    if len(fs) > 1:
        return f"conflicting fs types {sorted(fs)}"
    return ""


def capacity_range(
    has_range: bool, required: int, limit: int
) -> tuple[int, int]:
    """(required_bytes, limit_bytes) with 0 meaning unset; InvalidArgument when malformed.

    The spec: when a range is given at least one bound MUST be set, neither may be
    negative, and a limit below the requirement can never be satisfied."""
    if not has_range:
        return 0, 0
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range bounds must not be negative")
    if required == 0 and limit == 0:
        raise InvalidArgument("capacity_range needs required_bytes or limit_bytes")
    if limit and limit < required:
        raise InvalidArgument(f"capacity_range limit_bytes {limit} < required_bytes {required}")
    return required, limit


def content_source(src: csi_pb2.VolumeContentSource, present: bool) -> ContentSource | None:
    if not present:
        return None
    kind = src.WhichOneof("type")
    if kind == "snapshot":
        return ContentSource("snapshot", require(src.snapshot.snapshot_id, "snapshot source id"))
    if kind == "volume":
        return ContentSource("volume", require(src.volume.volume_id, "volume source id"))
    raise InvalidArgument("volume_content_source names neither a snapshot nor a volume")


def segments(topologies: Iterable[csi_pb2.Topology]) -> tuple[dict[str, str], ...]:
    return tuple(dict(t.segments) for t in topologies)


def fs_parameter(parameters: Mapping[str, str]) -> str:
    """The fs type named by StorageClass parameters ("" if none)."""
    for key in FS_PARAMETERS:
        if parameters.get(key):
            return parameters[key]
    return ""


Root = Path | tuple[Path, Path]
"""An allowed root: its path, or ``(as the CO names it, its real path)``."""


def path(value: str, field: str, roots: Sequence[Root], protected: Sequence[Path] = ()) -> Path:
    """A node path field: required, absolute, normalised, strictly inside one of ``roots``
    and neither inside nor above any ``protected`` path; InvalidArgument otherwise.

    Judged on the text alone, so this is pure: a root may be given with its real path (the
    servicer resolves them once) so that ``protected`` real paths compare with where the
    path really lies. What is on the node at that path is the backend's to check when it
    opens it beneath its root, never through a symlink or a mount
    (:mod:`statehold.engine.safepath`): a symlink there is a FAILED_PRECONDITION of the
    node, not a malformed argument. Refusing paths outside the allowed roots keeps a
    compromised or confused CO from making this root process mount over /etc; refusing the
    protected ones (the driver's home, its pools, shared roots) keeps it from hiding the
    volumes' own files."""
    require(value, field)
    if not value.startswith("/"):
        raise InvalidArgument(f"{field} must be an absolute path")
    norm = os.path.normpath(value)
    if norm != value.rstrip("/") or "/../" in value or value.endswith("/.."):
        raise InvalidArgument(f"{field} must be a normalised path (no '.', '..' or '//')")
    for root in roots:
        named, real = root if isinstance(root, tuple) else (root, root)
        for form in dict.fromkeys((os.path.normpath(str(named)), os.path.normpath(str(real)))):
            prefix = form.rstrip("/") + "/"
            if norm.startswith(prefix) and len(norm) > len(prefix):
                where = os.path.join(os.path.normpath(str(real)), norm[len(prefix):])
                _unprotected(where, value, field, protected)
                return Path(norm)
    raise InvalidArgument(f"{field} {value!r} is outside the allowed roots")


def _unprotected(where: str, value: str, field: str, protected: Sequence[Path]) -> None:
    for guarded in protected:
        g = os.path.normpath(str(guarded))
        inside = where == g or where.startswith(g.rstrip("/") + "/")
        above = g.startswith(where.rstrip("/") + "/")
        if inside or above:
            relation = "inside" if inside else "above"
            raise InvalidArgument(
                f"{field} {value!r} lies {relation} {g}, which holds the driver's own files (its "
                "home, a pool or a shared root): never a node path")
