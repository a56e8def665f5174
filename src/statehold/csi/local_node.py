"""Node-side operations on local engine volumes: stage, publish, stats.

Idempotency comes from the kernel's mount table (the engine's mount toolkit,
``statehold.engine.mounts``), never from memory, so a restarted driver answers a retried call
correctly.

* Filesystem volume: stage = engine ``mount`` (loop attach, mkfs if blank, grow if pending) at
  a private mount point of the driver, then a bind of that mount onto the staging directory
  through its descriptor, then the private mount goes (the staging mount keeps the
  filesystem); publish = bind of the staging mount onto the target directory.
* Block volume: stage = engine ``attach``; publish = bind of the loop device node onto a
  regular file at the target path (what kubelet expects for ``volumeDevices``).

Every path the CO names is opened beneath its allowed root and used through descriptors
(:mod:`statehold.csi.mounts`, :mod:`statehold.engine.safepath`). A mount is this volume's
when the kernel says the loop device behind it is backed by the volume's file
(:func:`owned`) — whether or not the volume is attached right now, so it holds after a
reboot. Unstage reads the kernel log for the volume's device: a filesystem that failed on the
way down is reported, and recorded (:mod:`statehold.csi.conditions`) until repaired.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from statehold.csi import mounts as node_mounts
from statehold.csi.backend import AccessMode, PublishRequest, StageRequest, VolumeStats
from statehold.csi.conditions import Conditions
from statehold.csi.mounts import device_readonly, set_device_readonly
from statehold.engine import capacity, fshealth, mounts, safepath
from statehold.engine.mounts import Mount
from statehold.engine.pool import Pool
from statehold.engine.safepath import Handle
from statehold.engine.types import Volume, VolumeMode
from statehold.errors import (
    AlreadyExists,
    CommandError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StateholdError,
)
from statehold.replication.state import Role, StateStore

log = logging.getLogger("statehold.csi")

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


@dataclass(frozen=True, slots=True)
class NodeSite:
    """Where the node half works: the allowed roots, the driver's private mount points
    (``<home>/csi/stage``) and its condition records."""

    roots: tuple[Path, ...]
    workdir: Path
    conditions: Conditions

    def private(self, vol: Volume) -> Path:
        return self.workdir / vol.pool / vol.name


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


def owned(vol: Volume) -> node_mounts.Owned:
    """The test for "this mount is volume ``vol``'s": the loop device behind it (the device
    node bound there, or the device of the filesystem mounted there) is backed by exactly
    the volume's file, and it is the right kind (a device node for a block volume)."""
    backing = os.path.abspath(vol.path)

    def test(handle: Handle, entry: Mount) -> bool:
        if mounts.backing_of(handle, entry) != backing:
            return False
        return mounts.shows_device(handle) == (vol.mode is VolumeMode.BLOCK)

    return test


# -- stage / unstage ---------------------------------------------------------------------------
@_os_errors
def stage(pool: Pool, vol: Volume, req: StageRequest, site: NodeSite) -> None:
    cap = req.capability
    _check_kind(vol, cap.block, cap.fs_type)
    if cap.block:
        pool.attach(vol.name)
        return
    refuse_until_repaired(vol, site.conditions)
    readonly = "ro" in cap.mount_flags
    located = safepath.locate(req.staging_path, site.roots)
    parent = safepath.open_parent(located, create=True)
    assert parent is not None
    with parent:
        current = safepath.lookup(parent, located.name)
        try:
            if current is not None and safepath.is_mountpoint(parent, current):
                # the spec wants ALREADY_EXISTS for a staging path holding anything else,
                # and for this volume staged with another read-only flag
                entry = mounts.entry_of(current)
                if entry is None or not owned(vol)(current, entry):
                    held = entry.source if entry is not None else "another mount"
                    raise AlreadyExists(f"{req.staging_path} already holds {held}, not volume {vol.id}")
                if readonly != entry.readonly:
                    raise AlreadyExists(
                        f"volume {vol.id} is staged at {req.staging_path} with readonly={entry.readonly}")
                return
            private = str(site.private(vol))
            elsewhere = [t for t in vol.mounts if t not in (str(req.staging_path), private)]
            if elsewhere:
                raise FailedPrecondition(f"volume {vol.id} is already staged at {', '.join(elsewhere)}")
            if current is None:
                current = safepath.make_directory(parent, located.name, vol.id)
            elif not stat.S_ISDIR(current.stat().st_mode):
                raise FailedPrecondition(f"{req.staging_path} is not a directory; it is left as it is")
            _mount_through_private(pool, vol, cap.mount_flags, current, site)
        finally:
            if current is not None:
                current.close()


