"""The operator's wiring: which reconciler runs for which kind in each role, and the
periodic work beside them. kopf itself stays behind :mod:`statehold.kube.kopf_runtime`;
each handler re-reads its object through the facade, calls the pure reconciler in this
package, and translates its Result into kopf's retry model (retry later with exponential
backoff, or give up).

Two roles, one process each:

* ``node`` (in the DaemonSet, one per node): StoragePools whose ``spec.node`` is this node,
  VolumeBackups, VolumeRestores, StatefulSetBackups and StatefulSetRestores labelled
  ``statehold.io/node=<this node>`` (and of those VolumeBackups, the ones annotated
  ``statehold.io/forget``). kopf keeps its progress in
  annotations prefixed with the node name, so agents never fight over them.
* ``cluster`` (the operator Deployment, behind a Lease): BackupTargets, BackupSchedules
  and the cluster half of VolumeBackups, VolumeRestores, StatefulSetBackups and
  StatefulSetRestores (checks, then pin to a node);
  given the node agents' port (``agents``), ReplicatedVolumes too, on changes and on a
  ticker that also reads Node health: out-of-service failover, and moves on cordon (the
  ticker's pass reads every Node, so no Node watch is needed); given ``grants``, the node
  plugin's Secrets and exec per namespace (:mod:`node_grants`): on a change of a
  BackupTarget or StatefulSetBackup, before that change's other handlers (a backup is
  pinned to its node only after its namespace's grants), and on a ticker (revocations).

Periodic work (pool capacity every minute, schedule, gc-schedule and verify-schedule ticks
every 30 s, each agent's look for a gc or verify requested of it every 30 s) runs in plain threads
(:class:`Ticker`) rather than kopf timers: kopf puts a finalizer on every object with a
timer, so deleting a StoragePool of a dead node, or any schedule while the operator is
down, would hang.
"""


from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from statehold.controller import (
    autoexpand,
    backups,
    node_grants,
    pools,
    qos,
    replication,
    restores,
    schedules,
    shared_backups,
    statefulset_backups,
    statefulset_restores,
    target_gc,
    target_status,
    target_verify,
)
from statehold.controller.metrics import OperatorMetrics
from statehold.controller.problems import Result, backoff
from statehold.controller.replicas import Agents
from statehold.controller.report import Clock
from statehold.engine.node import Node
from statehold.errors import NotFound, StateholdError
from statehold.kube import kopf_runtime
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    BACKUP_TARGET,
    REPLICATED_VOLUME,
    STATEFUL_SET_BACKUP,
    STATEFUL_SET_RESTORE,
    STORAGE_POOL,
    VOLUME_BACKUP,
    VOLUME_RESTORE,
    Kind,
)
from statehold.shared.service import SharedVolumes

log = logging.getLogger("statehold.operator")
Reconcile = Callable[[Obj], Result]


def utcnow() -> datetime:
    return datetime.now(UTC)


def outcome(result: Result, retry: int) -> None:
    """Result -> kopf's vocabulary (raises for retry/failed)."""
    if result.outcome == "retry":
        kopf_runtime.retry_later(result.message, max(result.retry_after, backoff(retry)))
    if result.outcome == "failed":
        kopf_runtime.give_up(result.message)


def _handler(kube: Kube, kind: Kind, reconcile: Reconcile, *,
             metrics: OperatorMetrics | None = None) -> Callable[..., None]:
    if metrics is not None:
        reconcile = metrics.instrument(kube, kind, reconcile)

    def handle(name: str, namespace: str | None, retry: int = 0, **_: Any) -> None:
        try:
            obj = kube.get(kind, name, namespace)
        except NotFound:
            return  # deleted meanwhile: nothing to do
        outcome(reconcile(obj), retry)

    return handle


def shared_volumes(node: Node) -> SharedVolumes:
    """Shared mode as this node's agent sees it: built from the same home as the node's CSI
    plugin, so the root registry and the native share mounts are the plugin's."""
    return SharedVolumes(node.home)


