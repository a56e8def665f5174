"""What the filesystem under a shared root can and cannot do, found when the root is opened.

Shared mode is written for POSIX semantics, and SMB breaks several of them. Each trait
below decides one piece of behaviour, so nothing assumes what the filesystem does not give:

* ``shared_locks`` -- whether ``flock(2)`` on the share excludes other nodes. Not on SMB
  through smbnetfs (measured: two mounts of one share both hold the same flock, and both
  "win" the same ``O_CREAT|O_EXCL``); a ``cifs`` mount's flock depends on the kernel and
  on ``nobrl``, which cannot be tested here, so every SMB root is treated alike. There the
  root's lock is a directory made with ``mkdir`` (one atomic create on the server; measured:
  no double winner in 200 races between two mounts), see :func:`metadata.locked`.
* ``atomic_replace`` -- whether ``rename`` over an existing file replaces it in one step.
  Not on SMB: libsmbclient renames without replacing, and on "exists" deletes the target
  and renames again (a reader in between finds no file), and the delete fails outright
  while another client has the target open (measured: EEXIST/EBUSY). Metadata files are
  then replaced in steps that never leave a reader without a whole file
  (:func:`metadata.write_json`).
* ``reports_size`` -- whether ``statvfs`` reports the filesystem's size. smbnetfs reports 0
  blocks (0 free), so free space is unknown there, never "0 bytes free".
* ``case_sensitive`` -- probed: a file created as ``Case-…`` is looked up as ``case-…``.
  Samba's default (and Azure Files) answers case-insensitively.
* ``symlinks`` -- probed: smbnetfs answers ``symlink`` with ENOSYS.

SMB is recognised by its mount type (``cifs``, ``smb3``, ``fuse.smbnetfs``); the two
answers that can be observed from one node (case, symlinks) are probed on every filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from statehold.engine.mounts import Mount, mount_of
from statehold.errors import Unavailable

SMB_FSTYPES = frozenset({"cifs", "smb3", "fuse.smbnetfs"})
"""Mount types of an SMB client: the kernel's (``cifs``, ``smb3``) and smbnetfs (FUSE)."""

NETWORK_FSTYPES = SMB_FSTYPES | frozenset({
    "nfs", "nfs4", "ceph", "fuse.ceph", "fuse.glusterfs", "glusterfs", "9p", "fuse.sshfs",
    "afs", "lustre", "fuse.s3fs", "fuse.rclone",
})
"""Filesystems served from another machine: never a node's own disk (Local PV discovery
skips them; their size, if reported at all, is not this node's)."""

@dataclass(frozen=True, slots=True)
class RootTraits:
    fstype: str
    shared_locks: bool = True
    atomic_replace: bool = True
    reports_size: bool = True
    case_sensitive: bool = True
    symlinks: bool = True

    @property
    def smb(self) -> bool:
        return self.fstype in SMB_FSTYPES


def kind_traits(entry: Mount | None) -> RootTraits:
    """What the mount type alone says (no probing)."""
    if entry is None:
        return RootTraits(fstype="")
    smb = entry.fstype in SMB_FSTYPES
    return RootTraits(fstype=entry.fstype, shared_locks=not smb, atomic_replace=not smb)


def probe(path: Path, scratch: Path, entry: Mount | None = None) -> RootTraits:
    """The traits of the filesystem holding ``path``; ``scratch`` (a directory on it that
    no pod sees, e.g. ``.statehold/tmp``) takes the probe files, removed afterwards."""
    if entry is None:
        entry = mount_of(path.resolve())
    base = kind_traits(entry)
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise Unavailable(f"cannot statfs {path}: {exc}") from exc
    stamp = f"{os.getpid()}.{time.time_ns()}"
    return RootTraits(fstype=base.fstype, shared_locks=base.shared_locks,
                      atomic_replace=base.atomic_replace, reports_size=st.f_blocks > 0,
                      case_sensitive=_case_sensitive(scratch, stamp), symlinks=_symlinks(scratch, stamp))


def _case_sensitive(scratch: Path, stamp: str) -> bool:
    upper = scratch / f"Case-Probe.{stamp}"
    try:
        upper.write_bytes(b"")
        try:
            return not os.path.lexists(scratch / f"case-probe.{stamp}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                upper.unlink()
    except OSError as exc:
        raise Unavailable(f"cannot probe {scratch}: {exc}") from exc


def _symlinks(scratch: Path, stamp: str) -> bool:
    link = scratch / f"symlink-probe.{stamp}"
    try:
        os.symlink("target", link)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.EACCES):
            return False
        raise Unavailable(f"cannot probe {scratch}: {exc}") from exc
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    return True
