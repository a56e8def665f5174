"""``statehold get|describe ...`` and ``statehold backup now`` (a PVC, or a StatefulSet as
one group with ``--statefulset``): the cluster through the facade. ``register`` also adds
the replicated-volume commands of :mod:`statehold.cli.replicas` (``volume get|promote|move``,
``node retire``).

Installed as ``kubectl-statehold`` too, so ``kubectl statehold get pools`` works. Reads go
through :class:`statehold.kube.facade.Kube` (``--kubeconfig``, else $KUBECONFIG or
~/.kube/config, else in-cluster); tests inject a ``MemoryKube`` via ``register``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import typer
import yaml

from statehold.cli import replicas
from statehold.cli.kubeshared import (
    AllNamespacesOption,
    Column,
    KubeconfigOption,
    KubeFactory,
    NamespaceOption,
    claim_of,
    connect,
    statehold_pvs,
)
from statehold.cli.output import Format, OutputOption, failures, human
from statehold.controller.locate import pv_node
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound, Temporary
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    BACKUP_TARGET,
    EVENT,
    PV,
    PVC,
    REPLICATED_VOLUME,
    STATEFUL_SET,
    STATEFUL_SET_BACKUP,
    STATEFUL_SET_RESTORE,
    STORAGE_POOL,
    VOLUME_BACKUP,
    VOLUME_RESTORE,
    VOLUME_SNAPSHOT,
    Kind,
)
from statehold.kube.objects import as_pv


def _st(o: Obj, key: str, default: Any = "") -> str:
    v = (o.get("status") or {}).get(key, default)
    return "" if v is None else str(v)


def _bytes(o: Obj, key: str) -> str:
    v = (o.get("status") or {}).get(key)
    return human(int(v)) if isinstance(v, int) else ""


def _ready(o: Obj) -> str:
    for c in (o.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return "Unknown"


def _reason(o: Obj) -> str:
    for c in (o.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("reason", ""))
    return ""


def _name(o: Obj) -> str:
    return str(o["metadata"]["name"])


def _keep(o: Obj) -> str:
    """A schedule's retention: ``7`` for keepLast alone, else ``last=3,daily=7,within=36h``."""
    rules = o["spec"].get("retention") or {"keepLast": 7}
    if set(rules) == {"keepLast"}:
        return str(rules["keepLast"])
    return ",".join(f"{k.removeprefix('keep').lower()}={v}" for k, v in rules.items())


def _ns(o: Obj) -> str:
    return str(o["metadata"].get("namespace", ""))