def _mount_through_private(pool: Pool, vol: Volume, flags: tuple[str, ...], target: Handle,
                           site: NodeSite) -> None:
    """The engine mounts (and formats, and grows) the volume at the driver's private mount
    point; that mount is bound onto the staging descriptor; the private mount then goes."""
    private = site.private(vol)
    private.mkdir(parents=True, exist_ok=True)
    try:
        pool.mount(vol.name, private, options=flags)
    except CommandError as exc:
        if not flags:
            raise
        # the CO's mount flags are the likeliest culprit; the spec calls that a bad argument.
        # The flags themselves are not repeated: the spec says they may hold secrets.
        raise InvalidArgument(f"mount with the requested mount_flags failed: {exc.stderr[-300:]}") from exc
    bound = False
    try:
        with safepath.open_trusted(private, directory=True) as source:
            mounts.bind_at(source, target)
        bound = True
    finally:
        pool.unmount(vol.name, private)  # the staging mount keeps the filesystem mounted
        with contextlib.suppress(OSError):
            private.rmdir()
        if not bound and not pool.get_volume(vol.name).mounts:
            pool.detach(vol.name)


@_os_errors
def unstage(pool: Pool, vol: Volume, staging: Path, site: NodeSite) -> None:
    if vol.mode is VolumeMode.BLOCK:
        if vol.device is not None and _device_binds(vol.device):
            raise FailedPrecondition(f"volume {vol.id} is still published; unpublish it first")
        pool.detach(vol.name)
        return
    device = vol.device
    located = safepath.locate(staging, site.roots)
    parent = safepath.open_parent(located)
    unmounted = 0
    if parent is not None:
        with parent:
            unmounted = node_mounts.peel(parent, located.name, owned(vol), vol.id)
            safepath.remove_created(parent, located.name, vol.id)
    private = site.private(vol)
    if mounts.mount_at(private) is not None:  # left by a crash in the middle of a stage
        pool.unmount(vol.name, private)
    fresh = pool.get_volume(vol.name)
    if fresh.mounts:
        return  # still published or mounted elsewhere: the filesystem is still up
    pool.detach(vol.name)
    if unmounted and device is not None and not _fenced(pool, vol):
        _report_failure(vol, device, staging, site.conditions)
    refuse_until_repaired(vol, site.conditions)


def _fenced(pool: Pool, vol: Volume) -> bool:
    """A replicated copy fenced by a newer epoch (stale) had its filesystem shut down on
    purpose, so that a surviving writer stopped (engine/readonly.py); it is resynced before
    it serves again, so that shutdown is not a failure to record."""
    try:
        return StateStore(pool.meta_dir).load(vol.name).role is Role.STALE
    except StateholdError:
        return False


def _report_failure(vol: Volume, device: str, staging: Path, conditions: Conditions) -> None:
    """The filesystem just left this node: if the kernel says it failed since it was
    mounted (e.g. shut down by the unmount itself), record that and answer so."""
    failed, _lines = fshealth.kernel_trouble(device)
    if not failed:
        return
    fs = vol.fs.value if vol.fs is not None else ""
    _clean, verdict = fshealth.check(fs, vol.path)
    message = (
        f"the {fs} filesystem of volume {vol.id} failed while it was staged at {staging} "
        f"(kernel, {os.path.basename(device)}: {' | '.join(failed[-3:])}); read-only check: "
        f"{verdict}. It stays abnormal, and is not staged again, until a read-only check "
        f"passes: repair {vol.path} offline"
    )
    conditions.put(vol, message, str(staging))
    log.error("volume filesystem failed volume=%s device=%s", vol.id, device)
    raise FailedPrecondition(message)


def refuse_until_repaired(vol: Volume, conditions: Conditions) -> None:
    """A recorded failure holds (FailedPrecondition) until the filesystem's read-only
    checker passes on the volume; then the record goes."""
    damage = conditions.get(vol)
    if damage is None:
        return
    if vol.device is not None and mounts.targets_of(vol.device):
        raise FailedPrecondition(damage.message)
    fs = vol.fs.value if vol.fs is not None else ""
    clean, verdict = fshealth.check(fs, vol.device or vol.path)
    if not clean:
        raise FailedPrecondition(f"{damage.message} (still: {verdict})")
    conditions.clear(vol)
    log.info("volume filesystem repaired volume=%s", vol.id)


def _device_binds(device: str) -> list[Mount]:
    """Mounts of a device node itself (block publications): devtmpfs binds of /loopN."""
    leaf = "/" + os.path.basename(device)
    return [e for e in mounts.mounts() if e.fstype == "devtmpfs" and e.root == leaf]


# -- publish / unpublish -------------------------------------------------------------------------
@_os_errors
def publish(pool: Pool, vol: Volume, req: PublishRequest, site: NodeSite) -> None:
    cap = req.capability
    _check_kind(vol, cap.block, cap.fs_type)
    readonly = req.readonly or cap.mode in READ_ONLY_MODES
    if cap.block:
        _publish_block(vol, req, readonly, site)
        return
    if req.staging_path is None:
        raise FailedPrecondition("staging_target_path is required")
    with _staged(vol, req.staging_path, site) as (staged, staged_entry), \
            node_mounts.target(req.target_path, site.roots) as (parent, name, current):
        # the same target is answered before "exceeds capabilities", as the spec's table orders
        if mounts.bound_at(staged, current, parent, readonly=readonly):
            return
        private = str(site.private(vol))
        others = [e for e in mounts.mounts() if e.device == staged_entry.device
                  and e.mount_id != staged_entry.mount_id and e.target != private]
        if cap.mode not in MANY_TARGET_MODES and others:
            raise FailedPrecondition(
                f"{cap.mode.value} volume {vol.id} is already published at {others[0].target}")
        node_mounts.bind_onto(staged, parent, name, current, vol.id, readonly=readonly)


