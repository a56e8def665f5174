"""The agent's own fencing: its primaries checked against the cluster record, and fenced
copies that are still staged made read-only (docs/design/replication.md §6.3, §8.4).

The controller fences an old primary when it reaches its agent, and NodeStage refuses a
copy the record does not name; neither helps while the agent itself streams from a copy
that came back believing it is the primary, or while a partitioned node's workload keeps
writing to a copy the cluster has given up on. So the agent:

* **at start, before it serves or replicates**, reads every ``ReplicatedVolume`` and judges
  each local copy that calls itself primary at epoch E (:func:`judge`): the record naming
  this node at E *confirms* it; a record naming another node at an epoch ≥ E, or any
  node at an epoch > E except this one, *fences* it (``roles.fence``: stale, durably, so
  the stage check and every later local path refuse it; the controller then resyncs it as
  a replica); anything else (no record, a record older than the copy, the record naming
  this node at a newer epoch the controller has yet to promote it to) *holds* it. Only a
  confirmed primary is replicated (:class:`GatedCopies`, the replication loop's view).
  A record that cannot be read holds every primary: the agent serves, but streams from
  none, and looks again every ``retry`` seconds until it can;
* **afterwards**, every ``interval`` seconds, does the same (an agent cut off from the
  controller but not from the API server learns of a failover so), and whenever a copy
  turns out fenced (stale) while its volume is still attached or mounted here it
  **seals** it (``statehold.engine.readonly``: loop device read-only, filesystem
  remounted read-only or shut down), so a surviving writer gets ``EROFS``/``EIO``;
* seals at once a copy the controller demotes through the agent API (``Demote``) while
  it is in use, and takes the controller's ``Promote`` as confirmation
  (:class:`WatchfulCopies`, the API's view): the controller records the epoch first.

Without a cluster (``records`` None: a standalone agent) every primary is confirmed, as
before; demoted copies are still sealed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from statehold.agent.copies import Applied, Copies, CopyView, Outgoing, VolumeRef, VolumeSpec
from statehold.errors import FailedPrecondition, StateholdError
from statehold.kube.facade import Kube
from statehold.kube.kinds import REPLICATED_VOLUME
from statehold.replication.cluster import Record, record_of

log = logging.getLogger("statehold.agent.fencing")

CONFIRMED = "confirmed"
FENCED = "fenced"
HELD = "held"

Records = Callable[[], Sequence[Record]]
"""The cluster's records, read fresh (raises StateholdError when they cannot be read)."""