# kind -> (Kind, columns, wide columns, aliases)
TABLES: dict[str, tuple[Kind, list[Column], list[Column]]] = {
    "pools": (STORAGE_POOL, [
        ("NAME", _name), ("NODE", lambda o: str(o["spec"].get("node", ""))),
        ("PHASE", lambda o: _st(o, "phase", "Pending")), ("CAPACITY", lambda o: _bytes(o, "capacity")),
        ("ALLOCATED", lambda o: _bytes(o, "allocated")), ("FREE", lambda o: _bytes(o, "free"))],
        [("PROVISIONED", lambda o: _bytes(o, "provisioned")), ("VOLUMES", lambda o: _st(o, "volumes")),
         ("REASON", _reason)]),
    "volumes": (PV, [
        ("NAME", _name), ("CLAIM", claim_of), ("NODE", lambda o: pv_node(as_pv(o)) or ""),
        ("SIZE", lambda o: str(o["spec"].get("capacity", {}).get("storage", ""))),
        ("STATUS", lambda o: _st(o, "phase"))],
        [("HANDLE", lambda o: str(o["spec"]["csi"].get("volumeHandle", ""))),
         ("STORAGECLASS", lambda o: str(o["spec"].get("storageClassName", "")))]),
    "backups": (VOLUME_BACKUP, [
        ("NAME", _name), ("PVC", lambda o: str(o["spec"]["persistentVolumeClaimName"])),
        ("TARGET", lambda o: str(o["spec"]["target"])), ("PHASE", lambda o: _st(o, "phase", "Pending")),
        ("PROGRESS", lambda o: f"{_st(o, 'progress', 0)}%"), ("SIZE", lambda o: _bytes(o, "bytesTotal"))],
        [("UPLOADED", lambda o: _bytes(o, "bytesUploaded")), ("NODE", lambda o: _st(o, "node")),
         ("BACKUP-ID", lambda o: _st(o, "backupId")), ("REASON", _reason)]),
    "schedules": (BACKUP_SCHEDULE, [
        ("NAME", _name), ("SCHEDULE", lambda o: str(o["spec"]["schedule"])),
        ("TARGET", lambda o: str(o["spec"]["target"])),
        ("KEEP", _keep),
        ("LAST", lambda o: _st(o, "lastScheduleTime")), ("READY", _ready)],
        [("NEXT", lambda o: _st(o, "nextScheduleTime")), ("REASON", _reason)]),
    "setbackups": (STATEFUL_SET_BACKUP, [
        ("NAME", _name), ("STATEFULSET", lambda o: _st(o, "statefulSet")),
        ("TARGET", lambda o: str(o["spec"]["target"])), ("PHASE", lambda o: _st(o, "phase", "Pending")),
        ("MEMBERS", lambda o: str(len((o.get("status") or {}).get("members") or []))),
        ("CONSISTENCY", lambda o: _st(o, "consistency")),
        ("PROGRESS", lambda o: f"{_st(o, 'progress', 0)}%")],
        [("GROUP-ID", lambda o: _st(o, "groupBackupId")), ("NODE", lambda o: _st(o, "node")),
         ("REASON", _reason)]),
}
ALIASES = {"pool": "pools", "storagepool": "pools", "storagepools": "pools", "sp": "pools",
           "volume": "volumes", "pv": "volumes", "backup": "backups", "volumebackup": "backups",
           "volumebackups": "backups", "vb": "backups", "schedule": "schedules",
           "backupschedule": "schedules", "backupschedules": "schedules", "bs": "schedules",
           "setbackup": "setbackups", "statefulsetbackup": "setbackups",
           "statefulsetbackups": "setbackups", "ssb": "setbackups"}
DESCRIBE_KINDS: dict[str, Kind] = {
    "pools": STORAGE_POOL, "volumes": PV, "backups": VOLUME_BACKUP, "schedules": BACKUP_SCHEDULE,
    "target": BACKUP_TARGET, "targets": BACKUP_TARGET, "backuptarget": BACKUP_TARGET,
    "restore": VOLUME_RESTORE, "restores": VOLUME_RESTORE, "volumerestore": VOLUME_RESTORE,
    "setbackups": STATEFUL_SET_BACKUP, "setrestore": STATEFUL_SET_RESTORE,
    "setrestores": STATEFUL_SET_RESTORE, "statefulsetrestore": STATEFUL_SET_RESTORE,
    "ssr": STATEFUL_SET_RESTORE,
}


def resolve_kind(word: str) -> str:
    key = ALIASES.get(word.lower(), word.lower())
    if key not in TABLES and key not in DESCRIBE_KINDS:
        raise InvalidArgument(f"unknown kind {word!r}: use pools, volumes, backups, schedules, "
                              "setbackups (describe also takes targets, restores and "
                              "setrestores)")
    return key


def list_objects(kube: Kube, key: str, namespace: str | None) -> list[Obj]:
    if key == "volumes":
        return statehold_pvs(kube, namespace)
    kind = TABLES[key][0]
    return kube.list(kind, namespace if kind.namespaced else None)


def describe_text(kube: Kube, obj: Obj) -> str:
    """kubectl-describe-like: the object (without managed noise) and its Events."""
    shown = {k: v for k, v in obj.items() if k != "metadata"}
    meta = {k: v for k, v in obj["metadata"].items() if k in (
        "name", "namespace", "labels", "annotations", "creationTimestamp", "ownerReferences")}
    text = yaml.safe_dump({"metadata": meta, **shown}, sort_keys=False).rstrip()
    uid = obj["metadata"].get("uid")
    ns = obj["metadata"].get("namespace") or "default"
    events = [e for e in kube.list(EVENT, ns) if (e.get("involvedObject") or {}).get("uid") == uid]
    lines = [text, "Events:"]
    if not events:
        lines.append("  <none>")
    for e in sorted(events, key=lambda e: str(e.get("lastTimestamp", ""))):
        lines.append(f"  {e.get('type', ''):<8} {e.get('reason', ''):<20} "
                     f"x{e.get('count', 1):<3} {e.get('message', '')}")
    return "\n".join(lines)


