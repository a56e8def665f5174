"""The replicated-volume commands: ``volume get`` (a PVC's copies, or this host's engine
volumes), ``volume promote``, ``volume move`` and ``node retire`` (replication.md §8).

``volume get`` has two meanings: this host's engine volumes (``statehold volume get``, the
standalone command of :mod:`statehold.cli.volume`) and a cluster volume's copies. It is the
cluster one when run as ``kubectl statehold`` (program name ``kubectl-statehold``) or given
``--namespace``, ``--all-namespaces`` or ``--kubeconfig``; the host one otherwise. Requests
(promote, move, retire) are written into the objects' specs; the operator acts on them.
"""

from __future__ import annotations

from pathlib import Path

import typer

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
from statehold.cli.output import Format, OutputOption, failures
from statehold.controller.locate import is_statehold_pv, pv_node
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import NODE, PV, PVC, REPLICATED_VOLUME, STORAGE_POOL
from statehold.kube.objects import as_pv

PLUGIN_NAME = "kubectl-statehold"


def pvc_volume(kube: Kube, pvc: str, namespace: str) -> tuple[Obj, Obj | None]:
    """A claim's PV and its ReplicatedVolume (None for a single-copy volume)."""
    try:
        claim = kube.get(PVC, pvc, namespace)
    except NotFound:
        raise NotFound(f"PVC {namespace}/{pvc} does not exist") from None
    pv_name = (claim.get("spec") or {}).get("volumeName")
    if not pv_name:
        raise FailedPrecondition(f"PVC {namespace}/{pvc} is not bound to a volume yet")
    pv = kube.get(PV, pv_name)
    if not is_statehold_pv(pv):
        raise InvalidArgument(f"PVC {namespace}/{pvc} is not a Statehold volume")
    try:
        return pv, kube.get(REPLICATED_VOLUME, pv_name)
    except NotFound:
        return pv, None


def copy_rows(pv: Obj, rv: Obj | None) -> list[Obj]:
    """One row per copy: the record's copies, or the single copy of a plain volume."""
    if rv is None:
        return [{"node": pv_node(as_pv(pv)) or "", "role": "primary", "state": "Serving",
                 "pool": str(pv["spec"]["csi"].get("volumeHandle", "")).partition("/")[0]}]
    status = rv.get("status") or {}
    rows = [dict(c) for c in status.get("copies") or []]
    if status.get("primary") and not any(r.get("node") == status["primary"] for r in rows):
        rows.insert(0, {"node": status["primary"], "role": "primary", "state": "Unknown"})
    return sorted(rows, key=lambda r: (r.get("role") != "primary", str(r.get("node"))))


def _lag(row: Obj) -> str:
    lag = row.get("lagSeconds")
    return f"{lag:.1f}s" if isinstance(lag, (int, float)) else "-"


COPY_COLUMNS: list[Column] = [
    ("NODE", lambda r: str(r.get("node", ""))), ("ROLE", lambda r: str(r.get("role", ""))),
    ("POINT", lambda r: str(r.get("point") or "-")), ("LAG", _lag),
    ("STATE", lambda r: str(r.get("state", "")))]
COPY_WIDE: list[Column] = [("POOL", lambda r: str(r.get("pool") or "-")),
                           ("POINT-TIME", lambda r: str(r.get("pointTime") or "-"))]


def volume_rows(kube: Kube, namespace: str | None) -> list[Obj]:
    """One row per Statehold PVC in the namespace (all when None): its copies at a glance."""
    records = {rv["metadata"]["name"]: rv for rv in kube.list(REPLICATED_VOLUME)}
    rows = []
    for pv in statehold_pvs(kube, namespace):
        rv = records.get(pv["metadata"]["name"])
        copies = copy_rows(pv, rv)
        status = (rv or {}).get("status") or {}
        serving = [c for c in copies if c.get("state") in ("Serving", "InSync", "Lagging")]
        rows.append({"claim": claim_of(pv), "volume": pv["metadata"]["name"],
                     "primary": status.get("primary") or pv_node(as_pv(pv)) or "",
                     "epoch": status.get("epoch", "-"),
                     "copies": f"{len(serving)}/{(rv or {}).get('spec', {}).get('replicas', 1)}",
                     "lagSeconds": status.get("lagSeconds")})
    return rows


