"""Scheduled verify of a BackupTarget (``spec.verify``) on the in-memory API with our CRD
schemas: the schema's rules, the operator's request to one node with an agent, the
rotation of ``n/m`` slices over runs, the seed a percentage records, an exclusive holder
leaving the request Pending, damage reported, and the metrics read from the status. The
node side verifies a real format 2 repository in a directory."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.locks import Lock
from statehold.backup.repository import Repository
from statehold.controller.target_gc import gc_pass
from statehold.controller.target_gc import tick_all as gc_tick_all
from statehold.controller.target_verify import VerifyMetrics, tick_all, verify_pass
from statehold.errors import InvalidArgument
from statehold.kube.kinds import BACKUP_TARGET
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, secret

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _index_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEHOLD_BACKUP_CACHE", str(tmp_path_factory.mktemp("index-cache")))


def target(kube: MemoryKube, verify: dict[str, Any], path: str = "/var/tmp/none") -> dict[str, Any]:
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
                        "metadata": {"name": "t", "namespace": NS},
                        "spec": {"path": {"path": path}, "passwordSecretRef": {"name": "pw"},
                                 "verify": verify}})


def agent_node(kube: MemoryKube, node: str) -> None:
    kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node},
                 "spec": {"drivers": [{"name": "csi.statehold.io", "nodeID": node}]}})


def status(kube: MemoryKube) -> dict[str, Any]:
    return dict(kube.get(BACKUP_TARGET, "t", NS)["status"]["verify"])


def repository(where: Path) -> Repository:
    repo = Repository.init(DirectoryStore(where), "x", version=2, chunk_size=64 << 10, pack_size=MiB)
    img = where.parent / "img"
    img.write_bytes(random.Random(1).randbytes(4 * MiB))
    create_backup(repo, img, volume="p/v", commit_every=MiB)
    return repo


def test_the_schema_admits_a_subset_and_refuses_others(memory_kube: MemoryKube) -> None:
    got = target(memory_kube, {"schedule": "0 3 * * *", "readDataSubset": "12.5%"})
    assert got["spec"]["verify"]["readDataSubset"] == "12.5%"
    memory_kube.delete(BACKUP_TARGET, "t", NS)
    for bad in ("half", "10", "1/"):
        with pytest.raises(InvalidArgument):
            target(memory_kube, {"schedule": "0 3 * * *", "readDataSubset": bad})
    with pytest.raises(InvalidArgument, match="schedule"):
        target(memory_kube, {"readDataSubset": "1/5"})


def test_slices_rotate_over_runs_and_damage_is_reported(memory_kube: MemoryKube, fake_clock: Any,
                                                        tmp_path: Path) -> None:
    secret(memory_kube, "pw", password="x")
    agent_node(memory_kube, "n1")
    repo = repository(tmp_path / "repo")
    target(memory_kube, {"schedule": "0 3 * * *", "readDataSubset": "1/2"}, str(tmp_path / "repo"))
    tick_all(memory_kube, fake_clock)
    assert status(memory_kube) == {"nextScheduleTime": "2026-01-06T03:00:00Z"}
    read = []
    for day, part in ((6, "1/2"), (7, "2/2"), (8, "1/2")):
        fake_clock.t = fake_clock.t.replace(day=day, hour=3, minute=1)
        tick_all(memory_kube, fake_clock)
        st = status(memory_kube)
        assert (st["phase"], st["node"], st["subset"]) == ("Pending", "n1", part)
        assert verify_pass(memory_kube, "n2", fake_clock) == {}  # not asked of n2
        assert verify_pass(memory_kube, "n1", fake_clock) == {f"{NS}/t": "Completed"}
        st = status(memory_kube)
        assert st["phase"] == "Completed" and st["outcome"] == "Clean" and st["subset"] == part
        assert st["nextSlice"] == (2 if part == "1/2" else 1)
        read.append(st["objectsRead"])
    total = len(list(repo.store.list("packs/")))
    assert read[0] + read[1] == total and read[2] == read[0]
    got = memory_kube.get(BACKUP_TARGET, "t", NS)
    assert "Verified" in [e["reason"] for e in memory_kube.events_for(got)]

    # a pack whose header is cut off: the slice holding it reports the pack, by name
    victim = max(repo.store.list("packs/"), key=lambda i: i.size)
    path = tmp_path / "repo" / victim.key
    path.write_bytes(path.read_bytes()[:-3])
    outcomes = []
    for day in (9, 10):
        fake_clock.t = fake_clock.t.replace(day=day, hour=3, minute=1)
        tick_all(memory_kube, fake_clock)
        verify_pass(memory_kube, "n1", fake_clock)
        outcomes.append(status(memory_kube))
    (bad,) = [st for st in outcomes if st["outcome"] == "Damaged"]
    assert bad["damage"][0]["what"] == "pack" and bad["damage"][0]["name"] == victim.key.rpartition("/")[2]
    assert bad["damagedBackups"] == repo.backup_ids() and bad["problems"] == 1
    warnings = [e for e in memory_kube.events_for(memory_kube.get(BACKUP_TARGET, "t", NS))
                if e["reason"] == "VerifyFailed"]
    assert warnings and warnings[-1]["type"] == "Warning" and victim.key in warnings[-1]["message"]

    samples = {s.name: s.value for m in VerifyMetrics(memory_kube).collect() for s in m.samples}
    assert samples["statehold_backup_verify_damaged_objects"] == float(outcomes[-1]["problems"])
    assert samples["statehold_backup_verify_last_timestamp_seconds"] > 0


def test_a_percentage_records_its_seed_and_an_exclusive_holder_defers_the_run(
        memory_kube: MemoryKube, fake_clock: Any, tmp_path: Path) -> None:
    secret(memory_kube, "pw", password="x")
    agent_node(memory_kube, "n1")
    repo = repository(tmp_path / "repo")
    target(memory_kube, {"schedule": "0 3 * * *", "readDataSubset": "50%"}, str(tmp_path / "repo"))
    fake_clock.t = fake_clock.t.replace(day=6, hour=3, minute=1)
    tick_all(memory_kube, fake_clock)
    with Lock(repo, "exclusive"):  # a gc or prune: verify waits for the next pass
        assert verify_pass(memory_kube, "n1", fake_clock) == {f"{NS}/t": "Pending"}
    assert "busy" in status(memory_kube)["message"]
    with Lock(repo, "shared"):  # a backup: verify runs beside it
        assert verify_pass(memory_kube, "n1", fake_clock) == {f"{NS}/t": "Completed"}
    st = status(memory_kube)
    assert st["subset"].startswith("50% (seed ") and "nextSlice" not in st
    total = len(list(repo.store.list("packs/")))
    assert st["objectsRead"] == round(total / 2) and st["objectsTotal"] == total


def test_gc_and_verify_of_an_unreadable_repository_fail_and_say_so(memory_kube: MemoryKube, fake_clock: Any,
                                                                   tmp_path: Path) -> None:
    """Both jobs of one target through the node side they share (target_jobs): missing
    Secrets leave each Pending with a Warning; a repository whose ``config`` is garbage fails
    each with its own Warning reason; a request naming a subset no verify reads fails."""
    agent_node(memory_kube, "n1")
    repository(tmp_path / "repo")
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
                        "metadata": {"name": "t", "namespace": NS},
                        "spec": {"path": {"path": str(tmp_path / "repo")},
                                 "passwordSecretRef": {"name": "pw"},
                                 "verify": {"schedule": "0 3 * * *"}, "gc": {"schedule": "0 4 * * *"}}})
    fake_clock.t = fake_clock.t.replace(day=6, hour=4, minute=1)
    tick_all(memory_kube, fake_clock)
    gc_tick_all(memory_kube, fake_clock)
    both = {"verify": verify_pass, "gc": gc_pass}
    for field, run in both.items():  # no password Secret yet
        assert run(memory_kube, "n1", fake_clock) == {f"{NS}/t": "Pending"}
        assert memory_kube.get(BACKUP_TARGET, "t", NS)["status"][field]["phase"] == "Pending"
    secret(memory_kube, "pw", password="x")
    (tmp_path / "repo" / "config").write_bytes(b"{not json")
    for field, run in both.items():
        assert run(memory_kube, "n1", fake_clock) == {f"{NS}/t": "Failed"}
        st = memory_kube.get(BACKUP_TARGET, "t", NS)["status"][field]
        assert st["phase"] == "Failed" and st["completionTime"] == "2026-01-06T04:01:00Z"
        assert st["message"].startswith(f"{field} of ")
    events = memory_kube.events_for(memory_kube.get(BACKUP_TARGET, "t", NS))
    reasons = [(e["type"], e["reason"]) for e in events]
    assert ("Warning", "VerifyFailed") in reasons and ("Warning", "GarbageCollectionFailed") in reasons

    memory_kube.patch_status(BACKUP_TARGET, "t", {"verify": {"phase": "Pending", "subset": "9/2"}}, NS)
    assert verify_pass(memory_kube, "n1", fake_clock) == {f"{NS}/t": "Failed"}
    assert status(memory_kube)["message"].startswith("status.verify.subset '9/2'")