@runtime_checkable
class LocalCopies(Protocol):
    """What fencing needs of this node's copies (``EngineCopies`` implements it)."""

    def local_copies(self) -> list[VolumeRef]:
        """Every copy on this node that has replication state."""
        ...

    def state(self, volume: VolumeRef) -> CopyView: ...

    def fence(self, volume: VolumeRef, epoch: int) -> CopyView:
        """``roles.fence``: a primary not named by the record at ``epoch`` turns stale."""
        ...

    def in_use(self, volume: VolumeRef) -> bool: ...

    def seal(self, volume: VolumeRef) -> bool:
        """Make the attached/mounted volume read-only; True when no write can get through."""
        ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the record says of one local primary."""

    outcome: str              # CONFIRMED | FENCED | HELD
    epoch: int                # the epoch to fence at (FENCED), else the copy's
    reason: str


def kube_records(kube: Kube) -> Records:
    """Records read through the Kube facade (records without a volume handle skipped)."""
    def read() -> list[Record]:
        out = []
        for rv in kube.list(REPLICATED_VOLUME):
            try:
                out.append(record_of(rv))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("record unreadable name=%s error=%r",
                            (rv.get("metadata") or {}).get("name"), exc)
        return out
    return read


def record_for(volume: VolumeRef, records: Iterable[Record]) -> Record | None:
    """The record of this node's copy ``volume``: same engine name (copies of a volume share
    it; the handle names the creating node's pool), the handle's pool breaking a tie.
    None when no record, or several, match."""
    named = [r for r in records if r.volume.partition("/")[2] == volume.name]
    if len(named) > 1:
        named = [r for r in named if r.volume.partition("/")[0] == volume.pool]
    return named[0] if len(named) == 1 else None


def judge(node: str, epoch: int, record: Record | None) -> Verdict:
    """A local copy that is primary at ``epoch``, against its record (module docstring)."""
    if record is None or record.epoch < 1 or not record.primary:
        return Verdict(HELD, epoch, "no record names a primary for it")
    if record.primary == node:
        if record.epoch == epoch:
            return Verdict(CONFIRMED, epoch, f"the record names {node} at epoch {epoch}")
        if record.epoch > epoch:
            return Verdict(HELD, epoch, f"the record names {node} at epoch {record.epoch}; the "
                           "controller promotes it")
    if record.epoch < epoch:
        return Verdict(HELD, epoch, f"the record is at epoch {record.epoch}, older than this "
                       f"copy's {epoch}")
    return Verdict(FENCED, record.epoch, f"the record names {record.primary} at epoch "
                   f"{record.epoch}")


class Fencing:
    """The agent's record check (one instance per agent; thread-safe)."""

    def __init__(self, node: str, copies: LocalCopies | None, records: Records | None, *,
                 interval: float = 30.0, retry: float = 5.0) -> None:
        self.node = node
        self.copies = copies
        self.records = records
        self.interval = interval
        self.retry = retry
        self._lock = threading.Lock()
        self._confirmed: set[tuple[VolumeRef, int]] = set()
        self._unsettled = True      # a primary held, or the records unreadable
        self._passes = 0
        self._passed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    # -- what the other parts ask ------------------------------------------------------------
    def allows(self, volume: VolumeRef, epoch: int) -> bool:
        """May this node stream from its copy ``volume`` as the primary of ``epoch``?"""
        if self.records is None:
            return True
        with self._lock:
            return (volume, epoch) in self._confirmed

    def confirm(self, volume: VolumeRef, epoch: int) -> None:
        """The controller promoted the copy at ``epoch`` (after recording it)."""
        with self._lock:
            self._confirmed = {c for c in self._confirmed if c[0] != volume}
            self._confirmed.add((volume, epoch))

    def demoted(self, volume: VolumeRef, view: CopyView) -> None:
        """The copy was told of a newer epoch: seal it if it is still in use here."""
        with self._lock:
            self._confirmed = {c for c in self._confirmed if c[0] != volume}
        if view.role == "stale" and self.copies is not None:
            self._seal_if_used(volume)

    # -- the pass ------------------------------------------------------------------------------
    def check(self) -> dict[VolumeRef, Verdict]:
        """One pass over this node's copies (see the module docstring); the verdicts on its
        primaries. A record that cannot be read leaves what was confirmed confirmed (an API
        outage does not stop replication) and holds the rest."""
        if self.copies is None:
            return {}
        records: Sequence[Record] | None = None
        if self.records is not None:
            try:
                records = self.records()
            except StateholdError as exc:
                log.warning("cluster records unreadable: %s; unconfirmed primaries stay held", exc)
        verdicts: dict[VolumeRef, Verdict] = {}
        for volume in self.copies.local_copies():
            try:
                verdict = self._check_one(volume, records)
            except StateholdError as exc:  # a stream holding the copy's lock: next pass
                log.warning("fencing check failed volume=%s error=%s", volume, exc)
                verdict = Verdict(HELD, 0, f"{type(exc).__name__}: {exc}")
            if verdict is not None:
                verdicts[volume] = verdict
        with self._lock:
            self._unsettled = (self.records is not None and records is None) or any(
                v.outcome == HELD for v in verdicts.values())
            self._passes += 1
            self._passed.notify_all()
        return verdicts

    def _check_one(self, volume: VolumeRef, records: Sequence[Record] | None) -> Verdict | None:
        assert self.copies is not None
        view = self.copies.state(volume)
        if view.role != "primary":
            if view.role == "stale":  # fenced (a replica in use is a reader's business)
                self._seal_if_used(volume)
            return None
        if self.records is None:
            return Verdict(CONFIRMED, view.epoch, "standalone")
        if records is None:
            return Verdict(HELD, view.epoch, "the cluster records cannot be read")
        verdict = judge(self.node, view.epoch, record_for(volume, records))
        if verdict.outcome == CONFIRMED:
            self.confirm(volume, view.epoch)
        elif verdict.outcome == FENCED:
            with self._lock:
                self._confirmed = {c for c in self._confirmed if c[0] != volume}
            after = self.copies.fence(volume, verdict.epoch)
            log.warning("copy fenced by the cluster record volume=%s epoch=%d -> %s/%d (%s)",
                        volume, view.epoch, after.role, after.epoch, verdict.reason)
            self._seal_if_used(volume)
        else:
            with self._lock:
                self._confirmed.discard((volume, view.epoch))
            log.info("primary held volume=%s epoch=%d: %s", volume, view.epoch, verdict.reason)
        return verdict

    def _seal_if_used(self, volume: VolumeRef) -> None:
        assert self.copies is not None
        try:
            if self.copies.in_use(volume) and not self.copies.seal(volume):
                log.error("copy %s is fenced but its filesystem could not be made read-only "
                          "(a writer holds a file open and it cannot be shut down); retried "
                          "at the next pass", volume)
        except StateholdError as exc:
            log.error("sealing the fenced copy %s failed: %s", volume, exc)

    # -- the loop ------------------------------------------------------------------------------
    def start(self, stop: threading.Event, *, wait: float) -> bool:
        """Run the first pass and then every ``interval`` (``retry`` while unsettled) until
        ``stop``; return once the first pass is done or after ``wait`` seconds (False)."""
        if self.copies is None:
            return True
        self._thread = threading.Thread(target=self._run, args=(stop,), name="fencing",
                                        daemon=True)
        self._thread.start()
        with self._lock:
            return self._passed.wait_for(lambda: self._passes > 0, timeout=wait)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.check()
            except Exception:  # a bug must not end the fencing loop
                log.exception("fencing pass failed")
            with self._lock:
                pause = self.retry if self._unsettled else self.interval
            stop.wait(pause)

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class _Delegating:
    """Every :class:`~statehold.agent.copies.Copies` call passed on to ``inner``."""

    def __init__(self, inner: Copies, fencing: Fencing) -> None:
        self.inner = inner
        self.fencing = fencing
        self.wire_versions = inner.wire_versions

    def state(self, volume: VolumeRef) -> CopyView:
        return self.inner.state(volume)

    def spec(self, volume: VolumeRef) -> VolumeSpec:
        return self.inner.spec(volume)

    def create(self, volume: VolumeRef, spec: VolumeSpec) -> CopyView:
        return self.inner.create(volume, spec)

    def apply(self, volume: VolumeRef, frames: Iterable[bytes]) -> Applied:
        return self.inner.apply(volume, frames)

    def stream(self, volume: VolumeRef, *, epoch: int, remote: CopyView, peer: str,
               point: str | None = None) -> Outgoing:
        return self.inner.stream(volume, epoch=epoch, remote=remote, peer=peer, point=point)

    def acknowledged(self, volume: VolumeRef, point: str, *, peer: str) -> None:
        self.inner.acknowledged(volume, point, peer=peer)

    def promote(self, volume: VolumeRef, epoch: int) -> CopyView:
        return self.inner.promote(volume, epoch)

    def demote(self, volume: VolumeRef, epoch: int) -> CopyView:
        return self.inner.demote(volume, epoch)

    def locate(self, volume: VolumeRef) -> VolumeRef:
        return self.inner.locate(volume)

    def in_use(self, volume: VolumeRef) -> bool:
        return self.inner.in_use(volume)

    def release(self, volume: VolumeRef, *, whole: bool = False) -> None:
        self.inner.release(volume, whole=whole)


