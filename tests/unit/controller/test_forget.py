"""A VolumeBackup annotated ``statehold.io/forget: "true"``: the agent of its node removes its
backup from the repository, then the object (finalizer-free). Through the in-memory API with
the node account's rendered RBAC and a real directory repository."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kopf
import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository
from statehold.controller.backups import FORGET_ANNOTATION, NODE_LABEL, forget_backup
from statehold.controller.conditions import find
from statehold.controller.node_grants import NodeGrants
from statehold.controller.operator import node_registry
from statehold.engine.node import Node
from statehold.errors import NotFound
from statehold.kube.kinds import VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, path_target, secret, volume_backup
from tests.unit.controller.test_operator_wiring import handlers
from tests.unit.kube.rbac import RbacKube, as_node_plugin, rules_for
from tests.unit.kube.validation import render

PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def node_rules() -> list[dict[str, Any]]:
    return rules_for(render.render_chart(), "statehold-node")


@pytest.fixture
def repo(memory_kube: MemoryKube, scratch: Path) -> Repository:
    secret(memory_kube, "pw", password=PASSWORD)
    path_target(memory_kube, path=str(scratch / "repo"))
    return Repository.init(DirectoryStore(scratch / "repo"), PASSWORD)


def backup_object(kube: MemoryKube, name: str, status: dict[str, Any], *, node: str = "n1",
                  forget: str | None = "true") -> dict[str, Any]:
    """A VolumeBackup as the operator and the agent left it, then annotated by the user."""
    volume_backup(kube, name, "data")
    meta: dict[str, Any] = {"labels": {NODE_LABEL: node}}
    if forget is not None:
        meta["annotations"] = {FORGET_ANNOTATION: forget}
    kube.patch(VOLUME_BACKUP, name, {"metadata": meta}, NS)
    kube.patch_status(VOLUME_BACKUP, name, {"node": node, **status}, NS)
    return kube.get(VOLUME_BACKUP, name, NS)


def backed_up(repo: Repository, scratch: Path, volume: str = "fast/data") -> str:
    img = scratch / f"{volume.replace('/', '-')}.img"
    img.write_bytes(os.urandom(1 << 20))
    return create_backup(repo, img, volume=volume).backup_id


def test_forget_removes_the_backup_from_the_repository_then_the_object(
        memory_kube: MemoryKube, fake_clock: Any, repo: Repository, scratch: Path,
        node_rules: list[dict[str, Any]]) -> None:
    gone, kept = backed_up(repo, scratch), backed_up(repo, scratch, "fast/other")
    vb = backup_object(memory_kube, "b1", {"phase": "Completed", "backupId": gone})
    docs = render.render_chart()
    NodeGrants(RbacKube(memory_kube, rules_for(docs, "statehold-operator")),
               "statehold-system").sync(NS)  # the operator lets the node read pw
    agent = as_node_plugin(memory_kube, docs)
    assert forget_backup(agent, vb, "n1", fake_clock).outcome == "done"
    assert repo.backup_ids() == [kept]
    with pytest.raises(NotFound):
        memory_kube.get(VOLUME_BACKUP, "b1", NS)
    assert [e["reason"] for e in memory_kube.events_for(vb)] == ["Forgotten"]
    # a retry of the same event (the object and the backup already gone) is harmless
    assert forget_backup(agent, vb, "n1", fake_clock).outcome == "done"


def test_forget_waits_for_a_running_backup_and_ignores_other_nodes_and_other_values(
        memory_kube: MemoryKube, fake_clock: Any, repo: Repository, scratch: Path) -> None:
    bid = backed_up(repo, scratch)
    running = backup_object(memory_kube, "b1", {"phase": "Running"})
    assert forget_backup(memory_kube, running, "n1", fake_clock).outcome == "retry"
    elsewhere = backup_object(memory_kube, "b2", {"phase": "Completed", "backupId": bid}, node="n2")
    assert forget_backup(memory_kube, elsewhere, "n1", fake_clock).outcome == "skipped"
    unsure = backup_object(memory_kube, "b3", {"phase": "Completed", "backupId": bid}, forget="yes")
    assert forget_backup(memory_kube, unsure, "n1", fake_clock).outcome == "skipped"
    assert repo.backup_ids() == [bid]
    assert len(memory_kube.list(VOLUME_BACKUP, NS)) == 3


def test_a_failed_backup_stored_nothing_so_only_the_object_goes(
        memory_kube: MemoryKube, fake_clock: Any, repo: Repository, scratch: Path) -> None:
    bid = backed_up(repo, scratch)
    vb = backup_object(memory_kube, "b1", {"phase": "Failed"})
    assert forget_backup(memory_kube, vb, "n1", fake_clock).outcome == "done"
    assert memory_kube.list(VOLUME_BACKUP, NS) == [] and repo.backup_ids() == [bid]


def test_an_unreachable_repository_keeps_the_object_with_a_reason(
        memory_kube: MemoryKube, fake_clock: Any, scratch: Path) -> None:
    secret(memory_kube, "pw", password=PASSWORD)
    path_target(memory_kube, path=str(scratch / "nothing-here"))
    vb = backup_object(memory_kube, "b1", {"phase": "Completed", "backupId": "20260105T100000Z-0a0b0c0d"})
    result = forget_backup(memory_kube, vb, "n1", fake_clock)
    assert result.outcome == "retry"
    vb = memory_kube.get(VOLUME_BACKUP, "b1", NS)  # never deleted blindly
    cond = find(vb["status"]["conditions"], "Forgotten")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "RepositoryNotFound")
    assert vb["status"]["phase"] == "Completed"
    assert [e["reason"] for e in memory_kube.events_for(vb)] == ["RepositoryNotFound"]


def test_the_node_agent_registers_forget_for_its_annotated_backups(
        memory_kube: MemoryKube, fake_clock: Any, repo: Repository, scratch: Path) -> None:
    found = handlers(node_registry(memory_kube, Node(scratch / "home"), "n1", fake_clock))
    forget = found[("volumebackups", "forget")]
    bid = backed_up(repo, scratch)
    backup_object(memory_kube, "b1", {"phase": "Running"})
    with pytest.raises(kopf.TemporaryError):
        forget.fn(name="b1", namespace=NS, retry=0)
    memory_kube.patch_status(VOLUME_BACKUP, "b1", {"phase": "Completed", "backupId": bid}, NS)
    forget.fn(name="b1", namespace=NS, retry=1)
    assert memory_kube.list(VOLUME_BACKUP, NS) == [] and repo.backup_ids() == []
