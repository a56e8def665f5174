"""Builders for the JSON kube-scheduler really sends (full v1 Pod and Node objects) and for
the cluster objects the extender reads (PVC, PV, StorageClass, StoragePool)."""

from __future__ import annotations

import uuid
from typing import Any

DRIVER = "csi.statehold.io"
GiB = 1 << 30


def pod(name: str, claims: list[str], *, namespace: str = "default", uid: str | None = None,
        ephemeral: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Pending pod as the scheduler sends it: a StatefulSet pod with PVC volumes, the
    projected service-account volume, resources, tolerations, status."""
    volumes: list[dict[str, Any]] = [
        {"name": f"vol{i}", "persistentVolumeClaim": {"claimName": c}} for i, c in enumerate(claims)
    ]
    volumes += [{"name": e, "ephemeral": {"volumeClaimTemplate": {"spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "statehold-local",
        "resources": {"requests": {"storage": "1Gi"}}}}}} for e in ephemeral]
    volumes.append({"name": "kube-api-access-x7k2p", "projected": {
        "defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
    return {
        "metadata": {
            "name": name, "generateName": name.rsplit("-", 1)[0] + "-", "namespace": namespace,
            "uid": uid or str(uuid.uuid4()), "resourceVersion": "48211",
            "creationTimestamp": "2026-11-25T12:00:00Z",
            "labels": {"app": "postgres", "apps.kubernetes.io/pod-index": "0",
                       "statefulset.kubernetes.io/pod-name": name},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "pg",
                                 "uid": "0d2b5a7e-1111-4c55-9b1e-2b1f4c9a0e01",
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "volumes": volumes,
            "containers": [{
                "name": "postgres", "image": "postgres:16",
                "ports": [{"name": "pg", "containerPort": 5432, "protocol": "TCP"}],
                "resources": {"limits": {"memory": "1Gi"},
                              "requests": {"cpu": "250m", "memory": "512Mi"}},
                "volumeMounts": [{"name": f"vol{i}", "mountPath": f"/data/{i}"}
                                 for i in range(len(claims))],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "serviceAccount": "default", "hostname": name, "subdomain": "pg",
            "securityContext": {"fsGroup": 999}, "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "Burstable", "conditions": [
            {"type": "PodScheduled", "status": "False", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-25T12:00:00Z", "reason": "Unschedulable",
             "message": "0/3 nodes are available"}]},
    }


def node(name: str) -> dict[str, Any]:
    """A Ready worker Node as the scheduler sends it when nodeCacheCapable is false."""
    return {
        "metadata": {
            "name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "resourceVersion": "47002", "creationTimestamp": "2026-11-01T08:00:00Z",
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux", "topology.statehold.io/node": name,
                       "topology.kubernetes.io/zone": "zone-a"},
            "annotations": {"csi.volume.kubernetes.io/nodeid": f'{{"{DRIVER}":"{name}"}}',
                            "node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
                 "providerID": f"kind://docker/cluster/{name}"},
        "status": {
            "capacity": {"cpu": "8", "ephemeral-storage": "102626232Ki", "hugepages-2Mi": "0",
                         "memory": "32827100Ki", "pods": "110"},
            "allocatable": {"cpu": "8", "ephemeral-storage": "102626232Ki",
                            "hugepages-2Mi": "0", "memory": "32724700Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "lastHeartbeatTime": "2026-11-25T11:59:00Z",
                 "lastTransitionTime": "2026-11-01T08:00:00Z"},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                 "lastHeartbeatTime": "2026-11-25T11:59:00Z",
                 "lastTransitionTime": "2026-11-01T08:00:00Z"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status",
                 "lastHeartbeatTime": "2026-11-25T11:59:00Z",
                 "lastTransitionTime": "2026-11-01T08:00:30Z"}],
            "addresses": [{"type": "InternalIP", "address": "172.18.0.3"},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "4c1d", "systemUUID": "4c1d", "bootID": "9a0e",
                         "kernelVersion": "6.1.0-27-amd64", "osImage": "Debian GNU/Linux 12",
                         "containerRuntimeVersion": "containerd://1.7.18",
                         "kubeletVersion": "v1.34.1", "kubeProxyVersion": "v1.34.1",
                         "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": ["docker.io/library/postgres:16"], "sizeBytes": 158000000}],
        },
    }


def node_list(names: list[str]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": "47010"}, "items": [node(n) for n in names]}


def args(p: dict[str, Any], names: list[str], *, full_nodes: bool = False) -> dict[str, Any]:
    """ExtenderArgs: NodeNames when nodeCacheCapable, else Nodes (the other key is null)."""
    if full_nodes:
        return {"Pod": p, "Nodes": node_list(names), "NodeNames": None}
    return {"Pod": p, "Nodes": None, "NodeNames": names}


# -- cluster objects ---------------------------------------------------------------------
def storage_class(name: str = "statehold-local", *, wffc: bool = True,
                  provisioner: str = DRIVER, **params: str) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name}, "provisioner": provisioner,
            "parameters": {"type": "local", **params}, "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer" if wffc else "Immediate",
            "allowVolumeExpansion": True}


def pvc(name: str, size: str, *, namespace: str = "default", sc: str = "statehold-local",
        volume: str | None = None, selected_node: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
    if selected_node:
        meta["annotations"] = {"volume.kubernetes.io/selected-node": selected_node}
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "storageClassName": sc,
                            "resources": {"requests": {"storage": size}},
                            "volumeMode": "Filesystem"}
    if volume:
        spec["volumeName"] = volume
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec,
            "status": {"phase": "Bound" if volume else "Pending"}}


def pv(name: str, nodes: list[str], *, size: str = "10Gi", primary: str | None = None,
       driver: str = DRIVER) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if primary:
        meta["annotations"] = {"statehold.io/primary-node": primary}
    spec: dict[str, Any] = {
        "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "statehold-local",
        "volumeMode": "Filesystem",
        "csi": {"driver": driver, "volumeHandle": f"pool-a/{name}", "fsType": "xfs",
                "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "x"}},
    }
    if nodes:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "topology.statehold.io/node", "operator": "In", "values": nodes}]}]}}
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": meta, "spec": spec}


def storage_pool(name: str, node_name: str, capacity: int, provisioned: int = 0, *,
                 ratio: float | None = None, phase: str = "Ready") -> dict[str, Any]:
    spec: dict[str, Any] = {"node": node_name, "directory": "/var/lib/statehold",
                            "imageSize": "100Gi"}
    if ratio is not None:
        spec["overprovisionRatio"] = ratio
    return {"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
            "metadata": {"name": name}, "spec": spec,
            "status": {"phase": phase, "capacity": capacity, "allocated": provisioned // 2,
                       "provisioned": provisioned, "volumes": 0}}


def replicated_pv(name: str, *, handle: str | None = None, size: str = "10Gi",
                  operator: str = "In") -> dict[str, Any]:
    """A PV of a replicated volume as external-provisioner writes it from the accessible
    topology ``{copy.statehold.io/<h16>: "true"}``."""
    import hashlib

    handle = handle or f"pool-a/{name}"
    key = "copy.statehold.io/" + hashlib.sha256(handle.encode()).hexdigest()[:16]
    expr: dict[str, Any] = {"key": key, "operator": operator}
    if operator == "In":
        expr["values"] = ["true"]
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "statehold-replicated",
                     "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "xfs",
                             "volumeAttributes": {"statehold.io/replicas": "3"}},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [
                         {"matchExpressions": [expr]}]}}}}


def replicated_volume(name: str, primary: str, copies: list[tuple[str, str, str | None]], *,
                      epoch: int = 3) -> dict[str, Any]:
    """A ReplicatedVolume with status: copies as (node, role, point)."""
    return {"apiVersion": "statehold.io/v1alpha1", "kind": "ReplicatedVolume",
            "metadata": {"name": name},
            "spec": {"volumeHandle": f"pool-a/{name}", "replicas": len(copies), "size": 10 * GiB},
            "status": {"epoch": epoch, "primary": primary, "copies": [
                {"node": n, "role": r, **({"point": p} if p else {})} for n, r, p in copies]}}


def down_node(name: str, *, out_of_service: bool = False) -> dict[str, Any]:
    """A Node whose kubelet stopped posting (Ready Unknown), maybe tainted out-of-service."""
    n = node(name)
    n["status"]["conditions"][-1] = {"type": "Ready", "status": "Unknown",
                                     "reason": "NodeStatusUnknown"}
    taints = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    if out_of_service:
        taints.append({"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                       "effect": "NoExecute"})
    n["spec"]["taints"] = taints
    return n
