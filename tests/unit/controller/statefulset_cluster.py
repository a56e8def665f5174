"""Builders for a StatefulSet, its pods and its bound claims in MemoryKube, and a fake node
whose group snapshot only records when it froze and thawed (the real one is tested on a
real pool in tests/integration/kube/test_statefulset_backup.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from statehold.engine.groups import GroupSnapshot, Member
from statehold.errors import StateholdError
from statehold.kube.execs import ExecCall
from statehold.kube.facade import ExecResult
from statehold.kube.kinds import POD
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc


def statefulset(kube: MemoryKube, name: str = "db", *, replicas: int = 3,
                templates: tuple[str, ...] = ("data",), labels: dict[str, str] | None = None,
                storage_class: str = "statehold-local", start: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas, "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]}},
        "volumeClaimTemplates": [
            {"metadata": {"name": t, "labels": {"tier": "db"}},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                      "resources": {"requests": {"storage": "1Gi"}}}} for t in templates]}
    if start is not None:
        spec["ordinals"] = {"start": start}
    return kube.create({"apiVersion": "apps/v1", "kind": "StatefulSet",
                        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
                        "spec": spec})


def claims(kube: MemoryKube, name: str = "db", *, ordinals: range = range(3),
           templates: tuple[str, ...] = ("data",), nodes: dict[int, str] | None = None) -> None:
    """Bound claims <template>-<set>-<ordinal> on node n1 (or as ``nodes`` says)."""
    for o in ordinals:
        for t in templates:
            bound_pvc(kube, f"{t}-{name}-{o}", node=(nodes or {}).get(o, "n1"),
                      volume=f"pvc-{t}-{o}")


def running_pods(kube: MemoryKube, name: str = "db", *, ordinals: range = range(3)) -> None:
    for o in ordinals:
        kube.create({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{name}-{o}", "namespace": NS, "labels": {"app": name}},
                     "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]}})
        kube.patch_status(POD, f"{name}-{o}", {"phase": "Running", "containerStatuses": [
            {"name": "postgres", "state": {"running": {}}}]}, NS)


def hook(name: str, *command: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": list(command), **extra}


@dataclass
class Recorder:
    """One ordered log of everything that happened: each exec (``exec <pod> <cmd>``), and
    the fake group snapshot's ``freeze``/``thaw``. Commands starting with ``fail`` exit 1."""

    log: list[str] = field(default_factory=list)

    def exec(self, call: ExecCall) -> ExecResult:
        self.log.append(f"exec {call.pod} {' '.join(call.command)}")
        if call.command[0] == "fail":
            return ExecResult(1, "", f"{call.command[-1]} failed\n")
        return ExecResult(0, f"{call.command[-1]} done\n", "")


class FakePool:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_volume(self, name: str) -> object:
        return object()


class FakeNode:
    """The parts of an engine Node a StatefulSetBackup's capture step uses."""

    def __init__(self, recorder: Recorder, *, fail: StateholdError | None = None) -> None:
        self.recorder, self.fail = recorder, fail
        self.groups: dict[str, GroupSnapshot] = {}
        self.deleted: list[str] = []

    def pool(self, name: str) -> FakePool:
        return FakePool(name)

    def snapshot_group(self, name: str, members: list[tuple[str, str, str]], *,
                       timeout: float = 10.0) -> GroupSnapshot:
        self.recorder.log.append("freeze")
        self.recorder.log.append("thaw")
        if self.fail is not None:
            raise self.fail
        g = GroupSnapshot(name, tuple(Member(*m) for m in members), 1767600000.0, frozen=len(members),
                          window=0.05)
        self.groups[name] = g
        return g

    def delete_snapshot_group(self, name: str) -> None:
        self.deleted.append(name)
        self.groups.pop(name, None)


__all__ = ["NS", "FakeNode", "Recorder", "claims", "hook", "running_pods", "statefulset"]
