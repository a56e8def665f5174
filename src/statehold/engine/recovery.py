"""Crash recovery: make a pool's database, files, loop devices and mounts agree again.

Runs when a Node opens a pool (and on demand via ``Pool.reconcile``). Rules, in order
(normative text in docs/design/pool-metadata.md):

1. Every unfinished intent is finished or rolled back:
   create/clone -> source thawed, rolled back (file removed); snapshot -> filesystem
   thawed, rolled back;
   expand -> finished (file grown, size recorded, filesystem growth pending);
   delete (volume or snapshot) -> finished, unless the file is attached again (rolled back).
2. Loop devices backed by a file of this pool that no row names (or that was unlinked)
   are unmounted and detached: nothing else could be using them.
3. Backing files (subvolumes, in a subvolume pool) no row names are moved to
   ``.statehold/orphans/`` (never deleted: they were not made by a recorded operation);
   rows whose file is missing are reported.
4. Snapshot files (subvolumes) are made read-only again if something changed that.

What an operation's entry is, and how it is removed or moved, is the pool layout's
(:mod:`layouts`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from statehold.engine import freeze, fs, lifecycle, loop, mounts
from statehold.engine.metadata import Intent, Metadata
from statehold.engine.poolcontext import PoolContext
from statehold.errors import FailedPrecondition, StateholdError

log = logging.getLogger("statehold.engine.recovery")

ORPHANS = "orphans"


def _release(path: Path | str, done: list[str]) -> None:
    """Unmount and detach every loop device backed by exactly ``path``."""
    for dev in loop.find(path):
        for target in reversed(mounts.targets_of(dev)):
            freeze.thaw(target)
            fs.umount(target)
            done.append(f"unmounted {target} ({dev})")
        loop.detach(dev)
        done.append(f"detached {dev} from {path}")


def _thaw(it: Intent, done: list[str]) -> None:
    """Thaw the mount an unfinished operation froze (a frozen fs blocks every writer)."""
    target = it.payload.get("frozen")
    if target and mounts.mount_at(target) is not None and freeze.thaw(str(target)):
        done.append(f"thawed {target}")


def _finish_intent(pool: PoolContext, it: Intent, done: list[str]) -> None:
    db = pool.db
    name = it.target
    if it.op in ("create_volume", "clone"):
        _thaw(it, done)
        if db.volume(name) is None:
            _release(pool.volume_path(name), done)
            pool.layout.remove(pool.layout.volume_entry(name))
            done.append(f"rolled back {it.op} of volume {name}")
    elif it.op == "snapshot":
        _thaw(it, done)
        if db.snapshot(name) is None:
            pool.layout.remove(pool.layout.snapshot_entry(name))
            done.append(f"rolled back snapshot {name}")
    elif it.op == "expand":
        rec = db.volume(name)
        new = int(it.payload["new"])
        if rec is not None:
            path = pool.volume_path(name)
            try:
                if path.exists() and path.stat().st_size < new:
                    os.truncate(path, new)
            except OSError as exc:
                # the file could not grow (so it did not): the expand never happened
                with db.transaction() as tx:
                    Metadata.end_intent(tx, it.id)
                done.append(f"rolled back expand of volume {name}: {exc}")
                return
            for dev in loop.find(path):
                loop.refresh_capacity(dev)
            with db.transaction() as tx:
                tx.execute("UPDATE volumes SET size=?, grow_pending=? WHERE name=?",
                           (max(new, rec.size), int(rec.mode == "filesystem"), name))
            done.append(f"finished expand of volume {name} to {new}")
            try:
                lifecycle.grow_pending_fs(pool, name)
            except StateholdError as exc:
                done.append(f"filesystem of volume {name} not grown yet: {exc}")
    elif it.op in ("delete_volume", "delete_snapshot"):
        is_vol = it.op == "delete_volume"
        path = pool.volume_path(name) if is_vol else pool.snapshot_path(name)
        if loop.find(path):
            done.append(f"rolled back {it.op} of {name}: it is attached")
        else:
            pool.layout.remove(pool.layout.volume_entry(name) if is_vol
                               else pool.layout.snapshot_entry(name))
            with db.transaction() as tx:
                table = "volumes" if is_vol else "snapshots"
                tx.execute(f"DELETE FROM {table} WHERE name=?", (name,))
            done.append(f"finished {it.op} of {name}")
    else:
        done.append(f"left unknown intent {it.id} ({it.op} {name}) in place")
        return
    with db.transaction() as tx:
        Metadata.end_intent(tx, it.id)


def _stale_loops(pool: PoolContext, done: list[str]) -> None:
    known = {str(pool.volume_path(v.name)) for v in pool.db.volumes()}
    known |= {str(pool.snapshot_path(s.name)) for s in pool.db.snapshots()}
    for directory in (pool.volumes_dir, pool.snapshots_dir):
        for dev, backing in loop.under(directory).items():
            if backing in known:
                continue
            for target in reversed(mounts.targets_of(dev)):
                freeze.thaw(target)
                fs.umount(target)
                done.append(f"unmounted {target} ({dev}, stale)")
            loop.detach(dev)
            done.append(f"detached stale {dev} backed by {backing}")


def _files(pool: PoolContext, done: list[str]) -> None:
    orphans = pool.meta_dir / ORPHANS
    vols = {v.name for v in pool.db.volumes()}
    snaps = {s.name for s in pool.db.snapshots()}
    for directory, names in ((pool.volumes_dir, vols), (pool.snapshots_dir, snaps)):
        present = set()
        for entry, name in pool.layout.entries(directory):
            if name is not None and name in names:
                present.add(name)
                continue
            if loop.find(entry) or loop.under(entry):
                done.append(f"left unknown entry {entry}: it is attached")
                continue
            orphans.mkdir(exist_ok=True)
            moved = pool.layout.to_orphans(entry, orphans)
            done.append(f"moved unknown entry {entry} to {moved}")
        for missing in sorted(names - present):
            done.append(f"{directory.name[:-1]} {missing}: backing file is missing")
    for snap in pool.db.snapshots():
        if pool.layout.reseal(snap.name):
            done.append(f"made snapshot {snap.name} read-only again")


def settle(pool: PoolContext, intent_id: int) -> list[str]:
    """Finish or roll back one intent right away: an operation failed (not crashed) midway.

    Best effort: what cannot be settled now is left for the next ``reconcile``.
    """
    done: list[str] = []
    for it in pool.db.intents():
        if it.id == intent_id:
            try:
                _finish_intent(pool, it, done)
            except (StateholdError, OSError) as exc:
                done.append(f"could not settle intent {it.id} ({it.op} {it.target}): {exc}")
    for line in done:
        log.warning("settle pool=%s %s", pool.name, line)
    return done


def reconcile(pool: PoolContext) -> list[str]:
    """Bring the pool back to a consistent state; one line per action taken."""
    present = pool.meta_dir.is_dir() if pool.is_directory else os.path.ismount(pool.mountpoint)
    if not present:
        # an empty directory would look like a pool whose files were all deleted
        raise FailedPrecondition(f"pool {pool.name!r} is not mounted at {pool.mountpoint}")
    done: list[str] = []
    for it in pool.db.intents():
        try:
            _finish_intent(pool, it, done)
        except (StateholdError, OSError) as exc:
            # one stuck intent must not keep the pool from opening: report, retry next time
            done.append(f"could not finish intent {it.id} ({it.op} {it.target}): {exc}")
    _stale_loops(pool, done)
    _files(pool, done)
    for line in done:
        log.warning("recovery pool=%s %s", pool.name, line)
    return done