def node_registry(kube: Kube, node: Node, node_name: str, now: Clock = utcnow,
                  shared: SharedVolumes | None = None,
                  metrics: OperatorMetrics | None = None) -> kopf_runtime.Registry:
    reg = kopf_runtime.new_registry()
    handler = functools.partial(_handler, metrics=metrics)
    mine = {backups.NODE_LABEL: node_name}
    shared = shared or shared_volumes(node)

    def on_node(spec: Any, **_: Any) -> bool:
        return bool(spec.get("node") == node_name)

    def to_forget(meta: Any, **_: Any) -> bool:
        return (meta.get("annotations") or {}).get(backups.FORGET_ANNOTATION) == "true"

    pool = handler(kube, STORAGE_POOL, lambda o: pools.reconcile_pool(kube, o, node, node_name, now))
    kopf_runtime.on_changes(reg, STORAGE_POOL, pool, id="pool", when=on_node)
    kopf_runtime.on_changes(reg, VOLUME_BACKUP, handler(
        kube, VOLUME_BACKUP, lambda o: backups.run_backup(kube, o, node, node_name, now, shared)),
        id="backup", labels=mine)
    kopf_runtime.on_changes(reg, VOLUME_BACKUP, handler(
        kube, VOLUME_BACKUP, lambda o: backups.forget_backup(kube, o, node_name, now)),
        id="forget", labels=mine, when=to_forget)
    kopf_runtime.on_changes(reg, VOLUME_RESTORE, handler(
        kube, VOLUME_RESTORE, lambda o: restores.run_restore(kube, o, node, node_name, now, shared)),
        id="restore", labels=mine)
    kopf_runtime.on_changes(reg, STATEFUL_SET_BACKUP, handler(
        kube, STATEFUL_SET_BACKUP,
        lambda o: statefulset_backups.run_set_backup(kube, o, node, node_name, now)),
        id="set-backup", labels=mine)
    kopf_runtime.on_changes(reg, STATEFUL_SET_RESTORE, handler(
        kube, STATEFUL_SET_RESTORE,
        lambda o: statefulset_restores.run_set_restore(kube, o, node, node_name, now)),
        id="set-restore", labels=mine)
    return reg


def cluster_registry(kube: Kube, now: Clock = utcnow,
                     agents: Agents | None = None,
                     metrics: OperatorMetrics | None = None, *,
                     move_on_cordon: bool = True,
                     grants: node_grants.NodeGrants | None = None) -> kopf_runtime.Registry:
    reg = kopf_runtime.new_registry()
    handler = functools.partial(_handler, metrics=metrics)
    if grants is not None:  # first: kopf runs one object's handlers in this order
        for kind in (BACKUP_TARGET, STATEFUL_SET_BACKUP):  # (not counted as reconciles)
            kopf_runtime.on_changes(reg, kind, _handler(
                kube, kind, functools.partial(_grant, grants)), id="node-grants")
    if agents is not None:  # replicated volumes need the node agents (replication.py)
        kopf_runtime.on_changes(reg, REPLICATED_VOLUME, handler(
            kube, REPLICATED_VOLUME,
            lambda o: replication.reconcile_volume(
                kube, agents, o, now, move_on_cordon=move_on_cordon)[0]), id="replication")
    target = handler(kube, BACKUP_TARGET, lambda o: target_status.reconcile_target(kube, o, now))
    kopf_runtime.on_changes(reg, BACKUP_TARGET, target, id="target")
    sched = handler(kube, BACKUP_SCHEDULE, lambda o: schedules.reconcile_schedule(kube, o, now))
    kopf_runtime.on_changes(reg, BACKUP_SCHEDULE, sched, id="schedule")
    kopf_runtime.on_changes(reg, VOLUME_BACKUP, handler(
        kube, VOLUME_BACKUP, lambda o: backups.assign_backup(kube, o, now)), id="assign")
    kopf_runtime.on_changes(reg, VOLUME_RESTORE, handler(
        kube, VOLUME_RESTORE, lambda o: restores.assign_restore(kube, o, now)), id="assign")
    kopf_runtime.on_changes(reg, STATEFUL_SET_BACKUP, handler(
        kube, STATEFUL_SET_BACKUP, lambda o: statefulset_backups.assign_set_backup(kube, o, now)),
        id="assign")
    kopf_runtime.on_changes(reg, STATEFUL_SET_RESTORE, handler(
        kube, STATEFUL_SET_RESTORE, lambda o: statefulset_restores.assign_set_restore(kube, o, now)),
        id="assign")
    return reg


def _grant(grants: node_grants.NodeGrants, obj: Obj) -> Result:
    """The node plugin's grants in obj's namespace, now (a refusal is retried)."""
    try:
        grants.sync(obj["metadata"]["namespace"])
    except StateholdError as exc:
        return Result.retry(f"node grants: {exc}", 10.0)
    return Result()


class Ticker:
    """Calls ``tick`` every ``interval`` seconds in a thread until stopped; a failing tick
    is logged and retried at the next interval."""

    def __init__(self, name: str, interval: float, tick: Callable[[], None], *,
                 immediate: bool = False) -> None:
        self.name, self.interval, self.tick, self.immediate = name, interval, tick, immediate

    def run(self, stop: threading.Event) -> None:
        first = self.immediate
        while first or not stop.wait(self.interval):
            first = False
            try:
                self.tick()
            except Exception:  # a periodic refresh must survive anything one round throws
                log.exception("ticker=%s failed; next try in %ss", self.name, self.interval)


def _each(kube: Kube, kind: Kind, reconcile: Reconcile, *,
          metrics: OperatorMetrics | None = None) -> Callable[[], None]:
    if metrics is not None:
        reconcile = metrics.instrument(kube, kind, reconcile)

    def tick() -> None:
        for obj in kube.list(kind):
            result = reconcile(obj)
            if result.outcome in ("retry", "failed"):
                log.info("kind=%s name=%s outcome=%s %s", kind.kind, obj["metadata"]["name"],
                         result.outcome, result.message)

    return tick


