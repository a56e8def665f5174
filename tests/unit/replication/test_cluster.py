"""The cluster's view of a replicated volume, below the adapters: the record read from its
JSON, and the stage-time table applied with any object that says ``available``/``fenced``
(the CSI node plugin and the controller share it)."""

from __future__ import annotations

from dataclasses import dataclass

from statehold.controller import replicas, replication_policy
from statehold.replication import cluster
from statehold.replication.cluster import (
    CopyInfo,
    Failover,
    Move,
    Refuse,
    Stage,
    record_of,
    stage_decision,
)


@dataclass(frozen=True)
class Up:
    available: bool = True
    fenced: bool = False


RV = {
    "metadata": {"name": "pv-1"},
    "spec": {"volumeHandle": "fast-a/pv-1", "replicas": 3, "size": 1048576,
             "move": {"to": "n3"}},
    "status": {"epoch": 4, "primary": "n1", "moving": {"to": "n3", "epoch": 4},
               "copies": [{"node": "n1", "role": "primary", "pool": "fast-a", "state": "Serving"},
                          {"node": "n2", "role": "replica", "point": "e4-9", "pool": "fast-b",
                           "state": "Unreachable"},
                          {"node": "n3", "role": "replica", "point": "e4-9", "pool": "fast-c"}]},
}


def test_record_of_reads_every_decision_input() -> None:
    rec = record_of(RV)
    assert (rec.volume, rec.epoch, rec.primary, rec.replicas, rec.size) == (
        "fast-a/pv-1", 4, "n1", 3, 1048576)
    assert (rec.move, rec.moving, rec.promote) == ("n3", "n3", None)
    assert rec.copy_on("n2") == CopyInfo("n2", "replica", "e4-9", "fast-b", reachable=False)
    assert rec.copy_on("n4") is None


def test_a_record_without_status_has_epoch_zero_and_no_primary() -> None:
    rec = record_of({"spec": {"volumeHandle": "p/v"}})
    assert (rec.epoch, rec.primary, rec.copies, rec.replicas) == (0, "", (), 1)


def test_stage_table_with_a_structural_health() -> None:
    rec = record_of({**RV, "status": {**RV["status"], "moving": None}})
    health = {"n1": Up(), "n2": Up(), "n3": Up()}
    assert stage_decision("n1", rec, health) == Stage("n1")
    assert stage_decision("n3", rec, health) == Move("n1", "n3")
    fenced = {**health, "n1": Up(available=False, fenced=True)}
    # n2 is unreachable: the newest reachable replica is n3 itself, promoted at epoch 5
    assert stage_decision("n3", rec, fenced) == Failover("n3", 5, "e4-9")
    down = {**health, "n1": Up(available=False)}
    refused = stage_decision("n3", rec, down)
    assert isinstance(refused, Refuse) and refused.reason == "PrimaryNotFenced"


def test_a_primary_moving_elsewhere_does_not_stage() -> None:
    refused = stage_decision("n1", record_of(RV), {"n1": Up()})
    assert isinstance(refused, Refuse) and refused.reason == "MoveInProgress"


def test_the_controller_re_exports_the_same_objects() -> None:
    assert replicas.CopyReport is cluster.CopyReport
    assert replicas.CopyTarget is cluster.CopyTarget
    assert replication_policy.stage_decision is cluster.stage_decision
    assert replication_policy.Record is cluster.Record
