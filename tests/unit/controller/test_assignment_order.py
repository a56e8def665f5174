"""The cluster operator pins a VolumeBackup/VolumeRestore to a node with two writes (the
node label in metadata, the location in the status subresource: one write cannot set
both). The node agent reacts to the label. Whatever order the agent sees them in, no
backup or restore may fail because of it: the operator writes the status first, and an
agent that still sees the label without the location retries instead of failing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from statehold.controller.backups import NODE_LABEL, assign_backup, run_backup
from statehold.controller.restores import assign_restore, run_restore
from statehold.engine.node import Node
from statehold.kube.facade import Obj
from statehold.kube.kinds import VOLUME_BACKUP, VOLUME_RESTORE, Kind
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import (
    NS,
    bound_pvc,
    path_target,
    secret,
    storage_class,
    volume_backup,
)

NODE = "node-1"


@pytest.fixture
def empty_node(tmp_path: Path) -> Iterator[Node]:
    """A node agent's engine with no pools (no root, no devices)."""
    n = Node(tmp_path / "home")
    try:
        yield n
    finally:
        n.close()


class LabelWatcher(MemoryKube):
    """MemoryKube that calls ``on_label`` with the object as a watcher sees it right after
    a write that put the node label on it (what the agent's watch event carries)."""

    on_label: Callable[[Obj], None] = staticmethod(lambda _obj: None)

    def patch(self, kind: Kind, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        got = super().patch(kind, name, patch, namespace)
        if NODE_LABEL in ((patch.get("metadata") or {}).get("labels") or {}):
            self.on_label(self.get(kind, name, namespace))
        return got


@pytest.fixture
def kube(fake_clock: Any) -> LabelWatcher:
    from statehold.controller.schemas import validate_custom_resource

    return LabelWatcher(now=fake_clock, admit=validate_custom_resource)


def cluster(kube: MemoryKube) -> None:
    secret(kube, "pw", password="x")
    path_target(kube)
    bound_pvc(kube, "data", node=NODE, pool="fast", volume="pvc-123", size="2Gi")


def restore(kube: MemoryKube) -> Obj:
    kube.patch_status(VOLUME_BACKUP, "b1", {"phase": "Completed", "backupId": "abc",
                                           "node": NODE, "volumeHandle": "fast/pvc-123"}, NS)
    storage_class(kube)
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                        "metadata": {"name": "r1", "namespace": NS},
                        "spec": {"backup": "b1", "persistentVolumeClaimName": "restored"}})


# -- the agent's side: label seen, location not yet --------------------------------------

def test_backup_labelled_before_its_location_is_retried_not_failed(
        kube: LabelWatcher, empty_node: Node, fake_clock: Any) -> None:
    cluster(kube)
    volume_backup(kube, "b1", "data")
    # the first of the operator's two writes has landed, the second not yet
    kube.patch(VOLUME_BACKUP, "b1", {"metadata": {"labels": {NODE_LABEL: NODE}}}, NS)
    seen = kube.get(VOLUME_BACKUP, "b1", NS)
    assert "volumeHandle" not in (seen.get("status") or {})

    result = run_backup(kube, seen, empty_node, NODE, fake_clock)

    assert result.outcome == "retry" and 0 < result.retry_after <= 30, result
    got = kube.get(VOLUME_BACKUP, "b1", NS)
    assert (got.get("status") or {}).get("phase") != "Failed"
    assert [e for e in kube.events_for(got) if e["type"] == "Warning"] == []


def test_restore_labelled_before_its_assignment_is_retried_not_started(
        kube: LabelWatcher, empty_node: Node, fake_clock: Any) -> None:
    cluster(kube)
    volume_backup(kube, "b1", "data")
    restore(kube)
    kube.patch(VOLUME_RESTORE, "r1", {"metadata": {"labels": {NODE_LABEL: NODE}}}, NS)

    result = run_restore(kube, kube.get(VOLUME_RESTORE, "r1", NS), empty_node, NODE, fake_clock)

    assert result.outcome == "retry", result
    got = kube.get(VOLUME_RESTORE, "r1", NS)
    assert (got.get("status") or {}).get("phase") not in ("Running", "Failed")
    assert [e for e in kube.events_for(got) if e["type"] == "Warning"] == []


# -- the operator's side: by the time the label is visible, the location is there --------

def test_backup_location_is_in_status_when_the_label_appears(
        kube: LabelWatcher, fake_clock: Any) -> None:
    cluster(kube)
    seen: list[Obj] = []
    kube.on_label = seen.append
    vb = volume_backup(kube, "b1", "data")

    assert assign_backup(kube, vb, fake_clock).outcome == "done"

    (at_label,) = seen
    st = at_label.get("status") or {}
    assert (st.get("node"), st.get("volumeHandle"), st.get("phase")) == (
        NODE, "fast/pvc-123", "Pending")
    got = kube.get(VOLUME_BACKUP, "b1", NS)
    assert got["metadata"]["labels"][NODE_LABEL] == NODE
    assert assign_backup(kube, got, fake_clock).outcome == "skipped"


def test_restore_assignment_is_in_status_when_the_label_appears(
        kube: LabelWatcher, fake_clock: Any) -> None:
    cluster(kube)
    volume_backup(kube, "b1", "data")
    r = restore(kube)
    seen: list[Obj] = []
    kube.on_label = seen.append

    assert assign_restore(kube, r, fake_clock).outcome == "done"

    (at_label,) = seen
    st = at_label.get("status") or {}
    assert (st.get("node"), st.get("phase")) == (NODE, "Pending")


def test_operator_writes_nothing_to_status_after_the_label(
        kube: LabelWatcher, empty_node: Node, fake_clock: Any) -> None:
    """The agent may start (and write Running) as soon as it sees the label; a status
    write by the operator after that would set the phase back to Pending."""
    cluster(kube)
    volume_backup(kube, "b1", "data")
    r = restore(kube)

    def agent_starts(obj: Obj) -> None:
        kube.patch_status(VOLUME_RESTORE, "r1", {"phase": "Running"}, NS)

    kube.on_label = agent_starts
    assert assign_restore(kube, r, fake_clock).outcome == "done"
    assert kube.get(VOLUME_RESTORE, "r1", NS)["status"]["phase"] == "Running"