class GatedCopies(_Delegating):
    """The replication loop's view: a primary the fencing has not confirmed is refused
    (FailedPrecondition), so nothing is streamed from it."""

    def _check(self, volume: VolumeRef, epoch: int) -> None:
        if not self.fencing.allows(volume, epoch):
            raise FailedPrecondition(f"{volume} is a primary at epoch {epoch} that the cluster "
                                     "record has not confirmed yet; it is not replicated "
                                     "until it is (docs/design/replication.md §8.4)")

    def state(self, volume: VolumeRef) -> CopyView:
        view = self.inner.state(volume)
        if view.role == "primary":
            self._check(volume, view.epoch)
        return view

    def stream(self, volume: VolumeRef, *, epoch: int, remote: CopyView, peer: str,
               point: str | None = None) -> Outgoing:
        self._check(volume, epoch)
        return self.inner.stream(volume, epoch=epoch, remote=remote, peer=peer, point=point)


class WatchfulCopies(_Delegating):
    """The agent API's view: ``Promote`` confirms the new epoch (the controller recorded it
    first), ``Demote`` seals a copy that is still in use here."""

    def promote(self, volume: VolumeRef, epoch: int) -> CopyView:
        view = self.inner.promote(volume, epoch)
        if view.role == "primary":
            self.fencing.confirm(volume, view.epoch)
        return view

    def demote(self, volume: VolumeRef, epoch: int) -> CopyView:
        view = self.inner.demote(volume, epoch)
        self.fencing.demoted(volume, view)
        return view

