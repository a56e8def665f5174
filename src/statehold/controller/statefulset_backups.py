"""StatefulSetBackup handlers: a StatefulSet backed up as one unit.

Two halves, like VolumeBackup (:mod:`statehold.controller.backups`):

* :func:`assign_set_backup` (cluster operator): the target exists, the set is found (by
  name, or a selector that picks exactly one), each of its claims
  (``<template>-<set>-<ordinal>``) is bound to a Statehold local volume, and all are on one
  node -> status lists the members, then the object is labelled with that node. Members on
  several nodes are refused with the condition ``MembersOnSeveralNodes`` (the engine's
  group snapshot freezes the volumes of one host).
* :func:`run_set_backup` (the agent on that node), in this order:

  0. the hooks' exec granted (:func:`hooks_granted`; the operator grants it while the
     backup is pending or running: :mod:`statehold.controller.node_grants`);
  1. every pre-hook, then one group snapshot of every member (freeze all, reflink all, thaw
     all: :meth:`statehold.engine.node.Node.snapshot_group`), then every post-hook, even
     when the snapshot failed (:func:`statefulset_hooks.capture`). Hook runs go to
     ``status.hooks`` and to Events;
  2. each member backed up from its snapshot in the group through the one volume backup
     service (:func:`statehold.backup.volumes.backup_volume`, keyed by the object's uid, so
     the service names the group's own snapshot and reads it; it stays as the next parent);
  3. one group manifest in the repository (:mod:`statehold.backup.groupmanifest`) naming
     the set, its claim templates and ordinals, and each member's backup;
  4. with a schedule's retention, the set's group backups of that schedule pruned in the
     repository as units, and the StatefulSetBackups of removed groups deleted
     (:mod:`statehold.controller.set_retention`).

Every member backup and the group manifest record the object's origin (its schedule's, or
none: made by hand, format §6.2), and each member carries the label ``group`` (the group's
id, known from the snapshot's instant before any member is backed up).

Each step is recorded in status, so a retry resumes after the last one done: a snapshot
taken is not taken again, a member backed up is not read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from statehold.backup.groupmanifest import GroupManifest, Member, new_group_id, save_group
from statehold.backup.volumes import snapshot_name
from statehold.controller import backup_runner, set_retention
from statehold.controller.backups import NODE_LABEL, not_yet_assigned, pin_to_node
from statehold.controller.locate import check_pvc_bound, locate
from statehold.controller.problems import Problem, Result
from statehold.controller.pruning import CONDITION as RETENTION
from statehold.controller.pruning import origin_of
from statehold.controller.report import Clock, Reporter, report_problem
from statehold.controller.shared_locate import is_shared_pv
from statehold.controller.statefulset_hooks import Capture, HookRun, capture, parse_hooks, pod_name
from statehold.controller.statefulsets import (
    SET_LABEL,
    find_statefulset,
    match_labels,
    members,
    ordinals,
    templates,
)
from statehold.controller.targets import GRANT_RETRY, TargetConfig, resolve_target
from statehold.engine.groups import GroupSnapshot
from statehold.engine.node import Node
from statehold.errors import (
    Aborted,
    CommandError,
    Corrupt,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfCapacity,
    PermissionDenied,
    StateholdError,
    Temporary,
    Unavailable,
)
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import POD, PV, PVC, STATEFUL_SET, STATEFUL_SET_BACKUP
from statehold.kube.objects import as_pv, as_pvc

log = logging.getLogger("statehold.controller.statefulset_backups")

FINAL = ("Completed", "Failed")
GROUP_PREFIX = "ssb-"
"""Engine group snapshots of StatefulSetBackups are named ``ssb-<20 hex of the uid>``."""
DEFAULT_FREEZE_TIMEOUT = 10.0
RETRYABLE = (Temporary, Aborted, Unavailable, CommandError)


def group_name(uid: str) -> str:
    return GROUP_PREFIX + hashlib.blake2b(uid.encode(), digest_size=10).hexdigest()


# -- cluster side ----------------------------------------------------------------------------

def assign_set_backup(kube: Kube, obj: Obj, now: Clock) -> Result:
    """Find the set and its claims; pin the object to the node holding all of them."""
    rep = Reporter(kube, obj, now)
    meta, spec = obj["metadata"], obj["spec"]
    if rep.status.get("phase") in FINAL or (meta.get("labels") or {}).get(NODE_LABEL):
        return Result("skipped")
    ns = meta["namespace"]
    try:
        resolve_target(kube, ns, spec["target"])
        sts = find_statefulset(kube, ns, spec.get("statefulSetName"), spec.get("selector"))
        set_name = sts["metadata"]["name"]
        tmpl = templates(sts)
        if not tmpl:
            raise Problem("NoClaimTemplates", f"StatefulSet {set_name} has no "
                          "volumeClaimTemplates: it keeps no state of its own", permanent=True)
        ords = ordinals(sts)
        if not ords:
            raise Problem("NoReplicas", f"StatefulSet {set_name} has 0 replicas: no claim to "
                          "back up", permanent=True)
        pre, post = parse_hooks(spec.get("hooks"))
        for hook in pre + post:
            outside = sorted(set(hook.ordinals or ()) - set(ords))
            if outside:
                raise Problem("InvalidHook", f"hook {hook.name} names ordinals {outside}, which "
                              f"StatefulSet {set_name} does not have ({ords[0]}..{ords[-1]})",
                              permanent=True)
        located = []
        for m in members(set_name, ords, tmpl):
            try:
                pvc = as_pvc(kube.get(PVC, m.claim, ns))
            except NotFound:
                raise Problem("ClaimNotFound", f"claim {ns}/{m.claim} (template {m.template}, "
                              f"pod {set_name}-{m.ordinal}) does not exist yet",
                              retry_after=30) from None
            pv = as_pv(kube.get(PV, check_pvc_bound(pvc)))
            if is_shared_pv(pv):
                raise Problem("UnsupportedVolume", f"claim {m.claim} is a shared volume; a group "
                              "snapshot takes Statehold local volumes", permanent=True)
            located.append((m, locate(pvc, pv)))
        nodes = sorted({loc.node for _, loc in located})
        if len(nodes) > 1:
            where = "; ".join(f"{m.claim} on {loc.node}" for m, loc in located)
            raise Problem("MembersOnSeveralNodes", f"the claims of StatefulSet {set_name} are on "
                          f"{len(nodes)} nodes ({where}); a group snapshot takes the volumes of "
                          "one node (multi-node group snapshots are not implemented)",
                          permanent=True)
    except Problem as p:
        return report_problem(rep, p)
    node = nodes[0]
    listed = [{"ordinal": m.ordinal, "template": m.template, "claim": m.claim,
               "volumeHandle": loc.handle, "bytesTotal": loc.size} for m, loc in located]
    return pin_to_node(
        kube, rep, STATEFUL_SET_BACKUP, obj, node,
        {"statefulSet": set_name, "replicas": len(ords), "members": listed,
         "bytesTotal": sum(loc.size for _, loc in located), "progress": 0},
        {SET_LABEL: set_name},
        scheduled=f"{len(located)} claim(s) of StatefulSet {set_name} "
                  f"({len(ords)} pod(s) x {len(tmpl)} template(s)) on node {node}")


# -- node side -------------------------------------------------------------------------------

def run_set_backup(kube: Kube, obj: Obj, node: Node, node_name: str, now: Clock) -> Result:
    """Hooks and one group snapshot, each member backed up, one group manifest."""
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    meta, spec, st = obj["metadata"], obj["spec"], rep.status
    if (meta.get("labels") or {}).get(NODE_LABEL) != node_name:
        return Result("skipped")
    if st.get("phase") in FINAL:
        return _retention_after(kube, rep) if set_retention.pending(obj) else Result("skipped")
    if (wait := not_yet_assigned(obj, "members")) is not None:
        return wait
    ns, set_name = meta["namespace"], str(st.get("statefulSet") or "")
    try:
        target = resolve_target(kube, ns, spec["target"])
        try:
            sts = kube.get(STATEFUL_SET, set_name, ns)
        except NotFound:
            raise Problem("StatefulSetNotFound", f"StatefulSet {ns}/{set_name} was deleted",
                          permanent=True) from None
        volumes = []
        for m in st["members"]:
            pool_name, _, volume = str(m.get("volumeHandle", "")).partition("/")
            try:
                node.pool(pool_name).get_volume(volume)
            except NotFound as exc:
                raise Problem("VolumeNotFound", f"claim {m['claim']}: volume {pool_name}/{volume} "
                              f"is not on node {node_name}: {exc}", permanent=True) from exc
            volumes.append((pool_name, volume))
        if not st.get("snapshotTime"):
            hooks_granted(kube, ns, set_name, [int(m["ordinal"]) for m in st["members"]],
                          spec.get("hooks"))
    except Problem as p:
        return report_problem(rep, p)
    if st.get("phase") != "Running":
        rep.event("Normal", "Started", f"backing up StatefulSet {set_name}: {len(volumes)} "
                  f"volume(s) to {target.describe()}")
    rep.update({"phase": "Running", "startTime": st.get("startTime") or rfc3339(now()),
                "node": node_name},
               condition=("Ready", False, "Running", "hooks and group snapshot"
                          if not st.get("snapshotTime") else "backing up the members"))
    if not st.get("snapshotTime"):
        stopped = _snapshot(kube, rep, node, volumes)
        if stopped is not None:
            return stopped
    return _back_up_members(kube, rep, node, node_name, target, sts, volumes)


def _retention_after(kube: Kube, rep: Reporter) -> Result:
    """A Completed StatefulSetBackup whose retention is still to apply: apply it now."""
    try:
        target = resolve_target(kube, rep.obj["metadata"]["namespace"], rep.obj["spec"]["target"])
    except Problem as p:
        rep.update(condition=(RETENTION, False, p.reason, p.message))
        return Result.retry(p.message, p.retry_after)
    return set_retention.apply_set_retention(kube, rep, target)


def hooks_granted(kube: Kube, namespace: str, set_name: str, ords: list[int],
                  hooks: dict[str, Any] | None) -> None:
    """Before any hook runs: the node plugin may exec into the set's pods only while the
    operator grants it (RoleBinding statehold-node-hooks, :mod:`node_grants`, with the
    pods' ``get`` that every exec does first). Refused -> ``HooksNotGranted``, retried:
    nothing has run yet, so nothing is left half done. A pod that is not there is the
    hook's own failure, recorded when it runs."""
    pre, post = parse_hooks(hooks)
    first = next((h for h in pre + post), None)
    if first is None:
        return
    ordinal = min(first.ordinals if first.ordinals else ords, default=0)
    try:
        kube.get(POD, pod_name(set_name, ordinal), namespace)
    except NotFound:
        return
    except PermissionDenied:
        raise Problem("HooksNotGranted", f"the hooks cannot run in the pods of StatefulSet "
                      f"{namespace}/{set_name} yet: the operator lets the node plugin exec "
                      f"there while a StatefulSetBackup with hooks is pending or running "
                      f"(RoleBinding statehold-node-hooks in {namespace}; never in the "
                      "operator's own namespace); waiting for it",
                      retry_after=GRANT_RETRY) from None


def _snapshot(kube: Kube, rep: Reporter, node: Node, volumes: list[tuple[str, str]]
              ) -> Result | None:
    """Pre-hooks, the group snapshot, post-hooks; None when the snapshot is taken and
    recorded, else the Result to return."""
    meta, spec, st = rep.obj["metadata"], rep.obj["spec"], rep.status
    uid, set_name, group = meta["uid"], str(st["statefulSet"]), group_name(meta["uid"])
    pre, post = parse_hooks(spec.get("hooks"))
    ords = sorted({int(m["ordinal"]) for m in st["members"]})
    timeout = float(spec.get("freezeTimeoutSeconds") or DEFAULT_FREEZE_TIMEOUT)
    wanted = [(p, v, snapshot_name(v, key=uid)) for p, v in volumes]

    def report(run: HookRun) -> None:  # failures at once, one Event each
        if run.failed:
            rep.event("Warning", "HookFailed", run.describe())

    cap: Capture[GroupSnapshot] = capture(
        kube, meta["namespace"], set_name, ords, pre, post,
        lambda: node.snapshot_group(group, wanted, timeout=timeout), report=report)
    for (phase, hook), pods in _succeeded(cap.runs).items():  # successes, one Event a hook
        rep.event("Normal", "HookSucceeded", f"{phase}-hook {hook} succeeded in pod(s) "
                  f"{', '.join(pods)}")
    hooks = {"hooks": [r.status() for r in cap.runs][-512:]}
    fatal = cap.fatal
    if fatal is not None:
        if cap.taken is not None:  # a post-hook failed: this snapshot is not the backup's
            with contextlib.suppress(StateholdError):
                node.delete_snapshot_group(group)
        rep.update(hooks)
        return report_problem(rep, Problem("HookFailed", fatal.describe(), permanent=True))
    if cap.error is not None or cap.taken is None:
        rep.update(hooks)
        return report_problem(rep, _snapshot_problem(cap.error), pending_phase="Running")
    g = cap.taken
    snaps = {(p, v): s for p, v, s in wanted}
    listed = [dict(m, snapshot=snaps[vol]) for m, vol in zip(st["members"], volumes, strict=True)]
    window = g.window or 0.0
    rep.update({**hooks, "groupSnapshot": group, "members": listed,
                # to the microsecond: the group's time orders a set's groups for retention,
                # and two groups within one second would tie (keepLast then kept either)
                "snapshotTime": datetime.fromtimestamp(g.created_at, UTC).strftime(
                    "%Y-%m-%dT%H:%M:%S.%fZ"),
                "freezeWindowSeconds": round(window, 6), "consistency": cap.consistency},
               condition=("Ready", False, "Running", "backing up the members"))
    rep.event("Normal", "Snapshotted", f"group snapshot {group}: {len(wanted)} volume(s) at one "
              f"instant, {g.frozen} filesystem(s) frozen for {window * 1000:.0f} ms; "
              f"{cap.consistency.lower()}-consistent")
    return None


def _succeeded(runs: tuple[HookRun, ...]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        if not r.failed:
            out.setdefault((r.phase, r.hook), []).append(r.pod)
    return out


def _snapshot_problem(error: StateholdError | None) -> Problem:
    text = f"group snapshot: {error}"
    if isinstance(error, RETRYABLE):
        after = error.retry_after if isinstance(error, Temporary) else 30.0
        return Problem("GroupSnapshotRetrying", text, retry_after=max(after, 10.0))
    if isinstance(error, (FailedPrecondition, OutOfCapacity)):
        return Problem("GroupSnapshotRetrying", text, retry_after=60)
    return Problem("GroupSnapshotFailed", text, permanent=True)


def _back_up_members(kube: Kube, rep: Reporter, node: Node, node_name: str, target: TargetConfig,
                     sts: Obj, volumes: list[tuple[str, str]]) -> Result:
    meta, st = rep.obj["metadata"], rep.status
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    set_name, group = str(st["statefulSet"]), group_name(uid)
    listed: list[dict[str, Any]] = [dict(m) for m in st["members"]]
    created = datetime.fromisoformat(str(st["snapshotTime"]).replace("Z", "+00:00"))
    # written with the group snapshot, before any member (older agents: whole seconds)
    group_id, origin = new_group_id(created.timestamp(), key=uid), origin_of(rep.obj)
    base = {"namespace": ns, "statefulset": set_name, "statefulsetbackup": name}
    damaged: set[str] = set()
    for i, (m, (pool_name, volume)) in enumerate(zip(listed, volumes, strict=True)):
        if m.get("backupId"):
            continue
        try:
            done = backup_runner.back_up_volume(
                node.pool(pool_name), volume, target, key=uid, origin=origin,
                labels={**base, "group": group_id, "pvc": m["claim"], "template": m["template"],
                        "ordinal": str(m["ordinal"])})
        except StateholdError as exc:
            return _member_failed(rep, node, group, listed, m["claim"], exc)
        m.update(backupId=done.backup_id, bytesTotal=done.size, bytesUploaded=done.bytes_uploaded,
                 snapshot=done.snapshot)
        if done.parent_id:
            m["parentBackupId"] = done.parent_id
        damaged |= {d.backup_id for d in done.damaged}
        rep.update({"members": listed, "progress": (i + 1) * 100 // len(listed),
                    "bytesUploaded": sum(int(x.get("bytesUploaded") or 0) for x in listed)})
    manifest = GroupManifest(
        group_id=group_id, created=created.timestamp(),
        namespace=ns, set_name=set_name, replicas=int(st.get("replicas") or 0),
        ordinals_start=min(int(m["ordinal"]) for m in listed), templates=templates(sts),
        members=tuple(Member(int(m["ordinal"]), m["template"], m["claim"], m["backupId"],
                             int(m.get("bytesTotal") or 0), m.get("volumeHandle", ""))
                      for m in listed),
        selector=match_labels(sts), consistency=str(st.get("consistency") or "Crash").lower(),
        key=uid, host=node_name, labels=base, origin=origin)
    try:
        repo = backup_runner.open_repository(target)
        save_group(repo, manifest)
    except StateholdError as exc:
        return report_problem(rep, Problem("GroupManifestRetrying", f"group manifest: {exc}",
                                           retry_after=30), pending_phase="Running")
    _forget_spent_groups(node, keep=group)
    rep.update({"phase": "Completed", "groupBackupId": manifest.group_id, "progress": 100,
                "completionTime": rfc3339(rep.now())},
               condition=("Ready", True, "Completed", f"group backup {manifest.group_id}"))
    rep.event("Normal", "Completed", f"group backup {manifest.group_id} of StatefulSet {set_name}: "
              f"{len(listed)} member(s), {manifest.consistency}-consistent")
    if damaged:
        rep.event("Warning", "DamagedBackups", f"{target.describe()} holds backups that cannot be "
                  f"read: {', '.join(sorted(damaged))}; `statehold backup verify` names the damage")
    return set_retention.apply_set_retention(kube, rep, target)


def _member_failed(rep: Reporter, node: Node, group: str, listed: list[dict[str, Any]],
                   claim: str, exc: StateholdError) -> Result:
    text = f"backing up claim {claim}: {exc}"
    if isinstance(exc, (FailedPrecondition, OutOfCapacity)):
        return report_problem(rep, Problem("BackupFailed", text, retry_after=60),
                              pending_phase="Running")
    if isinstance(exc, (InvalidArgument, PermissionDenied, Corrupt, NotFound)):
        if not any(m.get("backupId") for m in listed):  # nothing kept reads the snapshots
            with contextlib.suppress(StateholdError):
                node.delete_snapshot_group(group)
        return report_problem(rep, Problem(type(exc).__name__, text, permanent=True))
    return report_problem(rep, Problem("BackupRetrying", text, retry_after=30),
                          pending_phase="Running")


def _forget_spent_groups(node: Node, *, keep: str) -> None:
    """Drop the records of this agent's earlier group snapshots whose every member snapshot
    is gone (each member's backup deleted it once a newer backup superseded it as parent)."""
    try:
        spent = [g.name for g in node.list_snapshot_groups()
                 if g.name.startswith(GROUP_PREFIX) and g.name != keep
                 and len(g.missing) == len(g.members)]
    except StateholdError as exc:
        log.warning("listing group snapshots failed: %s", exc)
        return
    for name in spent:
        try:
            node.delete_snapshot_group(name)
        except StateholdError as exc:
            log.warning("group=%s record not removed: %s", name, exc)