VOLUME_COLUMNS: list[Column] = [
    ("CLAIM", lambda r: str(r["claim"])), ("PRIMARY", lambda r: str(r["primary"])),
    ("EPOCH", lambda r: str(r["epoch"])), ("COPIES", lambda r: str(r["copies"])),
    ("LAG", _lag)]


def request(kube: Kube, rv: Obj, body: Obj) -> Obj:
    """Write a promote or move request into the record's spec (the operator acts on it)."""
    spec = rv.get("spec") or {}
    for pending in ("promote", "move"):
        if spec.get(pending):
            raise FailedPrecondition(
                f"replicatedvolume/{rv['metadata']['name']} already has a {pending} request "
                f"({spec[pending]}); wait for the operator to handle it")
    return kube.patch(REPLICATED_VOLUME, rv["metadata"]["name"], {
        "metadata": {"resourceVersion": rv["metadata"]["resourceVersion"]}, "spec": body})


def holders(rv: Obj) -> set[str]:
    return {str(c.get("node")) for c in (rv.get("status") or {}).get("copies") or []}


def _volume_app(app: typer.Typer) -> typer.Typer:
    for group in app.registered_groups:
        if group.name == "volume" and group.typer_instance is not None:
            return group.typer_instance
    sub = typer.Typer(help="Volumes: this host's, or a cluster volume's copies.",
                      no_args_is_help=True)
    app.add_typer(sub, name="volume")
    return sub


