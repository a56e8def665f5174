"""Make a volume that is still attached or mounted read-only: the seal of a fenced copy.

When a replicated volume fails over while its old primary's node was only partitioned, the
old copy may still be staged there with a workload writing to it (docs/design/replication.md
§8.1). Once that copy is known to be stale, every further write on it must fail at once,
so the surviving writer sees an error instead of going on with data the cluster has already
given up on:

1. the loop device is set read-only (``blockdev --setro``, the ``BLKROSET`` ioctl): a
   block-mode workload's ``write`` fails (``EPERM``) and nothing can open it for writing
   again. The kernel does **not** refuse a mounted filesystem's own writes on a read-only
   device (it only warns), hence step 2;
2. the filesystem on it is remounted read-only (``mount -o remount,ro`` on one of its
   mounts: the superblock turns read-only, so every mount of it answers ``EROFS``). The
   kernel refuses that (``EBUSY``) while a process holds a file open for writing — the
   surviving writer, typically — and then the filesystem is **shut down**
   (``FS_IOC_SHUTDOWN``, log flushed first: XFS and ext4), after which every read and
   write on it fails with ``EIO`` until it is unmounted. A filesystem that cannot be shut
   down (btrfs on current kernels) stays writable until its writers close their files; the
   caller retries the seal (it is idempotent: a shut-down filesystem, which the mount table
   cannot tell from a live one, is simply shut down again, which the kernel ignores).

The read-only flag of a loop device outlives its detach (the next user of ``/dev/loopN``
would inherit it), so :func:`statehold.engine.loop.attach` clears it on every read-write
attach.

From ``linux/fs.h``: ``FS_IOC_SHUTDOWN = _IOR('X', 125, __u32)`` = 0x8004587D (direction
read (2 << 30), size 4 (<< 16), type 'X' = 0x58 (<< 8), number 125);
``FS_SHUTDOWN_FLAGS_LOGFLUSH = 1``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from statehold.engine import mounts
from statehold.errors import CommandError, StateholdError
from statehold.runner import run

log = logging.getLogger("statehold.engine")

FS_IOC_SHUTDOWN = 0x8004587D
FS_SHUTDOWN_FLAGS_LOGFLUSH = 1
SYS_BLOCK = Path("/sys/block")

READONLY = "readonly"     # remounted read-only: writes fail with EROFS
SHUTDOWN = "shutdown"     # shut down (a writer held a file open): I/O fails with EIO
WRITABLE = "writable"     # neither was possible (btrfs with a file open for writing)
NO_FILESYSTEM = "none"    # not mounted (a block-mode volume, or attached only)


@dataclass(frozen=True, slots=True)
class Seal:
    """What sealing left: the device read-only or not, and the filesystem's state."""

    device: str | None
    device_readonly: bool
    filesystem: str           # READONLY | SHUTDOWN | WRITABLE | NO_FILESYSTEM
    targets: tuple[str, ...]  # the mounts of the device
    filesystem_id: str = ""   # its "major:minor"

    @property
    def complete(self) -> bool:
        """No write can reach the volume through this node any more."""
        return (self.device is None or self.device_readonly) and self.filesystem != WRITABLE


def device_readonly(device: str) -> bool:
    """The kernel's read-only flag of a block device (``/sys/block/<dev>/ro``)."""
    try:
        return (SYS_BLOCK / device.removeprefix("/dev/") / "ro").read_text().strip() == "1"
    except OSError:
        return run(["blockdev", "--getro", device], timeout=30).stdout.strip() == "1"


def set_device_readonly(device: str, readonly: bool = True) -> None:
    """``blockdev --setro`` (or ``--setrw``) on ``device``."""
    run(["blockdev", "--setro" if readonly else "--setrw", device], timeout=30)


def shutdown(target: str) -> bool:
    """Shut the filesystem mounted at ``target`` down (log flushed first); False when the
    filesystem has no such operation."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EIO:  # shut down already: even its root cannot be opened
            return True
        raise StateholdError(f"cannot open the filesystem at {target}: {exc}") from exc
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_SHUTDOWN_FLAGS_LOGFLUSH))
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise StateholdError(f"cannot shut down the filesystem at {target}: {exc}") from exc
    finally:
        os.close(fd)
    return True


def seal(device: str | None) -> Seal:
    """Make everything on ``device`` read-only (see the module docstring); idempotent."""
    if device is None:
        return Seal(None, False, NO_FILESYSTEM, ())
    if not device_readonly(device):
        set_device_readonly(device)
    entries = [m for m in mounts.mounts() if m.source == device]
    targets = tuple(m.target for m in entries)
    if not entries:
        return Seal(device, device_readonly(device), NO_FILESYSTEM, targets)
    fs_id = entries[0].device
    if "ro" in entries[0].super_options:
        return Seal(device, device_readonly(device), READONLY, targets, fs_id)
    # the staging mount (the filesystem's root) rather than a bind of a directory in it
    target = next((m.target for m in entries if m.root == "/"), entries[0].target)
    try:
        run(["mount", "-o", "remount,ro", target], timeout=mounts.TIMEOUT)
        state = READONLY
    except CommandError as exc:  # EBUSY: a file is open for writing
        log.info("remount read-only refused target=%s error=%s; shutting the filesystem down",
                 target, exc)
        state = SHUTDOWN if shutdown(target) else WRITABLE
    result = Seal(device, device_readonly(device), state, targets, fs_id)
    level = logging.ERROR if state == WRITABLE else logging.WARNING
    log.log(level, "volume sealed device=%s filesystem=%s targets=%s", device, state,
            ",".join(targets))
    return result
