"""Builders for a small fake-free cluster state in MemoryKube (objects, not mocks)."""

from __future__ import annotations

from typing import Any

from statehold.controller.locate import DRIVER, TOPOLOGY_KEY
from statehold.kube.kinds import PVC as PVC_KIND
from statehold.kube.memory import MemoryKube

NS = "databases"


def secret(kube: MemoryKube, name: str, **data: str) -> dict[str, Any]:
    return kube.create({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": name, "namespace": NS}, "stringData": data})


def path_target(kube: MemoryKube, name: str = "t", path: str = "/var/tmp/none",
                password_secret: str = "pw") -> dict[str, Any]:
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
                        "metadata": {"name": name, "namespace": NS},
                        "spec": {"path": {"path": path},
                                 "passwordSecretRef": {"name": password_secret}}})


def bound_pvc(kube: MemoryKube, name: str, *, node: str = "n1", pool: str = "fast",
              volume: str | None = None, driver: str = DRIVER, size: str = "1Gi",
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    pv_name = f"pv-{name}"
    kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
                 "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                          "claimRef": {"namespace": NS, "name": name},
                          "csi": {"driver": driver, "volumeHandle": f"{pool}/{volume or name}",
                                  "fsType": "xfs"},
                          "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                              {"key": TOPOLOGY_KEY, "operator": "In", "values": [node]}]}]}}}})
    pvc = kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
                       "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": pv_name,
                                "storageClassName": "statehold-local",
                                "resources": {"requests": {"storage": size}}}})
    kube.patch_status(PVC_KIND, name, {"phase": "Bound"}, NS)
    return pvc


def volume_backup(kube: MemoryKube, name: str, pvc: str, target: str = "t") -> dict[str, Any]:
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeBackup",
                        "metadata": {"name": name, "namespace": NS},
                        "spec": {"persistentVolumeClaimName": pvc, "target": target}})


def storage_class(kube: MemoryKube, name: str = "statehold-local", provisioner: str = DRIVER) -> None:
    kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                 "metadata": {"name": name}, "provisioner": provisioner,
                 "parameters": {"csi.storage.k8s.io/fstype": "xfs"},
                 "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True})

