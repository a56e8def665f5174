"""The chart's RBAC covers the StatefulSet handlers: the operator's (assign, schedules that
target sets, the node plugin's grants) and the node agent's (hooks through pods/exec, the
set, status), each run through a facade that allows only its account's rendered rules and,
for the node, what the operator granted it (``node_grants``: nothing before)."""

from __future__ import annotations

from typing import Any

from statehold.controller.node_grants import NodeGrants
from statehold.controller.schedules import reconcile_schedule
from statehold.controller.statefulset_backups import assign_set_backup, run_set_backup
from statehold.controller.statefulset_restores import assign_set_restore
from statehold.errors import Temporary
from statehold.kube.kinds import BACKUP_SCHEDULE, STATEFUL_SET_BACKUP, STATEFUL_SET_RESTORE
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, path_target, secret, storage_class
from tests.unit.controller.statefulset_cluster import (
    FakeNode,
    Recorder,
    claims,
    hook,
    running_pods,
    statefulset,
)
from tests.unit.kube.rbac import RbacKube, as_node_plugin, rules_for
from tests.unit.kube.validation import render

API = "statehold.io/v1alpha1"


def test_operator_and_node_rbac_cover_the_statefulset_handlers(memory_kube: MemoryKube,
                                                              fake_clock: Any) -> None:
    docs = render.render_chart()
    operator = RbacKube(memory_kube, rules_for(docs, "statehold-operator"))
    agent = as_node_plugin(memory_kube, docs)
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    storage_class(memory_kube)
    statefulset(memory_kube, labels={"backup": "yes"})
    claims(memory_kube)
    running_pods(memory_kube)
    rec = Recorder()
    memory_kube.on_exec(rec.exec)
    memory_kube.create({"apiVersion": API, "kind": "BackupSchedule",
                        "metadata": {"name": "nightly", "namespace": NS},
                        "spec": {"schedule": "0 3 * * *", "target": "t", "retention": {"keepLast": 1},
                                 "statefulSet": {"name": "db", "hooks": {
                                     "pre": [hook("checkpoint", "psql", "CHECKPOINT")],
                                     "post": [hook("done", "true")]}}}})
    for _ in range(3):
        fake_clock.advance(days=1)
        reconcile_schedule(operator, memory_kube.get(BACKUP_SCHEDULE, "nightly", NS), fake_clock)
        for b in memory_kube.list(STATEFUL_SET_BACKUP, NS):
            assign_set_backup(operator, b, fake_clock)
            memory_kube.patch_status(STATEFUL_SET_BACKUP, b["metadata"]["name"], {
                "phase": "Completed", "groupBackupId": "20260105T100000Z-0a0b0c0d",
                "completionTime": "2026-01-06T03:10:00Z"}, NS)
    # completed ones are the agent's to prune with their groups; the schedule deletes a
    # failed one older than a completed one
    oldest = sorted(o["metadata"]["name"] for o in memory_kube.list(STATEFUL_SET_BACKUP, NS))[0]
    memory_kube.patch_status(STATEFUL_SET_BACKUP, oldest, {
        "phase": "Failed", "completionTime": "2026-01-05T03:10:00Z"}, NS)
    reconcile_schedule(operator, memory_kube.get(BACKUP_SCHEDULE, "nightly", NS), fake_clock)
    first = memory_kube.list(STATEFUL_SET_BACKUP, NS)[0]
    memory_kube.create({"apiVersion": API, "kind": "StatefulSetRestore",
                        "metadata": {"name": "r", "namespace": NS},
                        "spec": {"backup": first["metadata"]["name"], "statefulSetName": "copy"}})
    assign_set_restore(operator, memory_kube.get(STATEFUL_SET_RESTORE, "r", NS), fake_clock)
    assert operator.denied == []
    assert ("statehold.io", "statefulsetbackups", "delete") in operator.used   # pruning ran
    assert ("apps", "statefulsets", "get") in operator.used

    memory_kube.create({"apiVersion": API, "kind": "StatefulSetBackup",
                        "metadata": {"name": "now", "namespace": NS},
                        "spec": {"statefulSetName": "db", "target": "t", "hooks": {
                            "pre": [hook("checkpoint", "psql", "CHECKPOINT")]}}})
    assign_set_backup(operator, memory_kube.get(STATEFUL_SET_BACKUP, "now", NS), fake_clock)
    node = FakeNode(rec, fail=Temporary("busy"))
    # before the operator's grants the node may read no Secret and exec into no pod: it waits
    waited = run_set_backup(agent, memory_kube.get(STATEFUL_SET_BACKUP, "now", NS), node, "n1",
                            fake_clock)
    assert waited.outcome == "retry" and rec.log == []
    assert agent.denied == [("", "secrets", "get")]
    agent.denied.clear()
    NodeGrants(operator, "statehold-system").sync(NS)
    run_set_backup(agent, memory_kube.get(STATEFUL_SET_BACKUP, "now", NS), node, "n1", fake_clock)
    assert agent.denied == [] and operator.denied == []
    assert ("", "pods/exec", "create") in agent.used and ("", "pods", "get") in agent.used
    assert rec.log[:3] == ["exec db-0 psql CHECKPOINT", "exec db-1 psql CHECKPOINT",
                           "exec db-2 psql CHECKPOINT"]
    # the agent deletes the StatefulSetBackups of the groups its prune removed
    agent.delete(STATEFUL_SET_BACKUP, first["metadata"]["name"], NS)
    assert agent.denied == []
