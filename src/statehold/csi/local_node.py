"""Node-side operations on local engine volumes: stage, publish, stats.

Idempotency comes from the kernel's mount table (the engine's mount toolkit,
``statehold.engine.mounts``), never from memory, so a restarted driver answers a retried call
correctly.

* Filesystem volume: stage = engine ``mount`` (loop attach, mkfs if blank, mount at the
  staging path); publish = bind mount of the staging path onto the target directory.
* Block volume: stage = engine ``attach``; publish = bind mount of the loop device node onto
  a regular file at the target path (what kubelet expects for ``volumeDevices``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from statehold.csi.backend import AccessMode, PublishRequest, StageRequest, VolumeStats
from statehold.csi.mounts import device_readonly, remove_target, set_device_readonly
from statehold.engine import mounts
from statehold.engine.mounts import Mount
from statehold.engine.pool import Pool
from statehold.engine.types import Volume, VolumeMode
from statehold.errors import AlreadyExists, CommandError, FailedPrecondition, InvalidArgument, NotFound

READ_ONLY_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY})
MANY_TARGET_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_MULTI_WRITER,
        AccessMode.MULTI_NODE_READER_ONLY,
        AccessMode.MULTI_NODE_SINGLE_WRITER,
        AccessMode.MULTI_NODE_MULTI_WRITER,
    }
)
"""Modes the spec lets a CO publish at several target paths of one node; for the others a
second target is "exceeds capabilities" (FAILED_PRECONDITION), per the spec's table for a
second NodePublishVolume on the same node."""


P = ParamSpec("P")
R = TypeVar("R")


def _os_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """OSError (a target that is a file where a directory is needed, a directory that is
    not empty after unmount, ...) becomes FailedPrecondition: the path is in a state this
    call cannot fix, and nothing is removed recursively to force it."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise FailedPrecondition(f"{fn.__name__}: {exc}") from exc

    return wrapper


def _check_kind(vol: Volume, block: bool, fs_type: str) -> None:
    if (vol.mode is VolumeMode.BLOCK) != block:
        raise InvalidArgument(
            f"volume {vol.id} is a {vol.mode.value} volume; the capability asks for "
            f"{'block' if block else 'mount'} access"
        )
    if fs_type and vol.fs is not None and fs_type != vol.fs.value:
        raise InvalidArgument(f"volume {vol.id} is {vol.fs.value}, not {fs_type}")


@_os_errors
def stage(pool: Pool, vol: Volume, req: StageRequest) -> None:
    cap = req.capability
    _check_kind(vol, cap.block, cap.fs_type)
    if cap.block:
        pool.attach(vol.name)
        return
    # Pool.mount checks the table too, but only for another device (FailedPrecondition);
    # the spec wants ALREADY_EXISTS here, and a read-only flag that differs is one too.
    current = mounts.mount_at(req.staging_path)
    if current is not None:
        if vol.device is None or current.source != vol.device:
            raise AlreadyExists(f"{req.staging_path} already holds {current.source}, not volume {vol.id}")
        if ("ro" in cap.mount_flags) != current.readonly:
            raise AlreadyExists(
                f"volume {vol.id} is staged at {req.staging_path} with readonly={current.readonly}"
            )
        return
    if vol.mounts and str(req.staging_path) not in vol.mounts:
        raise FailedPrecondition(f"volume {vol.id} is already staged at {', '.join(vol.mounts)}")
    req.staging_path.mkdir(parents=True, exist_ok=True)
    try:
        pool.mount(vol.name, req.staging_path, options=cap.mount_flags)
    except CommandError as exc:
        if not cap.mount_flags:
            raise
        # the CO's mount flags are the likeliest culprit; the spec calls that a bad argument.
        # The flags themselves are not repeated: the spec says they may hold secrets.
        raise InvalidArgument(f"mount with the requested mount_flags failed: {exc.stderr[-300:]}") from exc


@_os_errors
def unstage(pool: Pool, vol: Volume, staging: Path) -> None:
    if vol.mode is VolumeMode.BLOCK:
        if vol.device is not None and _device_binds(vol.device):
            raise FailedPrecondition(f"volume {vol.id} is still published; unpublish it first")
        pool.detach(vol.name)
        return
    current = mounts.mount_at(staging)
    if current is not None and vol.device is not None and current.source == vol.device:
        pool.unmount(vol.name, staging)
    fresh = pool.get_volume(vol.name)
    if not fresh.mounts:
        pool.detach(vol.name)


def _device_binds(device: str) -> list[Mount]:
    """Mounts of a device node itself (block publications): devtmpfs binds of /loopN."""
    leaf = "/" + os.path.basename(device)
    return [e for e in mounts.mounts() if e.fstype == "devtmpfs" and e.root == leaf]


