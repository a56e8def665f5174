"""Mounting a share (native style): once per node, shared by every volume on it.

A :class:`ShareSpec` names a share the way ``mount`` does (source, filesystem type,
options). The :class:`ShareMounter` mounts it at ``<state>/shares/<key>`` where ``key`` is
a digest of the spec, so two StorageClasses naming the same share share one mount. Users
(volume ids staged on this node) are counted in ``<key>.json``; the share is unmounted when
the last one leaves. The kernel's mount table, not the file, says whether it is mounted:
after a crash the count is trusted, the mount state is re-read.

SMB (``fsType: cifs``): the kernel's ``cifs`` client, source ``//server/share[/dir]``. The
user name and password never appear in options or on a command line: they come from a
credentials file (``username=``/``password=``/``domain=`` lines, what ``mount.cifs``
reads), e.g. a Kubernetes Secret mounted into the node plugin with ``defaultMode: 0400``;
the StorageClass names it (``credentialsFile``) and the mount gets ``credentials=<file>``.
A file others may read is refused. (This host's kernel has no cifs module: the option
building is tested, the mount itself is not; docs/install.md.)

Errors: nothing listening at the server → Unavailable (checked with a TCP connect before
``mount``, so a dead server fails in seconds and leaves no mount or directory behind);
a filesystem this node has no client for → FailedPrecondition; any other refusal by
``mount`` (wrong options, no such export) → InvalidArgument with mount's own words.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from statehold.engine.mounts import mount_at, unmount
from statehold.errors import CommandError, FailedPrecondition, InvalidArgument, Unavailable
from statehold.runner import run
from statehold.shared.metadata import locked, write_json

log = logging.getLogger("statehold.shared")
FS_TYPES = {"glusterfs": "glusterfs", "nfs": "nfs", "nfs4": "nfs4", "cephfs": "ceph", "ceph": "ceph",
            "cifs": "cifs", "smb": "cifs"}
DEFAULT_PORTS = {"glusterfs": (24007,), "nfs": (2049,), "nfs4": (2049,), "ceph": (3300, 6789),
                 "cifs": (445,)}
FORBIDDEN_OPTIONS = frozenset({"bind", "rbind", "remount", "move", "make-shared", "make-private"})
SECRET_OPTIONS = frozenset({"user", "username", "pass", "password", "password2", "credentials", "cred"})
"""cifs options that would put a credential (or its file) in the options: refused; the
credentials come only from ``credentialsFile``."""
CIFS_DEFAULTS = (("dir_mode", "0777"), ("file_mode", "0777"), ("mfsymlinks", None))
"""Added unless given: pods run as arbitrary uids, and a share without POSIX extensions
shows every file with the mount's modes (0755 by default: only root could write);
``mfsymlinks`` stores symlinks as Minshall+French files where the server has none."""
_CIFS_SOURCE = re.compile(r"^//[A-Za-z0-9_.:\[\]-]+/[^/\s,]+(/[^\s,]*)?$")
_OPTION = re.compile(r"^[A-Za-z0-9_.:/=@+-]+$")
MOUNT_TIMEOUT = 60.0

GLUSTER_CONSISTENT_OPTIONS = (
    ("performance.stat-prefetch", "off"),
    ("performance.quick-read", "off"),
    ("performance.io-cache", "off"),
    ("performance.read-ahead", "off"),
    ("performance.open-behind", "off"),
)
"""GlusterFS volume options (``gluster volume set``) under which a write through one client
is seen by the next open on every other client. With the defaults, client-side caches
(md-cache, quick-read, io-cache) serve another node's stale copy for up to their timeout,
and a file replaced by rename can return ESTALE until the lookup is redone. Measured on
GlusterFS 10.3: with these options, 0 of 20 cross-client re-reads were stale; without, 19."""
PROBE_TIMEOUT = 3.0
FAILED_MOUNT_SETTLE = 1.0


@dataclass(frozen=True, slots=True)
class ShareSpec:
    """A share to mount: ``mount -t <fstype> -o <options> <source> <target>``."""

    source: str
    fstype: str
    options: tuple[str, ...] = field(default=())
    credentials: str = ""            # cifs: the credentials file (a path, never its content)

    @classmethod
    def parse(cls, source: str, fstype: str, options: str | Sequence[str] = (),
              credentials: str = "") -> ShareSpec:
        """Validate StorageClass-style parameters; InvalidArgument with the reason."""
        kernel_type = FS_TYPES.get(fstype)
        if kernel_type is None:
            raise InvalidArgument(f"fsType {fstype!r} is not one of {sorted(FS_TYPES)}")
        if kernel_type == "cifs":
            source = _cifs_source(source)
        elif not source or ":" not in source or any(c.isspace() for c in source):
            raise InvalidArgument(f"share source {source!r} is not server:/path")
        opts = tuple(o.strip() for o in options.split(",")) if isinstance(options, str) else tuple(options)
        opts = tuple(o for o in opts if o)
        for opt in opts:
            if not _OPTION.match(opt):
                raise InvalidArgument(f"mount option {opt!r} has characters a mount option cannot have")
            name = opt.split("=", 1)[0]
            if name in FORBIDDEN_OPTIONS:
                raise InvalidArgument(f"mount option {opt!r} is not allowed for a share")
            if kernel_type == "cifs" and name in SECRET_OPTIONS:
                raise InvalidArgument(
                    f"mount option {name!r} is refused: SMB credentials come from a file "
                    "(StorageClass parameter credentialsFile, e.g. a mounted Secret), never "
                    "from mountOptions")
        if credentials:
            if kernel_type != "cifs":
                raise InvalidArgument(f"credentialsFile is for fsType cifs, not {fstype}")
            path = Path(credentials)
            if not path.is_absolute() or ".." in path.parts or not _OPTION.match(credentials):
                raise InvalidArgument(f"credentialsFile {credentials!r} must be an absolute path "
                                      "without '..', commas or spaces")
        return cls(source=source, fstype=kernel_type, options=opts, credentials=credentials)

    @property
    def key(self) -> str:
        described: list[object] = [self.source, self.fstype, sorted(self.options)]
        if self.credentials:  # another user of the same share is another mount
            described.append(self.credentials)
        return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]

    def mount_options(self, *, readonly: bool = False) -> list[str]:
        """The ``-o`` list: the class's options, then (cifs) the defaults it did not set and
        the credentials file, then ``ro`` for a read-only mount."""
        opts = list(self.options)
        if self.fstype == "cifs":
            given = {o.split("=", 1)[0] for o in opts}
            opts += [name if value is None else f"{name}={value}"
                     for name, value in CIFS_DEFAULTS if name not in given]
            if self.credentials:
                opts.append(f"credentials={self.credentials}")
            elif "guest" not in given:
                opts.append("guest")  # no credentials named: never let mount.cifs prompt
        return opts + (["ro"] if readonly else [])

    def servers(self) -> list[tuple[str, int]]:
        """(host, port) pairs to probe, from the source and port options."""
        if self.fstype == "cifs":
            hosts_part = self.source[2:].split("/", 1)[0]
        elif ":/" in self.source:
            hosts_part = self.source.rsplit(":/", 1)[0]
        else:
            hosts_part = self.source.split(":")[0]
        ports = list(DEFAULT_PORTS.get(self.fstype, ()))
        for opt in self.options:
            name, _, value = opt.partition("=")
            if name in ("volfile-server-port", "port") and value.isdigit():
                ports = [int(value)]
        result: list[tuple[str, int]] = []
        for host in hosts_part.split(","):
            host, _, port = host.partition(":")
            if host:
                result.extend([(host, int(port))] if port.isdigit() else [(host, p) for p in ports])
        return result


def _cifs_source(source: str) -> str:
    """``//server/share[/dir]``; ``server:/share`` (how ``server`` + ``share`` parameters
    arrive) is turned into it."""
    if ":/" in source and not source.startswith("//"):
        server, _, share = source.partition(":/")
        source = f"//{server}/{share}"
    if not _CIFS_SOURCE.match(source) or "/../" in f"{source}/":
        raise InvalidArgument(f"SMB share source {source!r} is not //server/share[/path]")
    return source


def check_credentials(spec: ShareSpec) -> None:
    """The credentials file exists, is a file, and only its owner may read it (a Secret
    volume with ``defaultMode: 0400``); FailedPrecondition otherwise, before ``mount``."""
    if not spec.credentials:
        return
    try:
        st = os.stat(spec.credentials)  # a Secret's file is a symlink into ..data: follow it
    except OSError as exc:
        raise FailedPrecondition(
            f"credentials file {spec.credentials} for {spec.source}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise FailedPrecondition(f"credentials file {spec.credentials} is not a regular file")
    if st.st_mode & 0o077:
        raise FailedPrecondition(
            f"credentials file {spec.credentials} may be read by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); mount its Secret with defaultMode: 0400")


def mount_argv(spec: ShareSpec, target: Path, *, readonly: bool = False) -> list[str]:
    """The ``mount`` command line for ``spec`` at ``target``: no credential in it, only
    the credentials file's path."""
    options = spec.mount_options(readonly=readonly)
    return ["mount", "-t", spec.fstype, *(["-o", ",".join(options)] if options else []),
            spec.source, str(target)]


