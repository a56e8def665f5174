"""Role changes of a copy: promote, demote, the stage-time check, release
(docs/design/replication.md §6).

The controller records a new epoch in the cluster (compare-and-set) *before* it calls
:func:`promote`; an agent calls :func:`check_writable` with the cluster's epoch before it
stages a copy. Every change is persisted before the call returns, under the volume's
replication lock, after finishing any crashed commit.
"""

from __future__ import annotations

import logging

from statehold.engine.names import validate_name
from statehold.engine.pool import Pool
from statehold.errors import FailedPrecondition, Fenced, InvalidArgument
from statehold.replication import holding
from statehold.replication.points import U64_MAX, common_base
from statehold.replication.receiving import recover
from statehold.replication.state import CopyState, Role, StateStore

__all__ = ["check_writable", "common_base", "copy_state", "demote", "fence", "promote", "release"]

log = logging.getLogger("statehold.replication.roles")


def _epoch(value: int, what: str = "epoch") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= U64_MAX:
        raise InvalidArgument(f"{what} must be an integer >= 1, got {value!r}")
    return value


def copy_state(pool: Pool, volume: str) -> CopyState:
    """The copy's state, after finishing a crashed commit (Aborted while one is applying)."""
    store = StateStore(pool.meta_dir, pool.work_dir)
    with store.locked(validate_name(volume, what="volume name")):
        return recover(pool, store, store.load(volume))


def promote(pool: Pool, volume: str, epoch: int) -> CopyState:
    """Make this copy the primary at ``epoch`` (persisted before returning).

    A replica, a stale copy, a primary of an older epoch, or a volume without replication
    state (the copy CreateVolume made) may be promoted. Fenced: ``epoch`` not newer than the
    copy's (the same epoch on a primary is an idempotent success). FailedPrecondition: a
    copy still seeding (its content is incomplete). NotFound: no such volume.
    """
    _epoch(epoch)
    store = StateStore(pool.meta_dir, pool.work_dir)
    with store.locked(validate_name(volume, what="volume name")):
        blank = not store.exists(volume)
        state = recover(pool, store, store.load(volume))
        pool.get_volume(volume)
        if state.role is Role.PRIMARY and state.epoch == epoch:
            return state
        if epoch <= state.epoch:
            raise Fenced(f"volume {volume!r}: cannot promote at epoch {epoch}, this copy knows "
                         f"epoch {state.epoch}")
        if state.role is Role.SEEDING and not blank:
            raise FailedPrecondition(f"volume {volume!r} is still seeding; it cannot be promoted")
        was_primary = state.role is Role.PRIMARY
        state = store.save(state, role=Role.PRIMARY, epoch=epoch,
                           fork=state.fork if was_primary else state.point,
                           peers=state.peers if was_primary else {},
                           pending=state.pending if was_primary else None,
                           seed=None, committing=None)
        store.work_path(volume).unlink(missing_ok=True)
    log.info("replication copy promoted volume=%s/%s epoch=%d point=%s", pool.name, volume, epoch,
             state.point)
    return state


def demote(pool: Pool, volume: str, epoch: int) -> CopyState:
    """This copy saw ``epoch``: a primary of an older epoch becomes stale (it may hold writes
    no other copy has, and must be resynced before it serves); other roles adopt the epoch.

    Fenced: a primary asked to step down for an epoch that is not newer than its own.
    """
    _epoch(epoch)
    store = StateStore(pool.meta_dir, pool.work_dir)
    with store.locked(validate_name(volume, what="volume name")):
        state = recover(pool, store, store.load(volume))
        if epoch <= state.epoch:
            if state.role is Role.PRIMARY:
                raise Fenced(f"volume {volume!r} is the primary at epoch {state.epoch}; a demotion "
                             f"for epoch {epoch} is refused")
            return state
        role = Role.STALE if state.role is Role.PRIMARY else state.role
        state = store.save(state, role=role, epoch=epoch, peers={})
    log.info("replication copy demoted volume=%s/%s epoch=%d role=%s", pool.name, volume, epoch,
             state.role)
    return state


