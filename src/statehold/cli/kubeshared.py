"""What the cluster commands share (``kubectl`` and ``replicas``): how they reach the API
server, their common options and table column type, and which PVs are Statehold's."""

from __future__ import annotations

from collections.abc import Callable

import typer

from statehold.controller.locate import is_statehold_pv
from statehold.kube import connect as kube_connect
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PV

KubeFactory = Callable[[str | None], Kube]
Column = tuple[str, Callable[[Obj], str]]

KubeconfigOption = typer.Option(None, "--kubeconfig", help="Path to a kubeconfig file.")
NamespaceOption = typer.Option("default", "--namespace", "-n", help="Namespace.")
AllNamespacesOption = typer.Option(False, "--all-namespaces", "-A", help="Every namespace.")


def connect(kubeconfig: str | None) -> Kube:
    return kube_connect(kubeconfig)


def claim_of(pv: Obj) -> str:
    """``namespace/name`` of the claim a PV is bound to ("" when none)."""
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    return f"{ref.get('namespace')}/{ref.get('name')}" if ref else ""


def statehold_pvs(kube: Kube, namespace: str | None) -> list[Obj]:
    """The PVs of Statehold's driver, those claimed from ``namespace`` when one is given."""
    items = [o for o in kube.list(PV) if is_statehold_pv(o)]
    if namespace is not None:
        items = [o for o in items if ((o["spec"].get("claimRef") or {}).get("namespace") == namespace)]
    return items