def probe(spec: ShareSpec, timeout: float = PROBE_TIMEOUT) -> None:
    """Unavailable unless at least one server of the share accepts a TCP connection."""
    servers = spec.servers()
    errors = []
    for host, port in servers:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
    raise Unavailable(f"share {spec.source} is unreachable ({'; '.join(errors) or 'no server'})")


def mount_share(spec: ShareSpec, target: Path, *, readonly: bool = False) -> None:
    """Mount ``spec`` at ``target`` (created if needed); already mounted there is fine.

    A mount whose client died (FUSE: ``ENOTCONN``, "transport endpoint is not connected")
    is still in the mount table but useless: it is unmounted and mounted again."""
    if mount_at(target) is not None:
        if _alive(target):
            return
        log.warning("share mount is dead, remounting target=%s source=%s", target, spec.source)
        unmount(target, remove_dir=False)
    check_credentials(spec)
    probe(spec)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    argv = mount_argv(spec, target, readonly=readonly)
    try:
        run(argv, timeout=MOUNT_TIMEOUT)
    except CommandError as exc:
        _clean_failed_mount(target, created)
        text = exc.stderr.lower()
        if exc.code == -1:
            raise Unavailable(f"mount of {spec.source} timed out") from exc
        if any(m in text for m in ("unknown filesystem type", "helper program", "no such device",
                                   "not supported by the system")) \
                or exc.code == 127:
            raise FailedPrecondition(f"this node cannot mount {spec.fstype}: {exc.stderr}") from exc
        raise InvalidArgument(
            f"mount -t {spec.fstype} {spec.source} refused (check source and mountOptions): {exc.stderr}"
        ) from exc
    if mount_at(target) is None:
        # mount.glusterfs can exit 0 when its client died right after starting.
        with contextlib.suppress(OSError):
            target.rmdir()
        raise InvalidArgument(f"mount -t {spec.fstype} {spec.source} did not produce a mount")


