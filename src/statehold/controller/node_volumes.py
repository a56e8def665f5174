"""The claims whose Statehold local volumes this node holds: what a node agent's periodic
passes over volumes (autoexpansion, I/O limits) walk. Read from the PVs, so a claim counts
once it is bound."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from statehold.controller.locate import DRIVER, SHARED_PREFIX
from statehold.engine.node import Node
from statehold.engine.types import Volume
from statehold.errors import InvalidArgument, NotFound, Unavailable
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PV


@dataclass(frozen=True, slots=True)
class Held:
    """A bound PV of ours whose volume is in one of this node's pools."""

    pv: Obj
    volume: Volume
    claim: str
    namespace: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.claim}"


def local_volume(node: Node, pv: Obj) -> Volume | None:
    """The volume of a Statehold local PV when this node holds it."""
    csi = (pv.get("spec") or {}).get("csi") or {}
    handle = str(csi.get("volumeHandle") or "")
    if csi.get("driver") != DRIVER or handle.startswith(SHARED_PREFIX) or handle.count("/") != 1:
        return None
    pool_name, name = handle.split("/")
    try:
        return node.pool(pool_name).get_volume(name)
    except (NotFound, Unavailable, InvalidArgument):
        return None


def held_claims(kube: Kube, node: Node) -> Iterator[Held]:
    for pv in kube.list(PV):
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if not ref.get("name"):
            continue
        vol = local_volume(node, pv)
        if vol is not None:
            yield Held(pv, vol, str(ref["name"]), str(ref.get("namespace") or "default"))
