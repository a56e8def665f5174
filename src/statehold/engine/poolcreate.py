"""Making a pool: the checks of a spec, and the build on disks, image files or a directory.

A build on disks or images writes its intent into the host registry first (there is no pool
database yet), so a crash at any step is rolled back by the next :class:`~statehold.engine.node.Node`
that opens the home (:func:`roll_back`): no loop device, mount or new image file is left
behind. A directory pool needs no intent: its only steps are directories and a database
inside the directory, removed again if the build fails. ``Node.create_pool`` holds the
home's lock around all of it and decides between "new", "the same again" and "another spec".
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from statehold.engine import fs, layouts, loop, pooldir, pooldisk
from statehold.engine.hostregistry import DIRECTORY, DISKS, HostRegistry
from statehold.engine.metadata import Metadata, PoolRecord
from statehold.engine.names import check_size
from statehold.engine.pool import META_DB, META_DIR, SNAPSHOTS_DIR, VOLUMES_DIR, Pool
from statehold.engine.steps import FaultHook
from statehold.engine.types import FsType, PoolSpec, RaidProfile
from statehold.errors import InvalidArgument, StateholdError

log = logging.getLogger("statehold.engine.poolcreate")



def sources_for(spec: PoolSpec, disks_dir: Path) -> tuple[list[str], bool]:
    """The pool's sources and whether they are image files (made under ``disks_dir`` when
    the spec names none). InvalidArgument when the spec mixes devices, images, directory."""
    if sum(map(bool, (spec.devices, spec.images, spec.directory))) > 1:
        raise InvalidArgument("a pool is made of devices, images or a directory: one kind")
    if spec.devices:
        return [str(d) for d in spec.devices], False
    images = list(spec.images) or [str(disks_dir / f"{spec.name}-0.img")]
    return [os.path.abspath(disks_dir / i) if not os.path.isabs(i) else i
            for i in images], True


def check_disks(spec: PoolSpec, profile: RaidProfile, sources: list[str], images: bool) -> None:
    """Refuse, before anything is touched, a disk pool that cannot be built as asked."""
    fstype = pooldisk.fs_for(len(sources), spec.layout)
    layouts.check(spec.layout, fstype)
    if len(sources) == 1 and profile is not RaidProfile.SINGLE:
        raise InvalidArgument(f"profile {profile} needs at least two devices")
    if len(sources) < pooldisk.MIN_DEVICES[profile]:
        raise InvalidArgument(f"profile {profile} needs at least "
                              f"{pooldisk.MIN_DEVICES[profile]} devices")
    if len(set(sources)) != len(sources):
        raise InvalidArgument("a device or image is listed twice")
    minimum = fs.MIN_SIZE[FsType(fstype)]
    if images:
        size = check_size(spec.image_size, what="image_size")
        if size < minimum:
            raise InvalidArgument(f"image_size must be at least {minimum} bytes")
        for image in sources:
            pooldisk.check_image(Path(image), force=spec.force)
    else:
        for dev in sources:
            pooldisk.check_device(dev, force=spec.force)


def build(spec: PoolSpec, profile: RaidProfile, sources: list[str], images: bool,
          wanted: dict[str, Any], registry: HostRegistry, mountpoint: Path, *,
          adopt: Callable[[Pool], None], fault_hook: FaultHook | None = None) -> Pool:
    """Make the filesystem on ``sources``, mount it at ``mountpoint`` and register the pool.

    A failure before the registry commit rolls everything back; one after it (only a fault
    hook can fail there) leaves the committed pool, handed to ``adopt``, and re-raises."""
    # intent first (in the registry: there is no pool database yet): a crash from here
    # on is rolled back by the next Node, so no loop device or mount is leaked
    intent = {"sources": sources, "images": images,
              "new_images": [i for i in sources if images and not os.path.exists(i)]}
    data = registry.load()
    data.setdefault("creating", {})[spec.name] = intent
    registry.save(data)
    fault = fault_hook or (lambda step: None)
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
        fstype = pooldisk.mkfs(devices, profile, pooldisk.fs_for(len(devices), spec.layout))
        pooldisk.mount(devices, mountpoint)
        fault("create_pool.mounted")
        for sub in (META_DIR, VOLUMES_DIR, SNAPSHOTS_DIR):
            (mountpoint / sub).mkdir(exist_ok=True)
        db = Metadata(mountpoint / META_DIR / META_DB, create=True)
        db.init_pool(PoolRecord(spec.name, str(uuid.uuid4()), fstype, str(profile),
                                float(spec.overprovision_ratio), wanted, time.time(),
                                str(spec.layout)))
        pool = Pool(spec.name, mountpoint, db, fault_hook=fault_hook,
                    devices=devices, sources=sources)
        fault("create_pool.database")
        data = registry.load()
        data["pools"][spec.name] = {"sources": list(sources), "spec": wanted, "kind": DISKS,
                                    "registered_at": time.time()}
        data["creating"].pop(spec.name, None)
        registry.save(data)
        fault("create_pool.commit")
    except BaseException:
        if spec.name in registry.load()["pools"] and pool is not None:
            adopt(pool)  # committed: only the step after failed
            raise
        if pool is not None:
            pool.close()
        elif db is not None:
            db.close()
        roll_back(registry, mountpoint, spec.name, intent)
        raise
    log.info("pool created pool=%s fs=%s sources=%s", spec.name, fstype, ",".join(sources))
    return pool


def roll_back(registry: HostRegistry, mountpoint: Path, name: str, intent: dict[str, Any]) -> None:
    """Undo an unfinished pool creation: unmount, detach its images, delete new ones."""
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
    data = registry.load()
    data.get("creating", {}).pop(name, None)
    registry.save(data)
    log.warning("pool creation rolled back pool=%s", name)


def build_directory(spec: PoolSpec, wanted: dict[str, Any], registry: HostRegistry, *,
                    fault_hook: FaultHook | None = None) -> Pool:
    """A pool in an existing directory of a reflink filesystem (``pooldir.check``)."""
    directory = Path(os.path.abspath(spec.directory))
    layouts.check(spec.layout, "btrfs")  # the name first, the filesystem below
    fstype = pooldir.check(directory)
    layouts.check(spec.layout, fstype)
    made = [directory / sub for sub in (META_DIR, VOLUMES_DIR, SNAPSHOTS_DIR)
            if not (directory / sub).exists()]
    try:
        for sub in made:
            sub.mkdir()
        db = Metadata(directory / META_DIR / META_DB, create=True)
        db.init_pool(PoolRecord(spec.name, str(uuid.uuid4()), fstype, "single",
                                float(spec.overprovision_ratio), wanted, time.time(),
                                str(spec.layout)))
        pool = Pool(spec.name, directory, db, fault_hook=fault_hook,
                    sources=[str(directory)], directory=True)
        registry.register(spec.name, [str(directory)], wanted, DIRECTORY)
    except BaseException:
        for sub in made:
            shutil.rmtree(sub, ignore_errors=True)
        raise
    log.info("pool created pool=%s fs=%s directory=%s", spec.name, fstype, directory)
    return pool