def follow(kube: Kube, vb: Obj, timeout: float, kind: Kind = VOLUME_BACKUP) -> None:
    """Watch a VolumeBackup (or a StatefulSetBackup) until Completed (return) or Failed
    (FailedPrecondition); progress goes to stderr."""
    deadline = time.monotonic() + timeout
    ns, name = vb["metadata"]["namespace"], vb["metadata"]["name"]
    rv = vb["metadata"]["resourceVersion"]
    last = ""
    while time.monotonic() < deadline:
        for ev in kube.watch(kind, ns, resource_version=rv,
                             timeout=max(1.0, min(30.0, deadline - time.monotonic()))):
            rv = ev.object["metadata"]["resourceVersion"]
            if ev.object["metadata"]["name"] != name:
                continue
            if ev.type == "DELETED":
                raise NotFound(f"{kind.kind} {ns}/{name} was deleted")
            phase = _st(ev.object, "phase", "Pending")
            line = f"{phase} {_st(ev.object, 'progress', 0)}% {_reason(ev.object)}".strip()
            if line != last:
                typer.echo(f"{name}: {line}", err=True)
                last = line
            if phase == "Completed":
                return
            if phase == "Failed":
                message = next((c.get("message", "") for c in (ev.object.get("status") or {}).get(
                    "conditions") or [] if c.get("type") == "Ready"), "")
                raise FailedPrecondition(f"{kind.kind} {name} failed: {message}")
    raise Temporary(f"{kind.kind} {ns}/{name} did not finish within {timeout:.0f} s")


