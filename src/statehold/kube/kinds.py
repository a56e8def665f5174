"""The Kubernetes kinds Statehold reads and writes, as plain values.

A :class:`Kind` carries what is needed to build a REST path (group/version, plural,
namespaced) and whether the kind has a ``status`` subresource (then a plain patch never
changes ``.status`` and :meth:`Kube.patch_status` never changes anything else).
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "statehold.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True, slots=True)
class Kind:
    api_version: str  # "v1", "storage.k8s.io/v1", "statehold.io/v1alpha1"
    kind: str
    plural: str
    namespaced: bool
    status_subresource: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection (name None) or of one object."""
        base = "/api/v1" if self.group == "" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base if name is None else f"{base}/{name}"


# Our custom resources (deploy/chart/statehold/crds/).
STORAGE_POOL = Kind(API_VERSION, "StoragePool", "storagepools", namespaced=False)
BACKUP_TARGET = Kind(API_VERSION, "BackupTarget", "backuptargets", namespaced=True)
VOLUME_BACKUP = Kind(API_VERSION, "VolumeBackup", "volumebackups", namespaced=True)
BACKUP_SCHEDULE = Kind(API_VERSION, "BackupSchedule", "backupschedules", namespaced=True)
VOLUME_RESTORE = Kind(API_VERSION, "VolumeRestore", "volumerestores", namespaced=True)
REPLICATED_VOLUME = Kind(API_VERSION, "ReplicatedVolume", "replicatedvolumes", namespaced=False)
STATEFUL_SET_BACKUP = Kind(API_VERSION, "StatefulSetBackup", "statefulsetbackups", namespaced=True)
STATEFUL_SET_RESTORE = Kind(API_VERSION, "StatefulSetRestore", "statefulsetrestores",
                            namespaced=True)

# Built-in kinds.
NAMESPACE = Kind("v1", "Namespace", "namespaces", namespaced=False)
NODE = Kind("v1", "Node", "nodes", namespaced=False)
PVC = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims", namespaced=True)
PV = Kind("v1", "PersistentVolume", "persistentvolumes", namespaced=False)
SECRET = Kind("v1", "Secret", "secrets", namespaced=True, status_subresource=False)
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps", namespaced=True, status_subresource=False)
EVENT = Kind("v1", "Event", "events", namespaced=True, status_subresource=False)
POD = Kind("v1", "Pod", "pods", namespaced=True)
STATEFUL_SET = Kind("apps/v1", "StatefulSet", "statefulsets", namespaced=True)
STORAGE_CLASS = Kind("storage.k8s.io/v1", "StorageClass", "storageclasses", namespaced=False,
                     status_subresource=False)
CSI_STORAGE_CAPACITY = Kind("storage.k8s.io/v1", "CSIStorageCapacity", "csistoragecapacities",
                            namespaced=True, status_subresource=False)
CSI_NODE = Kind("storage.k8s.io/v1", "CSINode", "csinodes", namespaced=False,
                status_subresource=False)
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases", namespaced=True,
             status_subresource=False)
ROLE = Kind("rbac.authorization.k8s.io/v1", "Role", "roles", namespaced=True,
            status_subresource=False)
ROLE_BINDING = Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", namespaced=True,
                    status_subresource=False)
VOLUME_SNAPSHOT = Kind("snapshot.storage.k8s.io/v1", "VolumeSnapshot", "volumesnapshots",
                       namespaced=True)
VOLUME_SNAPSHOT_CONTENT = Kind("snapshot.storage.k8s.io/v1", "VolumeSnapshotContent",
                               "volumesnapshotcontents", namespaced=False)

ALL: tuple[Kind, ...] = (
    STORAGE_POOL, BACKUP_TARGET, VOLUME_BACKUP, BACKUP_SCHEDULE, VOLUME_RESTORE,
    REPLICATED_VOLUME, STATEFUL_SET_BACKUP, STATEFUL_SET_RESTORE, NAMESPACE, NODE, PVC, PV,
    SECRET, CONFIG_MAP, EVENT, POD, STATEFUL_SET, STORAGE_CLASS, CSI_STORAGE_CAPACITY, CSI_NODE,
    LEASE, ROLE, ROLE_BINDING, VOLUME_SNAPSHOT, VOLUME_SNAPSHOT_CONTENT,
)


def kind_of(obj: dict[str, object]) -> Kind:
    """The Kind of a raw object, from its apiVersion and kind (InvalidArgument if unknown)."""
    from statehold.errors import InvalidArgument

    for k in ALL:
        if k.api_version == obj.get("apiVersion") and k.kind == obj.get("kind"):
            return k
    raise InvalidArgument(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}")
