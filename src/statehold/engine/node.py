"""The pools of one host, registered in ``<home>/node.json`` (see ``hostregistry``).

The registry only says where each pool's disks are (device paths or image files); all
other state lives inside the pool. Opening a Node re-attaches image files, mounts pools at
``<home>/pools/<name>`` and reconciles each one, so a restart (or a crash) ends with every
pool usable and consistent. A pool whose disks are missing is reported by ``errors`` and
raises Unavailable from ``pool(name)``; it never stops the other pools from opening.
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
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from statehold.engine import capacity, fs, groups, lifecycle, loop, mounts, pooldir, pooldisk
from statehold.engine.hostregistry import DIRECTORY, DISKS, HostRegistry, identity, spec_to_dict
from statehold.engine.metadata import Metadata, PoolRecord
from statehold.engine.names import check_size, validate_name
from statehold.engine.pool import LOCK_TIMEOUT, META_DIR, SNAPSHOTS_DIR, VOLUMES_DIR, Pool
from statehold.engine.steps import FaultHook
from statehold.engine.types import FsType, PoolSpec, RaidProfile
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

META_DB = "meta.db"

class Node:
    """The pools of one host. Not a daemon: several short-lived Nodes may open one home."""

    def __init__(self, home: Path, *, fault_hook: FaultHook | None = None) -> None:
        self.home = Path(os.path.abspath(home))
        self.registry = HostRegistry(self.home)
        self.fault_hook = fault_hook
        self._lock = threading.RLock()
        self._pools: dict[str, Pool] = {}
        self.errors: dict[str, str] = {}
        """Pools that are registered but could not be opened, with the reason."""
        self.recovered: dict[str, list[str]] = {}
        """What recovery did per pool when this Node opened it."""
        self._depth = 0
        self._closed = False
        self.home.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            self._recover_registry()
            for name, entry in self.registry.load()["pools"].items():
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

    def refresh(self) -> None:
        """Follow registry changes made by other processes on this home (a CLI beside the
        agent): open pools registered since, forget pools exported since."""
        with self._lock:
            if self._closed:
                return
            registered = self.registry.load()["pools"]
            known = set(self._pools) | set(self.errors)
            if known == set(registered):
                return
            with self._exclusive():
                registered = self.registry.load()["pools"]
                for name in [n for n in self._pools if n not in registered]:
                    self._pools.pop(name).close()
                for name in [n for n in self.errors if n not in registered]:
                    del self.errors[name]
                for name, entry in registered.items():
                    if name in self._pools or name in self.errors:
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
        with self._lock:
            self.refresh()
            return [self._pools[n] for n in sorted(self._pools)]

    def pool(self, name: str) -> Pool:
        with self._lock:
            if name not in self._pools:
                self.refresh()
            if name in self._pools:
                return self._pools[name]
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
    def _sources_for(self, spec: PoolSpec) -> tuple[list[str], bool]:
        if sum(map(bool, (spec.devices, spec.images, spec.directory))) > 1:
            raise InvalidArgument("a pool is made of devices, images or a directory: one kind")
        if spec.devices:
            return [str(d) for d in spec.devices], False
        images = list(spec.images) or [str(self.disks_dir / f"{spec.name}-0.img")]
        return [os.path.abspath(self.disks_dir / i) if not os.path.isabs(i) else i
                for i in images], True

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
            sources, images = self._sources_for(spec)
            if spec.directory:
                if profile is not RaidProfile.SINGLE:
                    raise InvalidArgument("a directory pool has no RAID profile")
                return self._build_directory(spec, wanted)
            if len(sources) == 1 and profile is not RaidProfile.SINGLE:
                raise InvalidArgument(f"profile {profile} needs at least two devices")
            if len(sources) < pooldisk.MIN_DEVICES[profile]:
                raise InvalidArgument(f"profile {profile} needs at least "
                                      f"{pooldisk.MIN_DEVICES[profile]} devices")
            if len(set(sources)) != len(sources):
                raise InvalidArgument("a device or image is listed twice")
            minimum = fs.MIN_SIZE[FsType.XFS if len(sources) == 1 else FsType.BTRFS]
            if images:
                size = check_size(spec.image_size, what="image_size")
                if size < minimum:
                    raise InvalidArgument(f"image_size must be at least {minimum} bytes")
                for image in sources:
                    pooldisk.check_image(Path(image), force=spec.force)
            else:
                for dev in sources:
                    pooldisk.check_device(dev, force=spec.force)
            return self._build(spec, profile, sources, images, wanted)

    def _build(self, spec: PoolSpec, profile: RaidProfile, sources: list[str], images: bool,
               wanted: dict[str, Any]) -> Pool:
        mountpoint = self.pools_dir / spec.name
        # intent first (in the registry: there is no pool database yet): a crash from here
        # on is rolled back by the next Node, so no loop device or mount is leaked
        intent = {"sources": sources, "images": images,
                  "new_images": [i for i in sources if images and not os.path.exists(i)]}
        data = self.registry.load()
        data.setdefault("creating", {})[spec.name] = intent
        self.registry.save(data)
        fault = self.fault_hook or (lambda step: None)
        db: Metadata | None = None
        pool: Pool | None = None
        try:
            fault("create_pool.intent")
            if images:
                size = check_size(spec.image_size)
                for image in sources:
                    pooldisk.make_image(Path(image), size, force=spec.force)
            devices = pooldisk.attach_sources(sources)
            fault("create_pool.attached")
            fstype = pooldisk.mkfs(devices, profile)
            pooldisk.mount(devices, mountpoint)
            fault("create_pool.mounted")
            for sub in (META_DIR, VOLUMES_DIR, SNAPSHOTS_DIR):
                (mountpoint / sub).mkdir(exist_ok=True)
            db = Metadata(mountpoint / META_DIR / META_DB, create=True)
            db.init_pool(PoolRecord(spec.name, str(uuid.uuid4()), fstype, str(profile),
                                    float(spec.overprovision_ratio), wanted, time.time()))
            pool = Pool(spec.name, mountpoint, db, fault_hook=self.fault_hook,
                        devices=devices, sources=sources)
            fault("create_pool.database")
            data = self.registry.load()
            data["pools"][spec.name] = {"sources": list(sources), "spec": wanted, "kind": DISKS,
                                        "registered_at": time.time()}
            data["creating"].pop(spec.name, None)
            self.registry.save(data)
            fault("create_pool.commit")
        except BaseException:
            if spec.name in self.registry.load()["pools"] and pool is not None:
                self._pools[spec.name] = pool  # committed: only the step after failed
                raise
            if pool is not None:
                pool.close()
            elif db is not None:
                db.close()
            self._roll_back_create(spec.name, intent)
            raise
        self._pools[spec.name] = pool
        log.info("pool created pool=%s fs=%s sources=%s", spec.name, fstype, ",".join(sources))
        return pool

    def _roll_back_create(self, name: str, intent: dict[str, Any]) -> None:
        """Undo an unfinished pool creation: unmount, detach its images, delete new ones."""
        mountpoint = self.pools_dir / name
        try:
            fs.umount(mountpoint)
        except StateholdError as exc:
            log.error("pool rollback cannot unmount pool=%s error=%s", name, exc)
        if intent.get("images"):
            for image in intent.get("sources", []):
                loop.detach_file(image)
        for image in intent.get("new_images", []):
            Path(image).unlink(missing_ok=True)
        if mountpoint.is_dir() and not os.path.ismount(mountpoint):
            shutil.rmtree(mountpoint, ignore_errors=True)
        data = self.registry.load()
        data.get("creating", {}).pop(name, None)
        self.registry.save(data)
        log.warning("pool creation rolled back pool=%s", name)

    def _recover_registry(self) -> None:
        """Roll back pool creations and imports a crash interrupted (before opening pools)."""
        for name, intent in list(self.registry.load().get("creating", {}).items()):
            self._roll_back_create(name, intent)
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

    def _build_directory(self, spec: PoolSpec, wanted: dict[str, Any]) -> Pool:
        directory = Path(os.path.abspath(spec.directory))
        fstype = pooldir.check(directory)
        made = [directory / sub for sub in (META_DIR, VOLUMES_DIR, SNAPSHOTS_DIR)
                if not (directory / sub).exists()]
        try:
            for sub in made:
                sub.mkdir()
            db = Metadata(directory / META_DIR / META_DB, create=True)
            db.init_pool(PoolRecord(spec.name, str(uuid.uuid4()), fstype, "single",
                                    float(spec.overprovision_ratio), wanted, time.time()))
            pool = Pool(spec.name, directory, db, fault_hook=self.fault_hook,
                        sources=[str(directory)], directory=True)
            self.registry.register(spec.name, [str(directory)], wanted, DIRECTORY)
        except BaseException:
            for sub in made:
                shutil.rmtree(sub, ignore_errors=True)
            raise
        self._pools[spec.name] = pool
        log.info("pool created pool=%s fs=%s directory=%s", spec.name, fstype, directory)
        return pool

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
    def export_pool(self, name: str) -> None:
        """Unmount and detach a pool and forget it here; its disks keep everything."""
        with self._exclusive():
            if name in self.errors and name not in self._pools:
                # its disks are gone: forgetting it is all that can be done
                self.registry.unregister(name)
                del self.errors[name]
                return
            pool = self.pool(name)
            busy = loop.under(pool.volumes_dir) | loop.under(pool.snapshots_dir)
            if busy:
                raise FailedPrecondition(
                    f"pool {name!r} has attached volumes or snapshots: {', '.join(sorted(busy))}")
            pool.close()
            if not pool.is_directory:
                try:
                    pooldisk.release(pool.mountpoint, pool.image_files)
                except StateholdError as exc:
                    # still mounted (busy): keep serving it rather than hold a closed pool
                    self._pools[name] = self._open(name, pool.sources)
                    raise FailedPrecondition(
                        f"pool {name!r} is busy (another process has it open?): {exc}") from exc
                if pool.mountpoint.is_dir() and not os.path.ismount(pool.mountpoint):
                    pool.mountpoint.rmdir()
            self.registry.unregister(name)
            del self._pools[name]

    def destroy_pool(self, name: str) -> None:
        """Export the pool, then delete the image files it was made of (devices are kept)."""
        with self._exclusive():
            if name in self.errors and name not in self._pools:
                self.export_pool(name)
                return
            pool = self.pool(name)
            images = pool.image_files
            self.export_pool(name)
            for img in images:
                Path(img).unlink(missing_ok=True)
            if pool.is_directory:  # only what the pool made; the directory itself stays
                for sub in (VOLUMES_DIR, SNAPSHOTS_DIR, META_DIR):
                    shutil.rmtree(pool.mountpoint / sub, ignore_errors=True)
            log.info("pool destroyed pool=%s", name)

    def close(self) -> None:
        """Release database handles; leaves pools mounted and volumes attached."""
        with self._lock:
            self._closed = True
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()