def check_writable(pool: Pool, volume: str, cluster_epoch: int) -> CopyState:
    """Pass only if this copy is the primary at exactly ``cluster_epoch`` (stage time).

    A primary of an older epoch is demoted durably, then Fenced: a returning old primary
    never accepts writes. A stale copy is Fenced. A replica or seeding copy, or a local
    epoch newer than the cluster's record, is FailedPrecondition.
    """
    _epoch(cluster_epoch, "cluster epoch")
    store = StateStore(pool.meta_dir, pool.work_dir)
    with store.locked(validate_name(volume, what="volume name")):
        state = recover(pool, store, store.load(volume))
        if state.role is Role.PRIMARY and state.epoch == cluster_epoch:
            return state
        if state.epoch > cluster_epoch:
            raise FailedPrecondition(
                f"volume {volume!r}: this copy knows epoch {state.epoch}, newer than the "
                f"cluster's {cluster_epoch}; refusing to stage")
        if state.role is Role.PRIMARY:
            store.save(state, role=Role.STALE, epoch=cluster_epoch, peers={})
            log.warning("replication copy fenced volume=%s/%s epoch=%d cluster_epoch=%d",
                        pool.name, volume, state.epoch, cluster_epoch)
            raise Fenced(f"volume {volume!r}: this copy was primary at epoch {state.epoch}; the "
                         f"cluster is at epoch {cluster_epoch}: it is stale now")
        if state.role is Role.STALE:
            raise Fenced(f"volume {volume!r}: this copy is stale; it must resync before it serves")
        raise FailedPrecondition(f"volume {volume!r}: this copy is a {state.role}; it must be "
                                 "promoted before it is staged")


def fence(pool: Pool, volume: str, cluster_epoch: int) -> CopyState:
    """The cluster's record does not make this copy the primary at ``cluster_epoch``: a
    primary of that epoch or an older one becomes stale at ``cluster_epoch``, durably (an
    agent comparing its copies with the record at start, §6.3). Unlike :func:`demote`, the
    record's own epoch suffices: a record naming *another* node at this copy's epoch fences
    it too. Other roles adopt a newer epoch.

    FailedPrecondition: this copy knows a newer epoch than the record (the record was
    rolled back); nothing is changed then.
    """
    _epoch(cluster_epoch, "cluster epoch")
    store = StateStore(pool.meta_dir, pool.work_dir)
    with store.locked(validate_name(volume, what="volume name")):
        state = recover(pool, store, store.load(volume))
        if state.epoch > cluster_epoch:
            raise FailedPrecondition(
                f"volume {volume!r}: this copy knows epoch {state.epoch}, newer than the "
                f"cluster's {cluster_epoch}; it cannot be fenced by that record")
        if state.role is Role.PRIMARY:
            state = store.save(state, role=Role.STALE, epoch=cluster_epoch, peers={})
            log.warning("replication copy fenced volume=%s/%s cluster_epoch=%d", pool.name,
                        volume, cluster_epoch)
        elif cluster_epoch > state.epoch:
            state = store.save(state, epoch=cluster_epoch)
    return state


def release(pool: Pool, volume: str) -> None:
    """Forget the copy's replication: delete its point snapshots, work file and state file.

    The engine volume stays (the caller deletes it). FailedPrecondition if a point
    snapshot is attached; a retry after a crash finishes the job.
    """
    store = StateStore(pool.meta_dir, pool.work_dir)
    with store.locked(validate_name(volume, what="volume name")):
        state = store.load(volume)
        points = list(state.points)
        if state.committing is not None:
            points.append(state.committing.point)
        for point in points:
            holding.drop(pool, volume, point)
        store.delete(volume)
    log.info("replication copy released volume=%s/%s points=%d", pool.name, volume, len(points))