def _clean_failed_mount(target: Path, created: bool) -> None:
    """Leave nothing after a failed mount. A FUSE client that fails early (GlusterFS: no
    such volume) can leave its dead mount in the table for a moment after ``mount``
    returned; watch briefly and unmount it by its exact path."""
    deadline = time.monotonic() + FAILED_MOUNT_SETTLE
    while time.monotonic() < deadline:
        if mount_at(target) is not None:
            with contextlib.suppress(FailedPrecondition):
                unmount(target, remove_dir=False)
        time.sleep(0.1)
    unmount(target, remove_dir=False)  # still there: a real error, said so
    if created:
        with contextlib.suppress(OSError):
            target.rmdir()


def _alive(target: Path) -> bool:
    # statvfs always reaches the filesystem's server side; stat may be answered from cache.
    try:
        os.statvfs(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ESTALE):
            return False
        raise Unavailable(f"cannot stat {target}: {exc}") from exc
    return True


class ShareMounter:
    """Ref-counted native mounts of shares on this node, under ``state_dir/shares``."""

    def __init__(self, state_dir: Path) -> None:
        self.base = state_dir / "shares"

    def target(self, spec: ShareSpec) -> Path:
        return self.base / spec.key

    def _users_file(self, spec: ShareSpec) -> Path:
        return self.base / f"{spec.key}.json"

    def _read_users(self, spec: ShareSpec) -> set[str]:
        try:
            data = json.loads(self._users_file(spec).read_text())
            return {str(u) for u in data.get("users", [])}
        except (FileNotFoundError, ValueError):
            return set()

    def users(self, spec: ShareSpec) -> set[str]:
        return self._read_users(spec)

    def acquire(self, spec: ShareSpec, user: str) -> Path:
        """Mount the share if needed and count ``user``; returns the mount point."""
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / ".statehold").mkdir(exist_ok=True)
        with locked(self.base):
            target = self.target(spec)
            mount_share(spec, target)
            known = self._read_users(spec)
            if user in known:
                return target  # every controller call passes here: no rewrite, no fsync
            users = known | {user}
            write_json(self._users_file(spec), {"version": 1, "source": spec.source,
                                                "fstype": spec.fstype, "users": sorted(users)})
            return target

    def release(self, spec: ShareSpec, user: str) -> bool:
        """Forget ``user``; unmount when nobody is left. True when it was unmounted."""
        if not self.base.exists():
            return False
        (self.base / ".statehold").mkdir(exist_ok=True)
        with locked(self.base):
            users = self._read_users(spec) - {user}
            if users:
                write_json(self._users_file(spec), {"version": 1, "source": spec.source,
                                                    "fstype": spec.fstype, "users": sorted(users)})
                return False
            unmount(self.target(spec), remove_dir=True)
            with contextlib.suppress(FileNotFoundError):
                self._users_file(spec).unlink()
            return True
