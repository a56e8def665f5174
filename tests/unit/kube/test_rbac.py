"""The chart's RBAC is enough for the cluster operator's handlers (and used by them): the
handlers run through a facade that allows only the statehold-operator account's rules."""

from __future__ import annotations

from typing import Any

from statehold.controller import target_gc
from statehold.controller.backups import assign_backup
from statehold.controller.restores import assign_restore
from statehold.controller.schedules import reconcile_schedule
from statehold.controller.target_status import reconcile_target
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    BACKUP_TARGET,
    STORAGE_POOL,
    VOLUME_BACKUP,
    VOLUME_RESTORE,
)
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class
from tests.unit.kube.rbac import RbacKube, rules_for
from tests.unit.kube.validation import render


def test_cluster_operator_rbac_covers_its_handlers(memory_kube: MemoryKube, fake_clock: Any) -> None:
    rbac = RbacKube(memory_kube, rules_for(render.render_chart(), "statehold-operator"))
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data-0", labels={"backup": "nightly"})
    bound_pvc(memory_kube, "ebs", driver="ebs.csi.aws.com")
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                        "metadata": {"name": "nightly", "namespace": NS},
                        "spec": {"schedule": "0 3 * * *", "target": "t", "retention": {"keepLast": 1},
                                 "selector": {"matchLabels": {"backup": "nightly"}}}})
    memory_kube.patch(BACKUP_TARGET, "t", {"spec": {"gc": {"schedule": "0 4 * * *"}}}, NS)
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                        "metadata": {"name": "p1"},
                        "spec": {"node": "n1", "directory": "/var/tmp/x", "imageSize": "1Gi"}})
    memory_kube.patch_status(STORAGE_POOL, "p1", {"phase": "Ready"})
    reconcile_target(rbac, memory_kube.get(BACKUP_TARGET, "t", NS), fake_clock)
    for day in range(3):
        fake_clock.advance(days=1)
        reconcile_schedule(rbac, memory_kube.get(BACKUP_SCHEDULE, "nightly", NS), fake_clock)
        target_gc.tick(rbac, memory_kube.get(BACKUP_TARGET, "t", NS), fake_clock)
        for vb in memory_kube.list(VOLUME_BACKUP, NS):
            if (vb.get("status") or {}).get("phase") in ("Completed", "Failed"):
                continue
            assign_backup(rbac, vb, fake_clock)
            memory_kube.patch_status(VOLUME_BACKUP, vb["metadata"]["name"], {
                "phase": "Failed" if day == 0 else "Completed", "backupId": f"id{day}",
                "completionTime": f"2026-01-0{6 + day}T03:10:00Z"}, NS)
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeBackup",
                        "metadata": {"name": "foreign", "namespace": NS},
                        "spec": {"persistentVolumeClaimName": "ebs", "target": "t"}})
    assign_backup(rbac, memory_kube.get(VOLUME_BACKUP, "foreign", NS), fake_clock)
    backup = memory_kube.list(VOLUME_BACKUP, NS, label_selector="statehold.io/schedule")[0]
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                        "metadata": {"name": "r", "namespace": NS},
                        "spec": {"backup": backup["metadata"]["name"],
                                 "persistentVolumeClaimName": "copy"}})
    assign_restore(rbac, memory_kube.get(VOLUME_RESTORE, "r", NS), fake_clock)
    assert rbac.denied == []
    assert ("statehold.io", "volumebackups", "delete") in rbac.used      # the failed one went
    assert memory_kube.get(BACKUP_TARGET, "t", NS)["status"]["gc"]["phase"] == "Pending"
    assert memory_kube.get(VOLUME_RESTORE, "r", NS)["status"]["phase"] == "Pending"


def test_cluster_operator_rbac_covers_replicated_volumes(memory_kube: MemoryKube,
                                                         fake_clock: Any) -> None:
    from statehold.controller.replication import replication_pass
    from statehold.kube.kinds import PV, REPLICATED_VOLUME, STORAGE_POOL
    from tests.unit.controller.replication_fakes import (
        FakeAgents,
        node,
        pool,
        replicated_pv,
        set_ready,
        taint_out_of_service,
    )

    rbac = RbacKube(memory_kube, rules_for(render.render_chart(), "statehold-operator"))
    agents = FakeAgents()
    for i in (1, 2, 3):
        node(memory_kube, f"n{i}")
        pool(memory_kube, f"p{i}", f"n{i}")
    agents.made_by_create_volume("n1")
    replicated_pv(memory_kube)
    replication_pass(rbac, agents, fake_clock)                 # record, epoch 1, a replica
    agents.replicate()
    memory_kube.patch(STORAGE_POOL, "p3", {"spec": {"decommission": True}})
    replication_pass(rbac, agents, fake_clock)                 # labels, Retiring condition
    set_ready(memory_kube, "n1", False)
    taint_out_of_service(memory_kube, "n1")
    agents.down.add("n1")
    replication_pass(rbac, agents, fake_clock)                 # failover: CAS of the status
    memory_kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"promote": {"node": "n1"}}})
    replication_pass(rbac, agents, fake_clock)                 # refused, request cleared
    agents.down.discard("n1")
    memory_kube.delete(PV, "pvc-1")
    replication_pass(rbac, agents, fake_clock)                 # record retired
    assert rbac.denied == []
    assert memory_kube.list(REPLICATED_VOLUME) == []
    assert {("statehold.io", "replicatedvolumes/status", "update"), ("", "nodes", "patch"),
            ("statehold.io", "replicatedvolumes", "delete")} <= rbac.used
