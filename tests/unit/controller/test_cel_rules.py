"""Every CEL rule in our CRDs, evaluated by a real CEL interpreter (cel-python) and by its
Python twin on the same table of inputs: they must agree.

The inputs are what the API server hands CEL: the object after defaulting.
"""

from __future__ import annotations

from typing import Any

import celpy
import pytest

from statehold.controller import crds
from statehold.controller.cel_rules import RULES

POOL = {"node": "n", "filesystem": "xfs", "profile": "single", "importExisting": False,
        "imageCount": 1, "layout": "file"}
CASES: dict[str, list[Any]] = {
    crds.ONE_OF_DEVICES_DIRECTORY: [POOL, {**POOL, "devices": ["/dev/a"]},
                                    {**POOL, "directory": "/d"},
                                    {**POOL, "devices": ["/dev/a"], "directory": "/d"}],
    crds.RAID_NEEDS_BTRFS: [POOL, {**POOL, "profile": "raid1"},
                            {**POOL, "profile": "raid1", "filesystem": "btrfs"},
                            {**POOL, "filesystem": "btrfs"}],
    crds.SUBVOLUME_NEEDS_BTRFS: [POOL, {**POOL, "layout": "subvolume"},
                                 {**POOL, "layout": "subvolume", "filesystem": "btrfs"},
                                 {**POOL, "filesystem": "btrfs"}],
    crds.DIRECTORY_NEEDS_SIZE: [POOL, {**POOL, "directory": "/d"},
                                {**POOL, "directory": "/d", "imageSize": "1Gi"},
                                {**POOL, "directory": "/d", "importExisting": True}],
    crds.FS_MATCHES_DISKS: [{**POOL, "devices": ["/dev/a"]},
                            {**POOL, "devices": ["/dev/a", "/dev/b"]},
                            {**POOL, "devices": ["/dev/a", "/dev/b"], "filesystem": "btrfs"},
                            {**POOL, "directory": "/d", "filesystem": "btrfs"},
                            {**POOL, "directory": "/d", "imageCount": 2, "filesystem": "btrfs"},
                            {**POOL, "devices": ["/dev/a"], "layout": "subvolume",
                             "filesystem": "btrfs"},
                            {**POOL, "directory": "/d", "layout": "subvolume",
                             "filesystem": "btrfs"},
                            {**POOL, "directory": "/d", "layout": "subvolume"}],
    crds.ONE_OF_S3_PATH: [{}, {"s3": {}}, {"path": {}}, {"s3": {}, "path": {}}],
    crds.SELECTOR_NOT_EMPTY: [{}, {"matchLabels": {}}, {"matchLabels": {"a": "b"}},
                              {"matchExpressions": []},
                              {"matchExpressions": [{"key": "a", "operator": "Exists"}]}],
    crds.VALUES_MATCH_OPERATOR: [{"key": "a", "operator": "In"},
                                 {"key": "a", "operator": "In", "values": ["x"]},
                                 {"key": "a", "operator": "NotIn", "values": []},
                                 {"key": "a", "operator": "Exists"},
                                 {"key": "a", "operator": "Exists", "values": ["x"]},
                                 {"key": "a", "operator": "DoesNotExist", "values": []}],
    crds.ONE_REQUEST_AT_A_TIME: [{"volumeHandle": "p/v", "replicas": 2},
                                 {"volumeHandle": "p/v", "replicas": 2, "promote": {"node": "a"}},
                                 {"volumeHandle": "p/v", "replicas": 2, "move": {"to": "b"}},
                                 {"volumeHandle": "p/v", "replicas": 2, "promote": {"node": "a"},
                                  "move": {"to": "b"}}],
    crds.ONE_OF_SET_NAME_SELECTOR: [{"target": "t"}, {"target": "t", "statefulSetName": "db"},
                                    {"target": "t", "selector": {"matchLabels": {"a": "b"}}},
                                    {"target": "t", "statefulSetName": "db",
                                     "selector": {"matchLabels": {"a": "b"}}}],
    crds.ONE_OF_SET_REF: [{}, {"name": "db"}, {"selector": {"matchLabels": {"a": "b"}}},
                          {"name": "db", "selector": {"matchLabels": {"a": "b"}}}],
    crds.ONE_OF_PVCS_SET: [{"schedule": "0 3 * * *"},
                           {"schedule": "0 3 * * *", "selector": {"matchLabels": {"a": "b"}}},
                           {"schedule": "0 3 * * *", "statefulSet": {"name": "db"}},
                           {"schedule": "0 3 * * *", "statefulSet": {"name": "db"},
                            "selector": {"matchLabels": {"a": "b"}}}],
    crds.ONE_OF_BACKUP_GROUP: [{}, {"backup": "b"}, {"groupBackupId": "20260101T000000Z-0a0b0c0d"},
                               {"backup": "b", "groupBackupId": "20260101T000000Z-0a0b0c0d"}],
    crds.GROUP_ID_NEEDS_TARGET: [{"backup": "b"}, {"backup": "b", "target": "t"},
                                 {"groupBackupId": "20260101T000000Z-0a0b0c0d"},
                                 {"groupBackupId": "20260101T000000Z-0a0b0c0d", "target": "t"}],
}
TRANSITIONS = {"self == oldSelf": [("a", "a"), ("a", "b"), ({"x": 1}, {"x": 1}), ({"x": 1}, {"x": 2})],
               crds.EPOCH_ONLY_GROWS: [(1, 1), (2, 1), (1, 2)]}


def cel(rule: str, self_: Any, old: Any = None) -> bool:
    env = celpy.Environment()
    prog = env.program(env.compile(rule))
    act = {"self": celpy.json_to_cel(self_)}
    if old is not None:
        act["oldSelf"] = celpy.json_to_cel(old)
    return bool(prog.evaluate(act))


def test_every_twin_has_a_table() -> None:
    assert set(RULES) == set(CASES) | set(TRANSITIONS)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_cel_and_python_twin_agree(rule: str) -> None:
    results = [(cel(rule, case), RULES[rule](case, None)) for case in CASES[rule]]
    assert all(a == b for a, b in results), results
    assert {a for a, _ in results} == {True, False}, "each table must hit both outcomes"


@pytest.mark.parametrize("rule", sorted(TRANSITIONS))
def test_transition_rules_agree(rule: str) -> None:
    for new, old in TRANSITIONS[rule]:
        assert cel(rule, new, old) == RULES[rule](new, old)
