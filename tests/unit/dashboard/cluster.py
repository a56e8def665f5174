"""A small cluster for the dashboard's tests: a pool, two claims, backups, a schedule,
a restore, a snapshot."""

from __future__ import annotations

from statehold.kube.kinds import BACKUP_SCHEDULE, PV, STORAGE_POOL, VOLUME_BACKUP, VOLUME_RESTORE
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, volume_backup

GiB = 1 << 30
READ_ONLY = [{"apiGroups": ["", "statehold.io", "snapshot.storage.k8s.io"],
              "resources": ["persistentvolumeclaims", "persistentvolumes", "storagepools",
                            "volumebackups", "volumerestores", "backupschedules",
                            "backuptargets", "replicatedvolumes", "volumesnapshots", "events"],
              "verbs": ["get", "list", "watch"]}]
OPERATOR = [{**READ_ONLY[0], "verbs": ["get", "list", "watch", "create"]}]


def populate(k: MemoryKube) -> MemoryKube:
    k.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
              "metadata": {"name": "fast"}, "spec": {"node": "n1", "devices": ["/dev/nvme1n1"]}})
    k.patch_status(STORAGE_POOL, "fast", {"phase": "Ready", "capacity": 100 * GiB,
                                          "allocated": 37 * GiB, "provisioned": 120 * GiB,
                                          "free": 63 * GiB, "volumes": 2})
    secret(k, "pw", password="x")
    path_target(k)
    bound_pvc(k, "data", node="n1", size="10Gi")
    bound_pvc(k, "logs", node="n1", size="2Gi")
    for pv in ("pv-data", "pv-logs"):
        k.patch_status(PV, pv, {"phase": "Bound"})
    volume_backup(k, "data-1", "data")
    k.patch_status(VOLUME_BACKUP, "data-1", {"phase": "Completed", "bytesTotal": 3 * GiB,
                                             "startTime": "2026-01-04T02:00:00Z"}, NS)
    volume_backup(k, "data-2", "data")
    k.patch_status(VOLUME_BACKUP, "data-2", {"phase": "Failed",
                                             "startTime": "2026-01-05T02:00:00Z",
                                             "conditions": [{"type": "Ready", "status": "False",
                                                             "reason": "TargetUnreachable",
                                                             "lastTransitionTime": "2026-01-05T02:01:00Z",
                                                             "message": "target t unreachable"}]}, NS)
    k.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
              "metadata": {"name": "nightly", "namespace": NS},
              "spec": {"schedule": "0 2 * * *", "target": "t",
                       "selector": {"matchLabels": {"app": "db"}}}})
    k.patch_status(BACKUP_SCHEDULE, "nightly", {"lastScheduleTime": "2026-01-05T02:00:00Z",
                                                "nextScheduleTime": "2026-01-06T02:00:00Z"}, NS)
    k.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
              "metadata": {"name": "data-back", "namespace": NS},
              "spec": {"backup": "data-1", "persistentVolumeClaimName": "data-copy"}})
    k.patch_status(VOLUME_RESTORE, "data-back", {"phase": "Completed"}, NS)
    k.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
              "metadata": {"name": "data-before-upgrade", "namespace": NS},
              "spec": {"source": {"persistentVolumeClaimName": "data"}}})
    return k