def related_objects(kube: Kube, target: str, namespace: str) -> list[Obj]:
    """A claim (or a volume, by its PV name) and every object of it: its PV, its
    ReplicatedVolume, its VolumeBackups and VolumeSnapshots, the VolumeRestores of those
    backups or into it. NotFound when neither a PVC nor a PV has the name."""
    objs: list[Obj] = []
    claim: Obj | None = None
    pv: Obj | None = None
    try:
        claim = kube.get(PVC, target, namespace)
    except NotFound:
        try:
            pv = kube.get(PV, target)
        except NotFound:
            raise NotFound(f"neither PVC {namespace}/{target} nor volume {target} "
                           "exists") from None
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref.get("name"):
            namespace = str(ref.get("namespace") or namespace)
            try:
                claim = kube.get(PVC, str(ref["name"]), namespace)
            except NotFound:
                claim = None
    if claim is not None:
        objs.append(claim)
        pv_name = (claim.get("spec") or {}).get("volumeName")
        if pv is None and pv_name:
            try:
                pv = kube.get(PV, pv_name)
            except NotFound:
                pv = None
    if pv is not None:
        objs.append(pv)
        with contextlib.suppress(NotFound):
            objs.append(kube.get(REPLICATED_VOLUME, pv["metadata"]["name"]))
    if claim is None:
        return objs
    name = claim["metadata"]["name"]
    backups = [b for b in kube.list(VOLUME_BACKUP, namespace)
               if (b.get("spec") or {}).get("persistentVolumeClaimName") == name]
    names = {b["metadata"]["name"] for b in backups}
    objs += backups
    objs += [s for s in kube.list(VOLUME_SNAPSHOT, namespace)
             if ((s.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName") == name]
    objs += [r for r in kube.list(VOLUME_RESTORE, namespace)
             if (r.get("spec") or {}).get("backup") in names
             or (r.get("spec") or {}).get("persistentVolumeClaimName") == name]
    return objs


def _event_time(e: Obj) -> str:
    return str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp")
               or e["metadata"].get("creationTimestamp") or "")


def events_of(kube: Kube, objs: list[Obj]) -> list[Obj]:
    """The Events about objs (matched by uid, else kind, name and namespace), oldest first."""
    uids = {o["metadata"].get("uid") for o in objs if o["metadata"].get("uid")}
    keys = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", "")) for o in objs}
    spaces = {o["metadata"].get("namespace") or "default" for o in objs} | {"default"}
    found: dict[tuple[str, str], Obj] = {}
    for ns in sorted(spaces):
        for e in kube.list(EVENT, ns):
            inv = e.get("involvedObject") or {}
            if inv.get("uid") in uids or (not inv.get("uid") and (
                    inv.get("kind"), inv.get("name"), inv.get("namespace", "")) in keys):
                found[(ns, e["metadata"]["name"])] = e
    return sorted(found.values(), key=lambda e: (_event_time(e), e["metadata"]["name"]))


EVENT_COLUMNS: list[Column] = [
    ("LAST SEEN", _event_time), ("TYPE", lambda e: str(e.get("type", ""))),
    ("REASON", lambda e: str(e.get("reason", ""))),
    ("OBJECT", lambda e: f"{(e.get('involvedObject') or {}).get('kind', '').lower()}/"
                         f"{(e.get('involvedObject') or {}).get('name', '')}"),
    ("COUNT", lambda e: str(e.get("count", 1))),
    ("MESSAGE", lambda e: str(e.get("message", "")))]
EVENT_WIDE: list[Column] = [("SOURCE", lambda e: str((e.get("source") or {}).get("component")
                                                     or e.get("reportingComponent") or ""))]


def register(app: typer.Typer, *, kube_factory: KubeFactory = connect,
             clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """Add ``get``, ``describe``, ``backup now`` and the replicated-volume commands to app."""
    replicas.register(app, kube_factory=kube_factory)

    @app.command("get")
    def get(kind: str = typer.Argument(..., help="pools | volumes | backups | schedules | setbackups"),
            name: str | None = typer.Argument(None, help="One object; all when omitted."),
            namespace: str = NamespaceOption, all_namespaces: bool = AllNamespacesOption,
            output: Format = OutputOption, kubeconfig: str | None = KubeconfigOption) -> None:
        """List Statehold objects in the cluster (like kubectl get)."""
        from statehold.cli.output import emit

        with failures():
            key = resolve_kind(kind)
            if key not in TABLES:
                raise InvalidArgument(f"get takes pools, volumes, backups, schedules or setbackups, "
                                      f"not {kind!r}")
            kube = kube_factory(kubeconfig)
            kind_, cols, wide = TABLES[key]
            ns = None if all_namespaces else namespace
            if name is not None:
                items: Obj | list[Obj] = kube.get(kind_, name, ns if kind_.namespaced else None)
            else:
                items = list_objects(kube, key, ns)
            if all_namespaces and kind_.namespaced:
                cols = [("NAMESPACE", _ns), *cols]
            emit(items, output, cols, wide, plain_of=lambda o: o)

    @app.command("events")
    def events(target: str = typer.Argument(..., help="A PVC (in --namespace) or a volume "
                                             "(its PV name)."),
               namespace: str = NamespaceOption, output: Format = OutputOption,
               kubeconfig: str | None = KubeconfigOption) -> None:
        """List the Events of a claim or volume across kinds (the PVC, its PV and
        ReplicatedVolume, its VolumeBackups, VolumeSnapshots and VolumeRestores), oldest
        first."""
        from statehold.cli.output import emit

        with failures():
            kube = kube_factory(kubeconfig)
            emit(events_of(kube, related_objects(kube, target, namespace)), output,
                 EVENT_COLUMNS, EVENT_WIDE, plain_of=lambda o: o)

    @app.command("describe")
    def describe(kind: str = typer.Argument(..., help="pool | volume | backup | schedule | target | "
                                            "restore | setbackup | setrestore"),
                 name: str = typer.Argument(...), namespace: str = NamespaceOption,
                 kubeconfig: str | None = KubeconfigOption) -> None:
        """Show one object with its status, conditions and Events."""
        with failures():
            key = resolve_kind(kind)
            kind_ = DESCRIBE_KINDS[key] if key in DESCRIBE_KINDS else TABLES[key][0]
            kube = kube_factory(kubeconfig)
            try:
                obj = kube.get(kind_, name, namespace if kind_.namespaced else None)
            except NotFound:
                if kind_ != PV:
                    raise
                # a volume may be named by its claim, as users know it
                pv_name = (kube.get(PVC, name, namespace).get("spec") or {}).get("volumeName")
                if not pv_name:
                    raise NotFound(f"PVC {namespace}/{name} is not bound to a volume") from None
                obj = kube.get(PV, pv_name)
            typer.echo(describe_text(kube, obj))

    # ``backup now`` joins the backup area's sub-app (registered before this module); a
    # second register() (tests) replaces our command instead of adding a duplicate.
    from statehold.cli.backup import backup_app
    backup_app.registered_commands[:] = [
        c for c in backup_app.registered_commands if c.name != "now"]

    @backup_app.command("now")
    def now(pvc: str | None = typer.Argument(None, help="The PVC to back up."),
            statefulset: str | None = typer.Option(
                None, "--statefulset", help="Back up this StatefulSet as one group (every "
                "claim at one instant, with its hooks) instead of a PVC."),
            hooks_from: str | None = typer.Option(
                None, "--hooks-from", help="With --statefulset: take the hooks and freeze "
                "timeout of this BackupSchedule (its statefulSet part)."),
            namespace: str = NamespaceOption,
            target: str | None = typer.Option(None, "--target", "-t",
                                              help="BackupTarget (default: the namespace's only one)."),
            name: str | None = typer.Option(None, "--name", help="VolumeBackup (or StatefulSetBackup) name."),
            wait: bool = typer.Option(False, "--wait", help="Follow it until it completes or fails."),
            timeout: float = typer.Option(3600.0, "--timeout", help="Seconds --wait waits at most."),
            kubeconfig: str | None = KubeconfigOption) -> None:
        """Back up a PVC, or a StatefulSet as one group, now: creates a VolumeBackup (or a
        StatefulSetBackup) in the cluster; the operator runs it."""
        with failures():
            if (pvc is None) == (statefulset is None):
                raise InvalidArgument("name a PVC or give --statefulset NAME (one of them)")
            if hooks_from and statefulset is None:
                raise InvalidArgument("--hooks-from goes with --statefulset")
            kube = kube_factory(kubeconfig)
            subject = pvc or statefulset or ""
            kind, what = (PVC, "PVC") if pvc else (STATEFUL_SET, "StatefulSet")
            try:
                kube.get(kind, subject, namespace)
            except NotFound:
                raise NotFound(f"{what} {namespace}/{subject} does not exist") from None
            if target is None:
                targets = kube.list(BACKUP_TARGET, namespace)
                if len(targets) != 1:
                    raise InvalidArgument(f"namespace {namespace} has {len(targets)} BackupTargets; "
                                          "choose one with --target")
                target = _name(targets[0])
            else:
                kube.get(BACKUP_TARGET, target, namespace)
            made_name = name or f"{subject}-now-{clock().strftime('%Y%m%d%H%M%S')}"[-253:]
            if pvc is not None:
                made = kube.create({
                    "apiVersion": VOLUME_BACKUP.api_version, "kind": VOLUME_BACKUP.kind,
                    "metadata": {"name": made_name, "namespace": namespace,
                                 "labels": {"statehold.io/pvc": pvc}},
                    "spec": {"persistentVolumeClaimName": pvc, "target": target}})
                typer.echo(f"volumebackup.statehold.io/{_name(made)} created")
                if wait:
                    follow(kube, made, timeout)
                return
            spec: dict[str, Any] = {"statefulSetName": subject, "target": target}
            if hooks_from:
                sched = (kube.get(BACKUP_SCHEDULE, hooks_from, namespace).get("spec") or {})
                part = sched.get("statefulSet") or {}
                if not part:
                    raise InvalidArgument(f"BackupSchedule {hooks_from} does not back up "
                                          "StatefulSets: it has no hooks to take")
                spec.update({k: part[k] for k in ("hooks", "freezeTimeoutSeconds") if k in part})
            made = kube.create({
                "apiVersion": STATEFUL_SET_BACKUP.api_version, "kind": STATEFUL_SET_BACKUP.kind,
                "metadata": {"name": made_name, "namespace": namespace,
                             "labels": {"statehold.io/statefulset": subject}},
                "spec": spec})
            typer.echo(f"statefulsetbackup.statehold.io/{_name(made)} created")
            if wait:
                follow(kube, made, timeout, STATEFUL_SET_BACKUP)