@contextlib.contextmanager
def _staged(vol: Volume, staging: Path, site: NodeSite) -> Iterator[tuple[Handle, Mount]]:
    """The volume's staging mount, opened: FailedPrecondition unless it is there."""
    located = safepath.locate(staging, site.roots)
    with safepath.opened(located) as (parent, staged):
        entry = None
        if parent is not None and staged is not None and safepath.is_mountpoint(parent, staged):
            entry = mounts.entry_of(staged)
        if staged is None or entry is None or not owned(vol)(staged, entry):
            raise FailedPrecondition(f"volume {vol.id} is not staged at {staging}")
        yield staged, entry


def _publish_block(vol: Volume, req: PublishRequest, readonly: bool, site: NodeSite) -> None:
    if vol.device is None:
        raise FailedPrecondition(f"block volume {vol.id} is not staged (no device attached)")
    with safepath.open_trusted(Path(vol.device), directory=False) as dev, \
            node_mounts.target(req.target_path, site.roots) as (parent, name, current):
        if mounts.loop_backing(dev.stat().st_rdev) != os.path.abspath(vol.path):
            raise FailedPrecondition(f"{vol.device} is no longer volume {vol.id}'s device")
        if mounts.bound_at(dev, current, parent, readonly=readonly):
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
        if current is not None and stat.S_ISDIR(current.stat().st_mode):
            raise AlreadyExists(f"{req.target_path} is a directory; a block target must be a file")
        set_device_readonly(vol.device, readonly)
        node_mounts.bind_onto(dev, parent, name, current, vol.id, readonly=readonly, file=True)


@_os_errors
def unpublish(vol: Volume, target: Path, site: NodeSite) -> None:
    node_mounts.unpublish(target, site.roots, vol.id, owned(vol))
    if vol.mode is VolumeMode.BLOCK and vol.device is not None and not _device_binds(vol.device):
        set_device_readonly(vol.device, False)  # the last reader is gone


# -- stats ---------------------------------------------------------------------------------------
def _is_ours(vol: Volume, entry: Mount) -> bool:
    if vol.device is None:
        return False
    if vol.mode is VolumeMode.BLOCK:
        return entry.fstype == "devtmpfs" and entry.root == "/" + os.path.basename(vol.device)
    return entry.source == vol.device


def stats(vol: Volume, path: Path, conditions: Conditions,
          space: capacity.Space | None = None) -> VolumeStats:
    """Usage and condition of a volume staged or published at ``path``. ``space``, the
    pool's usage now, makes the volume abnormal while the pool is full, or above its
    critical mark once a write to this volume failed for lack of space."""
    entry = mounts.mount_at(path)
    missing = not vol.path.exists()
    damage = conditions.get(vol)
    # with its backing file gone the engine can no longer name the volume's loop device;
    # whatever is mounted at the path is then reported, flagged abnormal
    if entry is None or not (_is_ours(vol, entry) or missing):
        if damage is not None and damage.staging_path == str(path):
            # where it was staged when its filesystem failed: the condition is the answer
            return VolumeStats(bytes_total=vol.size, bytes_used=0, bytes_available=0,
                               abnormal=True, message=damage.message)
        raise NotFound(f"volume {vol.id} is not mounted at {path}")
    problems = [f"backing file {vol.path} is missing"] if missing else []
    if damage is not None:
        problems.append(damage.message)
    lines: list[str] = []
    if vol.device is not None and vol.mode is VolumeMode.FILESYSTEM:
        failed, lines = fshealth.kernel_trouble(vol.device)
        if failed:
            problems.append(f"the kernel reports {os.path.basename(vol.device)}: {failed[-1]}")
    full = capacity.volume_problem(space, lines) if space is not None else None
    if full is not None:
        problems.append(full)
    message = "; ".join(problems)
    if vol.mode is VolumeMode.BLOCK:
        return VolumeStats(
            bytes_total=vol.size, bytes_used=0, bytes_available=0, abnormal=bool(problems), message=message
        )
    try:
        st = os.statvfs(path)
    except OSError as exc:  # e.g. EIO from a filesystem shut down after I/O errors
        return VolumeStats(
            bytes_total=vol.size, bytes_used=0, bytes_available=0, abnormal=True,
            message="; ".join([*problems, f"statvfs {path} failed: {exc.strerror or exc}"]),
        )
    return VolumeStats(
        bytes_total=st.f_blocks * st.f_frsize,
        bytes_used=(st.f_blocks - st.f_bfree) * st.f_frsize,
        bytes_available=st.f_bavail * st.f_frsize,
        inodes_total=st.f_files,
        inodes_used=st.f_files - st.f_ffree,
        inodes_available=st.f_favail,
        abnormal=bool(problems),
        message=message,
    )