@_os_errors
def publish(pool: Pool, vol: Volume, req: PublishRequest) -> None:
    cap = req.capability
    _check_kind(vol, cap.block, cap.fs_type)
    readonly = req.readonly or cap.mode in READ_ONLY_MODES
    table = mounts.mounts()
    if cap.block:
        _publish_block(vol, req, readonly, table)
        return
    if req.staging_path is None:
        raise FailedPrecondition("staging_target_path is required")
    staged = mounts.mount_at(req.staging_path, table)
    if staged is None or vol.device is None or staged.source != vol.device:
        raise FailedPrecondition(f"volume {vol.id} is not staged at {req.staging_path}")
    # the same target is answered before "exceeds capabilities", as the spec's table orders
    if mounts.bound(req.staging_path, req.target_path, readonly=readonly, entries=table):
        return
    others = [e for e in table if e.device == staged.device and e.target != str(req.staging_path)]
    if cap.mode not in MANY_TARGET_MODES and others:
        raise FailedPrecondition(
            f"{cap.mode.value} volume {vol.id} is already published at {others[0].target}"
        )
    req.target_path.mkdir(parents=True, exist_ok=True)
    mounts.bind(req.staging_path, req.target_path, readonly=readonly)


def _publish_block(vol: Volume, req: PublishRequest, readonly: bool, table: list[Mount]) -> None:
    if vol.device is None:
        raise FailedPrecondition(f"block volume {vol.id} is not staged (no device attached)")
    if mounts.bound(vol.device, req.target_path, readonly=readonly, entries=table):
        return
    binds = _device_binds(vol.device)
    if req.capability.mode not in MANY_TARGET_MODES and binds:
        raise FailedPrecondition(
            f"{req.capability.mode.value} volume {vol.id} is already published at {binds[0].target}"
        )
    if binds and device_readonly(vol.device) != readonly:
        raise FailedPrecondition(
            f"block volume {vol.id} is published {'read-only' if not readonly else 'read-write'} "
            "elsewhere; a device is either read-only or not"
        )
    set_device_readonly(vol.device, readonly)
    req.target_path.parent.mkdir(parents=True, exist_ok=True)
    if req.target_path.is_dir():
        raise AlreadyExists(f"{req.target_path} is a directory; a block target must be a file")
    req.target_path.touch(mode=0o600, exist_ok=True)
    mounts.bind(vol.device, req.target_path, readonly=readonly)


@_os_errors
def unpublish(vol: Volume, target: Path) -> None:
    entry = mounts.mount_at(target)
    if entry is not None and not _is_ours(vol, entry) and vol.device is not None:
        raise FailedPrecondition(f"{target} holds something other than volume {vol.id}")
    mounts.unmount(target)  # every stacked mount, e.g. from an earlier crash
    remove_target(target)
    if vol.mode is VolumeMode.BLOCK and vol.device is not None and not _device_binds(vol.device):
        set_device_readonly(vol.device, False)  # the last reader is gone


def _is_ours(vol: Volume, entry: Mount) -> bool:
    if vol.device is None:
        return False
    if vol.mode is VolumeMode.BLOCK:
        return entry.fstype == "devtmpfs" and entry.root == "/" + os.path.basename(vol.device)
    return entry.source == vol.device


def stats(vol: Volume, path: Path) -> VolumeStats:
    entry = mounts.mount_at(path)
    missing = not vol.path.exists()
    # with its backing file gone the engine can no longer name the volume's loop device;
    # whatever is mounted at the path is then reported, flagged abnormal
    if entry is None or not (_is_ours(vol, entry) or missing):
        raise NotFound(f"volume {vol.id} is not mounted at {path}")
    message = f"backing file {vol.path} is missing" if missing else ""
    if vol.mode is VolumeMode.BLOCK:
        return VolumeStats(
            bytes_total=vol.size, bytes_used=0, bytes_available=0, abnormal=missing, message=message
        )
    try:
        st = os.statvfs(path)
    except OSError as exc:  # e.g. EIO from a filesystem shut down after I/O errors
        return VolumeStats(
            bytes_total=vol.size, bytes_used=0, bytes_available=0, abnormal=True,
            message=f"statvfs {path} failed: {exc.strerror or exc}",
        )
    return VolumeStats(
        bytes_total=st.f_blocks * st.f_frsize,
        bytes_used=(st.f_blocks - st.f_bfree) * st.f_frsize,
        bytes_available=st.f_bavail * st.f_frsize,
        inodes_total=st.f_files,
        inodes_used=st.f_files - st.f_ffree,
        inodes_available=st.f_favail,
        abnormal=missing,
        message=message,
    )
