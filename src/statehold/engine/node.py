"""The pools of one host, registered in ``<home>/node.json`` (see ``hostregistry``).

The registry only says where each pool's disks are (device paths or image files); all
other state lives inside the pool. Opening a Node re-attaches image files, mounts pools at
``<home>/pools/<name>`` and reconciles each one, so a restart (or a crash) ends with every
pool usable and consistent. A pool whose disks are missing is reported by ``errors`` and
raises Unavailable from ``pool(name)``; it never stops the other pools from opening.

Several processes of a host (the agent, the CSI node plugin, the node operator, a CLI) each
open the home's pools through a Node of their own and keep them open. Exporting a pool
therefore follows a release protocol (docs/design/pool-metadata.md, "Export"): the exporter
marks the pool ``exporting`` in the registry; every Node notices the mark before it hands
the pool out and in a periodic check of its own (a watcher thread), and lets go of the
pool; the exporter waits, bounded, until no process holds anything in it, then unmounts,
detaches and forgets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

from statehold.engine import (
    capacity,
    fs,
    groups,
    holders,
    lifecycle,
    loop,
    mounts,
    poolcreate,
    pooldisk,
    poolexport,
    subvolume,
)
from statehold.engine.hostregistry import (
    DIRECTORY,
    DISKS,
    HostRegistry,
    identity,
    is_exporting,
    spec_to_dict,
)
from statehold.engine.metadata import Metadata
from statehold.engine.names import validate_name
from statehold.engine.pool import LOCK_TIMEOUT, META_DB, META_DIR, SNAPSHOTS_DIR, VOLUMES_DIR, Pool
from statehold.engine.steps import FaultHook, no_fault
from statehold.engine.types import PoolSpec, RaidProfile
from statehold.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StateholdError,
    Unavailable,
)

log = logging.getLogger("statehold.engine.node")

WATCH_INTERVAL = 1.0
"""Seconds between two looks of a Node's watcher at the registry's export marks."""
EXPORT_WAIT = 20.0
"""Seconds an export waits for the other processes to let go of the pool (below the
agent client's 30 s deadline), before it fails Temporary naming those that did not."""
EXPORT_POLL = 0.1
"""Seconds between two looks of a waiting export at the pool's holders."""


def exporting_message(name: str) -> str:
    """What a caller asking for a pool being exported is told (FailedPrecondition)."""
    return (f"pool {name!r} is being exported from this node: it is not served here any "
            "more (an import of its disks keeps it instead)")


def _watch(ref: weakref.ref[Node], stop: threading.Event, interval: float) -> None:
    """A Node's periodic check: let go of pools marked exporting, even while idle. Holds
    the Node weakly, so a Node nobody closed still goes away (and so does this thread)."""
    while not stop.wait(interval):
        node = ref()
        if node is None:
            return
        try:
            node.follow_marks()
        except StateholdError as exc:  # an unreadable registry: say so, look again later
            log.warning("registry watch failed home=%s error=%s", node.home, exc)
        del node


class Node:
    """The pools of one host. Not a daemon: several short-lived Nodes may open one home."""

    def __init__(self, home: Path, *, fault_hook: FaultHook | None = None,
                 watch_interval: float = WATCH_INTERVAL) -> None:
        self.home = Path(os.path.abspath(home))
        self.registry = HostRegistry(self.home)
        self.fault_hook = fault_hook
        self._lock = threading.RLock()
        self._pools: dict[str, Pool] = {}
        self.errors: dict[str, str] = {}
        """Pools that are registered but could not be opened, with the reason."""
        self.exporting: dict[str, str] = {}
        """Pools registered but marked as being exported: not opened here (see the module)."""
        self.recovered: dict[str, list[str]] = {}
        """What recovery did per pool when this Node opened it."""
        self._depth = 0
        self._closed = False
        self._stop = threading.Event()
        self.home.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            self._recover_registry()
            for name, entry in self.registry.load()["pools"].items():
                if is_exporting(entry):
                    self.exporting[name] = exporting_message(name)
                    continue
                try:
                    pool = self._open(name, entry["sources"], entry.get("kind", DISKS))
                except StateholdError as exc:
                    log.error("pool unavailable pool=%s error=%s", name, exc)
                    self.errors[name] = str(exc)
                    continue
                try:
                    self.recovered[name] = self.recovered.get(name, []) + pool.reconcile()
                except StateholdError as exc:
                    log.error("pool recovery failed pool=%s error=%s", name, exc)
                    self.errors[name] = f"recovery failed: {exc}"
                    pool.close()
                    continue
                self._pools[name] = pool
        if watch_interval > 0:
            threading.Thread(target=_watch, args=(weakref.ref(self), self._stop, watch_interval),
                             name="statehold-pool-watch", daemon=True).start()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This Node's lock plus ``flock`` on ``<home>/.lock``: registry changes and the
        registry's own recovery are serialised with other processes on the same home, so
        one never rolls back another's pool creation in flight."""
        with self._lock:
            outer = self._depth == 0
            fd = -1
            if outer:
                fd = os.open(self.home / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                deadline = time.monotonic() + LOCK_TIMEOUT
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            os.close(fd)
                            raise Aborted(f"{self.home} is busy with another process") from None
                        time.sleep(0.05)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if outer:
                    os.close(fd)  # releases the flock

    # -- registry --------------------------------------------------------------------------
    @property
    def pools_dir(self) -> Path:
        return self.home / "pools"

    @property
    def disks_dir(self) -> Path:
        return self.home / "disks"

    # -- opening ---------------------------------------------------------------------------
    def _open(self, name: str, sources: Sequence[str], kind: str = DISKS) -> Pool:
        if kind == DIRECTORY:
            mountpoint = Path(sources[0])
            devices: list[str] = []
            if not (mountpoint / META_DIR / META_DB).exists():
                raise NotFound(f"directory pool {name!r}: no pool metadata in {mountpoint}")
        else:
            devices = pooldisk.attach_sources(sources)
            mountpoint = self.pools_dir / name
            pooldisk.mount(devices, mountpoint)
        db = Metadata(mountpoint / META_DIR / META_DB)
        record = db.pool()
        if record.name != name:
            db.close()
            raise FailedPrecondition(
                f"{', '.join(sources)} hold pool {record.name!r}, registered here as {name!r}")
        return Pool(name, mountpoint, db, fault_hook=self.fault_hook, devices=devices,
                    sources=sources, directory=kind == DIRECTORY)

    def follow_marks(self) -> bool:
        """Let go of the pools the registry marks as being exported, or no longer lists
        (each after the operation in flight on it); True when registered pools that are
        not marked are not open here yet (``refresh`` opens them). The watcher's check."""
        with self._lock:
            if self._closed:
                return False
            registered = self.registry.load()["pools"]
            marked = {n for n, e in registered.items() if is_exporting(e)}
            usable = set(registered) - marked
            doomed = [(n, self._pools.pop(n)) for n in sorted(self._pools) if n not in usable]
            for name in [n for n in self.errors if n not in usable]:
                del self.errors[name]
            self.exporting = {n: exporting_message(n) for n in sorted(marked)}
            missing = bool(usable - set(self._pools) - set(self.errors))
        for name, pool in doomed:
            why = self.exporting.get(name) or f"pool {name!r} was exported from this node"
            pool.release(why)
            log.info("pool released pool=%s reason=%s", name,
                     "exporting" if name in marked else "unregistered")
        return missing

    def refresh(self) -> None:
        """Follow registry changes made by other processes on this home (a CLI beside the
        agent): open pools registered since, let go of pools exported or being exported."""
        if not self.follow_marks():
            return
        with self._lock:
            if self._closed:
                return
            with self._exclusive():
                registered = self.registry.load()["pools"]
                for name, entry in registered.items():
                    if name in self._pools or name in self.errors or is_exporting(entry):
                        continue
                    try:
                        pool = self._open(name, entry["sources"], entry.get("kind", DISKS))
                    except StateholdError as exc:
                        self.errors[name] = str(exc)
                        continue
                    try:
                        self.recovered[name] = pool.reconcile()
                    except StateholdError as exc:
                        self.errors[name] = f"recovery failed: {exc}"
                        pool.close()
                        continue
                    self._pools[name] = pool

    def pools(self) -> list[Pool]:
        """The pools usable here now (the registry is read first: see ``refresh``)."""
        self.refresh()
        with self._lock:
            return [self._pools[n] for n in sorted(self._pools)]

    def pool(self, name: str) -> Pool:
        """The pool, after a look at the registry (``refresh``): NotFound if it is not
        registered here, FailedPrecondition while it is being exported, Unavailable when
        its disks could not be opened."""
        self.refresh()
        with self._lock:
            if name in self._pools:
                return self._pools[name]
            if name in self.exporting:
                raise FailedPrecondition(self.exporting[name])
            if name in self.errors:
                raise Unavailable(f"pool {name!r} is unavailable: {self.errors[name]}")
            raise NotFound(f"pool {name!r} not found")

    # -- group snapshots (engine/groups.py) ----------------------------------------------------
    def snapshot_group(self, name: str, members: Sequence[tuple[str, str, str]], *,
                       timeout: float = groups.DEFAULT_TIMEOUT) -> groups.GroupSnapshot:
        """One instant across volumes: ``members`` are ``(pool, volume, snapshot name)``.

        Freezes every mounted member (bounded by ``timeout`` s, and never left frozen if this
        process dies), reflinks all, thaws all. Idempotent for the same members; see
        :func:`groups.create` for the errors. The pools are locked in name order."""
        wanted = groups.check_members(name, [groups.Member(*m) for m in members])
        pools = {n: self.pool(n) for n in sorted({m.pool for m in wanted})}
        for other in self.pools():
            if other.name not in pools and groups.read(other, name) is not None:
                raise AlreadyExists(f"group snapshot {name!r} exists in pool {other.name!r} "
                                    "with other members")
        with contextlib.ExitStack() as held:
            for pool in pools.values():
                held.enter_context(pool.exclusive())
                if groups.read(pool, name) is None:  # new snapshots in this pool
                    capacity.refuse_new(pool.space(), f"group snapshot {name!r}")
            return groups.create(pools, name, wanted, timeout=timeout)

    def _group_pools(self, name: str, pool: str | None) -> tuple[groups.GroupSnapshot,
                                                                 dict[str, Pool]]:
        candidates = [self.pool(pool)] if pool is not None else self.pools()
        for candidate in candidates:
            found = groups.read(candidate, name)
            if found is not None:
                names = sorted({m.pool for m in found.members} | {candidate.name})
                opened = {}
                for n in names:
                    with contextlib.suppress(NotFound, Unavailable):
                        opened[n] = self.pool(n)
                return found, opened
        raise NotFound(f"group snapshot {name!r} not found"
                       + (f" in pool {pool!r}" if pool is not None else ""))

    def get_snapshot_group(self, name: str, *, pool: str | None = None) -> groups.GroupSnapshot:
        """The recorded group (searched in ``pool``, or every pool); ``missing`` names the
        members whose snapshot is gone. NotFound if no record."""
        found, pools = self._group_pools(name, pool)
        return groups.with_missing(found, pools)

    def list_snapshot_groups(self) -> list[groups.GroupSnapshot]:
        seen: dict[str, groups.GroupSnapshot] = {}
        for pool in self.pools():
            for name in groups.names(pool):
                if name not in seen:
                    seen[name] = self.get_snapshot_group(name, pool=pool.name)
        return [seen[n] for n in sorted(seen)]

    def delete_snapshot_group(self, name: str, *, pool: str | None = None) -> None:
        """Delete every member snapshot, then the records. NotFound if no record;
        FailedPrecondition if a member snapshot is attached (nothing after it is deleted)."""
        _found, pools = self._group_pools(name, pool)
        with contextlib.ExitStack() as held:
            for n in sorted(pools):
                held.enter_context(pools[n].exclusive())
            groups.delete(pools, name)

    # -- create / import -------------------------------------------------------------------
    def create_pool(self, spec: PoolSpec) -> Pool:
        """Create (or, for the same name and spec, return) a pool."""
        with self._exclusive():
            validate_name(spec.name, what="pool name")
            lifecycle.check_ratio(spec.overprovision_ratio)
            try:
                profile = RaidProfile(spec.profile)
            except ValueError as exc:
                raise InvalidArgument(f"unknown RAID profile {spec.profile!r}") from exc
            wanted = spec_to_dict(spec)
            registered = self.registry.load()["pools"].get(spec.name)
            if registered is not None:
                if identity(registered.get("spec", {})) != identity(wanted):
                    raise AlreadyExists(f"pool {spec.name!r} exists with another spec")
                pool = self.pool(spec.name)
                # the ratio is a tunable, not part of the pool's identity
                if pool.capacity().overprovision_ratio != wanted["overprovision_ratio"]:
                    pool.set_overprovision_ratio(wanted["overprovision_ratio"])
                return pool
            sources, images = poolcreate.sources_for(spec, self.disks_dir)
            if spec.directory:
                if profile is not RaidProfile.SINGLE:
                    raise InvalidArgument("a directory pool has no RAID profile")
                pool = poolcreate.build_directory(spec, wanted, self.registry,
                                                  fault_hook=self.fault_hook)
            else:
                poolcreate.check_disks(spec, profile, sources, images)
                pool = poolcreate.build(spec, profile, sources, images, wanted, self.registry,
                                        self.pools_dir / spec.name, adopt=self._adopt,
                                        fault_hook=self.fault_hook)
            self._pools[spec.name] = pool
            return pool

    def _adopt(self, pool: Pool) -> None:
        """Hold a pool whose creation is committed even though a later step failed."""
        self._pools[pool.name] = pool

    def _recover_registry(self) -> None:
        """Roll back pool creations and imports a crash interrupted (before opening pools)."""
        for name, intent in list(self.registry.load().get("creating", {}).items()):
            poolcreate.roll_back(self.registry, self.pools_dir / name, name, intent)
            self.recovered.setdefault(name, []).append(f"rolled back creation of pool {name}")
        if not self.pools_dir.is_dir():
            return
        registered = {s for e in self.registry.load()["pools"].values() for s in e["sources"]}
        for probe in sorted(self.pools_dir.glob(".import-*")):
            current = mounts.mount_at(probe)
            if current is not None:
                fs.umount(probe)
                backing = loop.backing_files().get(current.source)
                if backing is not None and backing not in registered:
                    loop.detach(current.source)
            shutil.rmtree(probe, ignore_errors=True)
            log.warning("removed interrupted import probe path=%s", probe)

    def _import_directory(self, directory: Path, name: str | None) -> Pool:
        if not (directory / META_DIR / META_DB).exists():
            raise InvalidArgument(f"{directory} holds no Statehold pool")
        for pool in self._pools.values():
            if pool.mountpoint == directory:
                raise AlreadyExists(f"{directory} is already imported here as pool {pool.name!r}")
        db = Metadata(directory / META_DIR / META_DB)
        try:
            stored = db.pool()
            final = name or stored.name
            if final in self.registry.load()["pools"] or final in self._pools:
                raise AlreadyExists(f"a pool named {final!r} is already registered here")
            if final != stored.name:
                db.rename_pool(final)
        finally:
            db.close()
        spec = dict(stored.spec) | {"name": final}
        pool = self._open(final, [str(directory)], DIRECTORY)
        self.registry.register(final, [str(directory)], spec, DIRECTORY)
        self._pools[final] = pool
        self.recovered[final] = pool.reconcile()
        return pool

    def import_pool(self, sources: Sequence[str], *, name: str | None = None) -> Pool:
        """Adopt a pool made elsewhere from its devices or image files (metadata inside)."""
        with self._exclusive():
            if not sources:
                raise InvalidArgument("import needs at least one device or image")
            srcs = [os.path.abspath(s) for s in sources]
            if name is not None:
                validate_name(name, what="pool name")
            marked = poolexport.marked_with(self.registry.load()["pools"], srcs)
            if marked is not None:  # its export did not finish: keep the pool instead
                if name is not None and name != marked:
                    raise AlreadyExists(f"{', '.join(srcs)} are pool {marked!r}, being exported "
                                        f"here: import them as {marked!r} to keep it")
                self.registry.clear_exporting(marked)
                log.warning("pool export cancelled by an import pool=%s", marked)
                return self.pool(marked)
            if len(srcs) == 1 and os.path.isdir(srcs[0]):
                return self._import_directory(Path(srcs[0]), name)
            self._check_not_in_use(srcs)
            devices = pooldisk.attach_sources(srcs)
            images = [s for s, d in zip(srcs, devices, strict=True) if s != d]
            self.pools_dir.mkdir(parents=True, exist_ok=True)
            probe = Path(tempfile.mkdtemp(prefix=".import-", dir=self.pools_dir))
            try:
                pooldisk.mount(devices, probe)
                if self.fault_hook is not None:
                    self.fault_hook("import_pool.probed")
                try:
                    db = Metadata(probe / META_DIR / META_DB)
                except FailedPrecondition as exc:
                    raise InvalidArgument(f"{', '.join(srcs)} hold no Statehold pool") from exc
                stored = db.pool()
                final = name or stored.name
                if final in self.registry.load()["pools"] or final in self._pools:
                    db.close()
                    raise AlreadyExists(f"a pool named {final!r} is already registered here")
                if final != stored.name:
                    db.rename_pool(final)
                db.close()
            except BaseException:
                pooldisk.release(probe, images)
                probe.rmdir()
                raise
            fs.umount(probe)
            probe.rmdir()
            spec = dict(stored.spec)
            spec["name"] = final
            pool = self._open(final, srcs)
            self.registry.register(final, srcs, spec)
            self._pools[final] = pool
            self.recovered[final] = pool.reconcile()
            return pool

    def _check_not_in_use(self, sources: Sequence[str]) -> None:
        """Refuse sources in use: mounted (here: AlreadyExists), attached, or held open.

        An import that fails cleans up by detaching the loop devices of its image files, so
        an image already attached (say, a block volume a pod is using) must never get that
        far.
        """
        for src in sources:
            is_file = os.path.isfile(src)
            devices = loop.find(src) if is_file else [os.path.realpath(src)]
            for dev in devices:
                targets = mounts.targets_of(dev)
                for pool in self._pools.values():
                    if str(pool.mountpoint) in targets:
                        raise AlreadyExists(f"{src} is already imported here as pool {pool.name!r}")
                if targets:
                    raise FailedPrecondition(f"{src} is in use: mounted at {', '.join(targets)}")
            if is_file and devices:
                raise FailedPrecondition(f"{src} is in use: attached as {devices[0]}")
            if not is_file and os.path.exists(src):
                pooldisk.check_not_held(src)

    # -- export / destroy ------------------------------------------------------------------
    def sources_of(self, name: str) -> list[str]:
        """The devices, image files or directory pool ``name`` is registered with (read from
        the registry: also for a pool being exported, which is not opened). NotFound."""
        entry = self.registry.load()["pools"].get(name)
        if entry is None:
            raise NotFound(f"pool {name!r} not found")
        return list(entry["sources"])

    def export_pool(self, name: str, *, wait: float = EXPORT_WAIT) -> None:
        """Unmount and detach a pool and forget it here; its disks keep everything.

        The release protocol (docs/design/pool-metadata.md, "Export"): refused
        (FailedPrecondition) while a volume or snapshot of the pool is attached; otherwise
        the pool is marked ``exporting`` in the registry, so every Node on this home (in
        every process) lets go of it and opens it no more, and this call waits up to
        ``wait`` s until no process holds anything in it, then unmounts it, detaches its
        images and unregisters it. Still held then: Temporary naming the holders it can
        see, the mark kept (a retry finishes the export, an import of the same disks
        cancels it). A pool already marked (an export that failed or died) is finished.
        NotFound if not registered; Aborted if an import cancelled the export meanwhile.
        """
        fault = self.fault_hook or no_fault
        with self._exclusive():
            entry = self.registry.load()["pools"].get(name)
            if entry is None:
                raise NotFound(f"pool {name!r} not found")
            place = poolexport.where(self.pools_dir, name, entry)
            if not is_exporting(entry):
                self.refresh()
                if name in self.errors:
                    # its disks are gone: forgetting it is all that can be done
                    self.registry.unregister(name)
                    del self.errors[name]
                    return
                poolexport.refuse_attached(place)
                self.registry.mark_exporting(name)
                log.info("pool export started pool=%s", name)
                fault("export_pool.marked")
        self.follow_marks()  # this Node lets go first; the others on their own
        deadline = time.monotonic() + wait
        busy = ""
        while True:
            held = holders.holders(place.roots)
            if not held or poolexport.state(self.registry, name) != "exporting":
                done, busy = self._finish_export(name)  # gone: done; cancelled: Aborted
                if done:
                    return
            if time.monotonic() >= deadline:
                raise poolexport.still_held(name, held, busy)
            time.sleep(EXPORT_POLL)

    def _finish_export(self, name: str) -> tuple[bool, str]:
        """``poolexport.finish`` under the home lock; forgets the mark here once done."""
        with self._exclusive():
            done, busy = poolexport.finish(self.registry, self.pools_dir, name,
                                           self.fault_hook or no_fault)
            if done or poolexport.state(self.registry, name) != "exporting":
                self.exporting.pop(name, None)
            return done, busy

    def destroy_pool(self, name: str) -> None:
        """Export the pool, then delete the image files it was made of (devices are kept)."""
        with self._exclusive():
            entry = self.registry.load()["pools"].get(name)
            if entry is None:
                raise NotFound(f"pool {name!r} not found")
            self.refresh()
            broken = name in self.errors
            place = poolexport.where(self.pools_dir, name, entry)
        self.export_pool(name)
        if broken:  # disks gone or unreadable: forgotten, nothing deleted
            return
        with self._exclusive():
            if name in self.registry.load()["pools"]:  # imported again meanwhile
                return
            for img in place.images:
                Path(img).unlink(missing_ok=True)
            if place.directory:  # only what the pool made; the directory itself stays
                for sub in (VOLUMES_DIR, SNAPSHOTS_DIR, META_DIR):
                    _remove_tree(place.mountpoint / sub)
            log.info("pool destroyed pool=%s", name)

    def close(self) -> None:
        """Release database handles; leaves pools mounted and volumes attached."""
        self._stop.set()
        with self._lock:
            self._closed = True
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def _remove_tree(path: Path) -> None:
    """Delete a directory a destroyed directory pool made, subvolumes included (a subvolume
    pool's volumes and snapshots, orphans among them: rmtree cannot empty a read-only one)."""
    if path.is_dir() and not path.is_symlink():
        for entry in sorted(path.iterdir()):
            if subvolume.is_subvolume(entry):
                try:
                    subvolume.destroy(entry, commit=False)
                except StateholdError as exc:
                    log.error("pool destroy cannot delete subvolume path=%s error=%s", entry, exc)
            elif entry.is_dir() and not entry.is_symlink():
                _remove_tree(entry)
    shutil.rmtree(path, ignore_errors=True)