def register(app: typer.Typer, *, kube_factory: KubeFactory = connect) -> None:
    """``volume get`` (cluster form), ``volume promote``, ``volume move``, ``node retire``."""
    from statehold.cli.output import HomeOption, PoolOption, emit

    volumes = _volume_app(app)
    host_get = next((c.callback for c in volumes.registered_commands if c.name == "get"
                     and c.callback is not None and c.callback.__module__ != __name__), None)
    volumes.registered_commands[:] = [c for c in volumes.registered_commands
                                      if c.name not in ("get", "promote", "move")]

    @volumes.command("get")
    def get(ctx: typer.Context,
            name: str | None = typer.Argument(None, help="A PVC (cluster) or an engine volume "
                                              "(this host); all when omitted."),
            namespace: str | None = typer.Option(None, "--namespace", "-n",
                                                 help="Namespace of the PVC (cluster form)."),
            all_namespaces: bool = AllNamespacesOption, output: Format = OutputOption,
            kubeconfig: str | None = KubeconfigOption, pool: str | None = PoolOption,
            home: Path | None = HomeOption) -> None:
        """Show a PVC's copies (node, role, point, lag, state), or this host's volumes.

        The cluster form when run as `kubectl statehold` or given -n, -A or --kubeconfig;
        this host's engine volumes otherwise."""
        cluster = (ctx.find_root().info_name == PLUGIN_NAME or namespace is not None
                   or all_namespaces or kubeconfig is not None)
        if not cluster:
            with failures():
                if host_get is None:
                    raise InvalidArgument("no host volumes here: give --namespace for a PVC")
            ctx.invoke(host_get, ctx, name=name, pool=pool, home=home, output=output)
            return
        with failures():
            if pool is not None or home is not None:
                raise InvalidArgument("--pool and --home are for this host's volumes; a PVC "
                                      "is looked up in the cluster")
            kube = kube_factory(kubeconfig)
            ns = namespace or "default"
            if name is None:
                emit(volume_rows(kube, None if all_namespaces else ns), output, VOLUME_COLUMNS,
                     [("VOLUME", lambda r: str(r["volume"]))], plain_of=lambda o: o)
                return
            pv, rv = pvc_volume(kube, name, ns)
            if output in (Format.JSON, Format.YAML):
                emit(rv if rv is not None else {"volume": pv["metadata"]["name"],
                                                "copies": copy_rows(pv, None)},
                     output, COPY_COLUMNS, plain_of=lambda o: o)
                return
            emit(copy_rows(pv, rv), output, COPY_COLUMNS, COPY_WIDE, plain_of=lambda o: o)

    @volumes.command("promote")
    def promote(pvc: str = typer.Argument(..., help="The PVC."),
                node: str = typer.Option(..., "--node", help="The node whose copy becomes the "
                                         "primary (failover by hand)."),
                namespace: str = NamespaceOption,
                kubeconfig: str | None = KubeconfigOption) -> None:
        """Promote a PVC's copy on NODE now (failover by hand).

        Writes spec.promote; the operator records the new epoch, then promotes. Writes on
        the old primary after that copy's newest acknowledged point are lost."""
        with failures():
            kube = kube_factory(kubeconfig)
            pv, rv = pvc_volume(kube, pvc, namespace)
            if rv is None:
                raise FailedPrecondition(f"PVC {namespace}/{pvc} has one copy: nothing to promote")
            if node not in holders(rv):
                raise NotFound(f"node {node} holds no copy of PVC {namespace}/{pvc} "
                               f"(copies on: {', '.join(sorted(holders(rv))) or 'none'})")
            request(kube, rv, {"promote": {"node": node}})
            typer.echo(f"replicatedvolume.statehold.io/{pv['metadata']['name']} promote to "
                       f"{node} requested")

    @volumes.command("move")
    def move(pvc: str = typer.Argument(..., help="The PVC."),
             to: str = typer.Option(..., "--to", help="The node the primary moves to."),
             namespace: str = NamespaceOption,
             kubeconfig: str | None = KubeconfigOption) -> None:
        """Move a PVC's primary to another node, losing nothing.

        Writes spec.move; the operator waits until the pod is gone, syncs a last point to
        the node, then promotes it. A node without a copy gets one first."""
        with failures():
            kube = kube_factory(kubeconfig)
            pv, rv = pvc_volume(kube, pvc, namespace)
            if rv is None:
                raise FailedPrecondition(f"PVC {namespace}/{pvc} has one copy: use a "
                                         "StorageClass with replicas > 1 to move volumes")
            if (rv.get("status") or {}).get("primary") == to:
                typer.echo(f"replicatedvolume.statehold.io/{pv['metadata']['name']} already "
                           f"has its primary on {to}")
                return
            kube.get(NODE, to)
            request(kube, rv, {"move": {"to": to}})
            typer.echo(f"replicatedvolume.statehold.io/{pv['metadata']['name']} move to {to} "
                       "requested")

    nodes = typer.Typer(help="Nodes of the cluster.", no_args_is_help=True)

    @nodes.command("retire")
    def retire(node: str = typer.Argument(..., help="The node to retire."),
               kubeconfig: str | None = KubeconfigOption) -> None:
        """Retire a node: decommission every StoragePool on it.

        Sets spec.decommission: the operator moves each primary away and re-places each
        copy, or refuses with the condition Retiring=False (InsufficientCapacity) when the
        other nodes lack room."""
        with failures():
            kube = kube_factory(kubeconfig)
            pools = [p for p in kube.list(STORAGE_POOL) if (p.get("spec") or {}).get("node") == node]
            if not pools:
                raise NotFound(f"node {node} has no StoragePool")
            for p in pools:
                kube.patch(STORAGE_POOL, p["metadata"]["name"], {"spec": {"decommission": True}})
                typer.echo(f"storagepool.statehold.io/{p['metadata']['name']} decommission "
                           "requested")

    app.registered_groups[:] = [g for g in app.registered_groups if g.name != "node"]
    app.add_typer(nodes, name="node")