def node_tickers(kube: Kube, node: Node, node_name: str, now: Clock = utcnow, *,
                 capacity_interval: float = 60.0,
                 shared: SharedVolumes | None = None, autoexpand_interval: float = 30.0,
                 qos_interval: float = 10.0, gc_interval: float = 30.0,
                 metrics: OperatorMetrics | None = None) -> list[Ticker]:
    """Capacity of this node's pools into their StoragePool status; the roots of the shared
    StorageClasses into this node's root registry (at once, then every interval), so the
    plugin here can delete or measure a shared volume another node created; claims of this
    node's volumes grown before they fill (autoexpand); claim I/O limits and every attached
    volume's throttle rules (qos); the repository gc the operator asked of this node."""
    volumes = shared or shared_volumes(node)
    limits = qos.QosPass(kube, node, node_name)

    def roots() -> None:
        shared_backups.register_class_roots(kube, volumes)

    return [
        Ticker("capacity", capacity_interval, _each(
            kube, STORAGE_POOL, lambda o: pools.reconcile_pool(kube, o, node, node_name, now),
            metrics=metrics)),
        Ticker("shared-roots", capacity_interval, roots, immediate=True),
        Ticker("autoexpand", autoexpand_interval, lambda: log_reports(
            autoexpand.autoexpand_pass(kube, node, node_name, now))),
        Ticker("qos", qos_interval, lambda: log_reports(limits.run()), immediate=True),
        Ticker("gc", gc_interval, lambda: log_gc(target_gc.gc_pass(kube, node_name, now)),
               immediate=True),
        Ticker("verify", gc_interval, lambda: log_verify(target_verify.verify_pass(kube, node_name, now)),
               immediate=True),
    ]


def cluster_tickers(kube: Kube, now: Clock = utcnow, *, schedule_interval: float = 30.0,
                    agents: Agents | None = None,
                    replication_interval: float = 10.0,
                    metrics: OperatorMetrics | None = None,
                    move_on_cordon: bool = True,
                    grants: node_grants.NodeGrants | None = None,
                    grants_interval: float = 30.0) -> list[Ticker]:
    """Every BackupSchedule, and every BackupTarget's gc schedule, so slots come due without
    a change to the object; with the agents, every replicated volume (records for new PVs,
    Node health for failover); with ``grants``, every namespace's node grants (at once,
    then every ``grants_interval``: a backup that ended loses its exec)."""
    tickers = [Ticker("schedules", schedule_interval, _each(
        kube, BACKUP_SCHEDULE, lambda o: schedules.reconcile_schedule(kube, o, now),
        metrics=metrics)),
        Ticker("gc-schedules", schedule_interval, lambda: target_gc.tick_all(kube, now)),
        Ticker("verify-schedules", schedule_interval, lambda: target_verify.tick_all(kube, now))]
    if agents is not None:
        tickers.append(Ticker("replication", replication_interval,
                              lambda: log_results(replication.replication_pass(
                                  kube, agents, now, move_on_cordon=move_on_cordon))))
    if grants is not None:
        keep = grants

        def regrant() -> None:  # each change is logged by the pass itself
            keep.sync_all()

        tickers.append(Ticker("node-grants", grants_interval, regrant, immediate=True))
    return tickers


def log_reports(reports: Mapping[str, object]) -> None:
    """One line per claim a volume pass acted on (autoexpand, qos)."""
    for name, report in reports.items():
        if getattr(report, "outcome", "") not in ("within", "skipped"):
            log.info("name=%s %s", name, report)


def log_gc(outcomes: Mapping[str, str]) -> None:
    for name, outcome_ in outcomes.items():
        log.info("gc target=%s outcome=%s", name, outcome_)


def log_verify(outcomes: Mapping[str, str]) -> None:
    for name, outcome_ in outcomes.items():
        log.info("verify target=%s outcome=%s", name, outcome_)


def log_results(results: dict[str, Result]) -> None:
    for name, result in results.items():
        if result.outcome in ("retry", "failed"):
            log.info("name=%s outcome=%s %s", name, result.outcome, result.message)


def settings_for(role: str, node_name: str | None) -> kopf_runtime.Settings:
    """kopf settings per role: each node agent keeps its progress under its own prefix."""
    prefix = f"{node_name}.agent.statehold.io" if role == "node" else "operator.statehold.io"
    return kopf_runtime.settings_for(prefix)


def run(registry: kopf_runtime.Registry, settings: kopf_runtime.Settings, stop: threading.Event,
        tickers: Sequence[Ticker] = ()) -> None:
    """Run kopf and the tickers until stop is set."""
    threads = [threading.Thread(target=t.run, args=(stop,), name=f"ticker-{t.name}", daemon=True)
               for t in tickers]
    for th in threads:
        th.start()
    try:
        kopf_runtime.run_kopf(registry, settings, stop)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=5)
