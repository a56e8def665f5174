"""The Statehold CustomResourceDefinitions (``statehold.io/v1alpha1``), as data.

This module is the source of truth: ``deploy/chart/statehold/crds/*.yaml`` and
``deploy/manifests/statehold.yaml`` are generated from it (``.venv/bin/python
deploy/render.py`` — a test fails when they are stale), and the in-memory API
validates custom resources with the same schemas. Every schema must be structural (an API
server refuses the CRD otherwise); ``tests/unit/controller/test_structural.py`` checks the
shipped files offline.

Rules a structural schema cannot express are CEL rules (``x-kubernetes-validations``),
each with a Python twin in :mod:`statehold.controller.cel_rules`. What CEL cannot do either
(cron syntax, Secrets existing, the PVC's driver) the operator checks and reports as a
condition plus an Event.
"""

from __future__ import annotations

from typing import Any

from statehold.controller.openapi import (
    AGE,
    DNS_SUBDOMAIN,
    READY,
    REASON,
    Schema,
    array,
    boolean,
    column,
    immutable,
    integer,
    label_selector,
    name_ref,
    number,
    obj,
    quantity,
    secret_key_ref,
    status,
    string,
)

GROUP = "statehold.io"
VERSION = "v1alpha1"

# The rule strings are named so cel_rules can key its Python twins on them.
ONE_OF_DEVICES_DIRECTORY = "has(self.devices) != has(self.directory)"
RAID_NEEDS_BTRFS = "self.profile == 'single' || self.filesystem == 'btrfs'"
DIRECTORY_NEEDS_SIZE = "!has(self.directory) || self.importExisting || has(self.imageSize)"
FS_MATCHES_DISKS = ("(self.filesystem == 'btrfs') == "
                    "(has(self.devices) ? size(self.devices) > 1 : self.imageCount > 1)")
ONE_OF_S3_PATH = "has(self.s3) != has(self.path)"
SELECTOR_NOT_EMPTY = (
    "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
    "(has(self.matchExpressions) && size(self.matchExpressions) > 0)")
ONE_REQUEST_AT_A_TIME = "!(has(self.promote) && has(self.move))"
EPOCH_ONLY_GROWS = "self >= oldSelf"
VALUES_MATCH_OPERATOR = (
    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
    ": (!has(self.values) || size(self.values) == 0)")


def storage_pool_schema() -> Schema:
    spec = obj({
        "node": immutable(string("Name of the Node whose agent owns this pool.", minLength=1,
                                 maxLength=253), "node"),
        "devices": array(string(pattern="^/dev/.+", maxLength=4096), "Whole block devices for the pool "
                         "(wiped unless importExisting).", minItems=1, maxItems=16),
        "directory": string("A host directory for file-backed disk images (for nodes "
                            "without spare disks).", pattern="^/.+", maxLength=4096),
        "imageSize": quantity("Size of each disk image in directory mode."),
        "imageCount": integer("How many images in directory mode (RAID needs >1).",
                              minimum=1, maximum=16, default=1),
        "filesystem": string("Pool filesystem: xfs (reflink) or btrfs (several disks, RAID).",
                             enum=["xfs", "btrfs"], default="xfs"),
        "profile": string("RAID profile across the disks (btrfs only for anything but "
                          "single).", enum=["single", "raid0", "raid1", "raid10"],
                          default="single"),
        "overprovisionRatio": number("Thin provisioning limit: the sum of volume sizes may "
                                     "reach capacity times this.", minimum=1, maximum=100,
                                     default=10),
        "importExisting": boolean("Import a pool that already lives on these disks (moved "
                                  "from another node) instead of creating one.", default=False),
        "force": boolean("Accept devices that hold a filesystem or partition table.",
                         default=False),
        "decommission": boolean("Retire the pool: every replicated volume's copy in it is "
                                "moved or re-placed on other nodes first (refused, with the "
                                "condition Retiring=False, when they lack the room).",
                                default=False),
    }, required=("node",), rules=(
        (ONE_OF_DEVICES_DIRECTORY, "exactly one of devices or directory must be set"),
        (RAID_NEEDS_BTRFS, "RAID profiles other than single need filesystem btrfs"),
        (DIRECTORY_NEEDS_SIZE, "directory pools need imageSize (unless importExisting)"),
        (FS_MATCHES_DISKS, "filesystem must be xfs for one disk and btrfs for several"),
    ))
    st = status({
        "phase": string(enum=["Pending", "Ready", "Failed"]),
        "mountpoint": string(),
        "capacity": integer("Bytes the pool filesystem holds.", minimum=0),
        "allocated": integer("Bytes physically used.", minimum=0),
        "provisioned": integer("Sum of volume sizes (thin).", minimum=0),
        "free": integer("Bytes physically free.", minimum=0),
        "allocatable": integer("Bytes that may still be provisioned.", minimum=0),
        "volumes": integer(minimum=0),
    })
    return obj({"spec": spec, "status": st}, required=("spec",))


def backup_target_schema() -> Schema:
    s3 = obj({
        "endpoint": string("S3 endpoint URL.", pattern="^https?://.+"),
        "bucket": string(minLength=3, maxLength=63),
        "prefix": string("Key prefix of the repository inside the bucket.", default=""),
        "region": string(default="us-east-1"),
        "insecureSkipTLSVerify": boolean(default=False),
        "credentialsSecretRef": obj({
            "name": name_ref("Secret with the access key pair (same namespace)."),
            "accessKeyIdKey": string(default="accessKeyId", minLength=1),
            "secretAccessKeyKey": string(default="secretAccessKey", minLength=1),
        }, required=("name",)),
    }, required=("endpoint", "bucket", "credentialsSecretRef"), desc="An S3 bucket.")
    path = obj({
        "path": string("Absolute path, the same on every node (e.g. an NFS mount).",
                       pattern="^/.+"),
    }, required=("path",), desc="A directory reachable from every node.")
    spec = obj({
        "s3": s3,
        "path": path,
        "passwordSecretRef": secret_key_ref(
            "Secret holding the repository password (encryption key).", "password"),
    }, required=("passwordSecretRef",), rules=(
        (ONE_OF_S3_PATH, "exactly one target type must be set: s3 or path"),))
    st = status({"phase": string(enum=["Pending", "Ready", "Failed"]),
                 "repository": string("Repository location, for display.")})
    return obj({"spec": spec, "status": st}, required=("spec",))


def volume_backup_schema() -> Schema:
    spec = immutable(obj({
        "persistentVolumeClaimName": name_ref("The PVC to back up (same namespace)."),
        "target": name_ref("The BackupTarget (same namespace)."),
    }, required=("persistentVolumeClaimName", "target")), "spec")
    st = status({
        "phase": string(enum=["Pending", "Running", "Completed", "Failed"]),
        "node": string("Node that holds the volume and ran the backup."),
        "volumeHandle": string("CSI volume id (<pool>/<volume>, or shared/<root>/<name> for a "
                               "shared volume, backed up as a file tree)."),
        "snapshot": string("Engine snapshot the backup was read from."),
        "backupId": string("Id of the backup in the repository."),
        "parentBackupId": string("Backup this one is incremental to."),
        "bytesTotal": integer("Logical size of the volume.", minimum=0),
        "bytesDone": integer("Bytes read so far.", minimum=0),
        "bytesUploaded": integer("New (deduplicated, compressed) bytes stored.", minimum=0),
        "progress": integer("Percent done.", minimum=0, maximum=100),
        "startTime": string(format="date-time"),
        "completionTime": string(format="date-time"),
    })
    return obj({"spec": spec, "status": st}, required=("spec",))


def backup_schedule_schema() -> Schema:
    spec = obj({
        "schedule": string("Cron expression, five fields, UTC (e.g. \"0 3 * * *\"); checked "
                           "by the operator.", minLength=1, maxLength=128),
        "target": name_ref("The BackupTarget (same namespace)."),
        "selector": label_selector("PVCs to back up (same namespace)."),
        "retention": obj({
            "keepLast": integer("How many completed backups to keep per PVC.", minimum=1,
                                maximum=1000, default=7),
        }, desc="Pruning of the VolumeBackups this schedule created.", default={}),
        "suspend": boolean("Create no new backups while true.", default=False),
    }, required=("schedule", "target", "selector"))
    spec["properties"]["selector"]["x-kubernetes-validations"] = [
        {"rule": SELECTOR_NOT_EMPTY, "message": "selector must not be empty"}]
    spec["properties"]["selector"]["properties"]["matchExpressions"]["items"][
        "x-kubernetes-validations"] = [
        {"rule": VALUES_MATCH_OPERATOR,
         "message": "In/NotIn need values; Exists/DoesNotExist take none"}]
    st = status({
        "lastScheduleTime": string(format="date-time"),
        "nextScheduleTime": string(format="date-time"),
        "lastBackup": string(),
    })
    return obj({"spec": spec, "status": st}, required=("spec",))


def volume_restore_schema() -> Schema:
    spec = immutable(obj({
        "backup": name_ref("The VolumeBackup to restore (same namespace)."),
        "persistentVolumeClaimName": name_ref("Name of the new PVC (must not exist)."),
        "storageClassName": name_ref("StorageClass of the new PVC.") | {
            "default": "statehold-local"},
        "size": quantity("Size of the new volume (default: the backed-up size)."),
        "node": string("Node to restore onto (default: the node the backup came from).",
                       minLength=1, maxLength=253),
        "accessModes": array(string(enum=["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany",
                                          "ReadOnlyMany"]),
                             desc="Access modes of the new PVC (the many-node modes need a "
                                  "shared StorageClass).",
                             default=["ReadWriteOnce"], minItems=1, maxItems=4),
    }, required=("backup", "persistentVolumeClaimName")), "spec")
    st = status({
        "phase": string(enum=["Pending", "Running", "Completed", "Failed"]),
        "node": string(),
        "volumeHandle": string(),
        "persistentVolumeName": string(),
        "bytesRestored": integer(minimum=0),
        "startTime": string(format="date-time"),
        "completionTime": string(format="date-time"),
    })
    return obj({"spec": spec, "status": st}, required=("spec",))


POINT_PATTERN = r"^e[1-9][0-9]{0,19}-[1-9][0-9]{0,19}$"
NODE_NAME: dict[str, Any] = {"minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN}


def replicated_volume_schema() -> Schema:
    """The cluster record of a replicated volume (docs/design/replication.md §8.1): the
    only authority on which copy may be written is ``status.epoch`` and ``status.primary``,
    changed by the controller with a compare-and-set on the resourceVersion."""
    spec = obj({
        "volumeHandle": immutable(string("The CSI volume id (<pool>/<volume>).", minLength=1,
                                         maxLength=1024), "volumeHandle"),
        "replicas": integer("Copies wanted, the primary included.", minimum=1, maximum=16),
        "rpoSeconds": integer("Recovery point objective: the newest acknowledged point of "
                              "each replica should never be older than this.", minimum=1,
                              maximum=86400, default=15),
        "size": integer("Bytes of the volume: the room a new copy needs.", minimum=1),
        "promote": obj({"node": string("The node whose copy is promoted (a replica, or a "
                                       "stale copy when nothing better survives).", **NODE_NAME)},
                       required=("node",), desc="Request: make this node's copy the primary "
                       "now (failover by hand). Cleared by the controller once handled."),
        "move": obj({"to": string("The node the primary moves to.", **NODE_NAME)},
                    required=("to",), desc="Request: a planned move with no loss (final sync, "
                    "then promote). Cleared by the controller once done or abandoned."),
    }, required=("volumeHandle", "replicas"), rules=(
        (ONE_REQUEST_AT_A_TIME, "promote and move cannot be asked at once"),))
    copy_ = obj({
        "node": string(**NODE_NAME),
        "pool": string(maxLength=253),
        "role": string(enum=["primary", "replica", "seeding", "stale", "unknown"]),
        "point": string("Newest acknowledged point, e<epoch>-<seq>.", pattern=POINT_PATTERN),
        "pointTime": string(format="date-time"),
        "lagSeconds": number(minimum=0),
        "state": string("Serving, InSync, Lagging, Seeding, Stale, Unreachable, Retiring.",
                        maxLength=64),
    }, required=("node",))
    st = status({
        "epoch": integer("The reign of the current primary; only ever grows.", minimum=1) | {
            "x-kubernetes-validations": [
                {"rule": EPOCH_ONLY_GROWS, "message": "the epoch never decreases"}]},
        "primary": string("The node whose copy is writable at this epoch.", **NODE_NAME),
        "moving": obj({"to": string(**NODE_NAME), "epoch": integer(minimum=1)},
                      required=("to", "epoch"), desc="A planned move in progress: the primary "
                      "refuses to stage until it ends."),
        "copies": array(copy_, "Every copy, as its node's agent last reported it "
                        "(informational: never what makes a copy writable).", maxItems=32,
                        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["node"]}),
        "lagSeconds": number("Age of the oldest replica's newest acknowledged point.", minimum=0),
    })
    return obj({"spec": spec, "status": st}, required=("spec",))


def crd(kind: str, plural: str, *, scope: str, short: list[str], schema: Schema,
        columns: list[Schema], doc: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "statehold",
                                "app.kubernetes.io/part-of": "statehold"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": short,
                      "categories": ["statehold"]},
            "scope": scope,
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"description": doc, **schema}},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            }],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    phase = column("Phase", ".status.phase")
    return [
        crd("StoragePool", "storagepools", scope="Cluster", short=["sp"],
            schema=storage_pool_schema(), doc="A pool of one node's disks that local "
            "volumes are carved from.", columns=[
                column("Node", ".spec.node"), phase,
                column("Capacity", ".status.capacity", "integer"),
                column("Allocated", ".status.allocated", "integer"),
                column("Free", ".status.free", "integer"),
                column("Provisioned", ".status.provisioned", "integer", priority=1),
                REASON, AGE]),
        crd("BackupTarget", "backuptargets", scope="Namespaced", short=["bt"],
            schema=backup_target_schema(), doc="Where backups go: an S3 bucket or a "
            "directory; credentials and the repository password come from Secrets.",
            columns=[column("Repository", ".status.repository"), phase, READY, REASON, AGE]),
        crd("VolumeBackup", "volumebackups", scope="Namespaced", short=["vb"],
            schema=volume_backup_schema(), doc="One backup of one PVC's volume.", columns=[
                column("PVC", ".spec.persistentVolumeClaimName"),
                column("Target", ".spec.target"), phase,
                column("Progress", ".status.progress", "integer"),
                column("Bytes", ".status.bytesTotal", "integer"),
                column("Uploaded", ".status.bytesUploaded", "integer", priority=1),
                column("Node", ".status.node", priority=1), REASON, AGE]),
        crd("BackupSchedule", "backupschedules", scope="Namespaced", short=["bs"],
            schema=backup_schedule_schema(), doc="Backs up the PVCs a selector picks on a "
            "cron schedule and prunes old backups.", columns=[
                column("Schedule", ".spec.schedule"), column("Target", ".spec.target"),
                column("Keep", ".spec.retention.keepLast", "integer"),
                column("Suspend", ".spec.suspend", "boolean"),
                column("Last", ".status.lastScheduleTime", "date"),
                column("Next", ".status.nextScheduleTime", priority=1), READY, AGE]),
        crd("ReplicatedVolume", "replicatedvolumes", scope="Cluster", short=["rv"],
            schema=replicated_volume_schema(), doc="The cluster record of a replicated local "
            "volume, named after its PV: which copy is primary at which epoch, and where the "
            "other copies are. Written by the operator; users ask for a promote or a move.",
            columns=[column("Primary", ".status.primary"),
                     column("Epoch", ".status.epoch", "integer"),
                     column("Replicas", ".spec.replicas", "integer"),
                     column("Lag", ".status.lagSeconds", "number"),
                     column("Handle", ".spec.volumeHandle", priority=1),
                     column("RPO", ".spec.rpoSeconds", "integer", priority=1), READY, REASON, AGE]),
        crd("VolumeRestore", "volumerestores", scope="Namespaced", short=["vr"],
            schema=volume_restore_schema(), doc="Restores a VolumeBackup into a new PVC.",
            columns=[column("Backup", ".spec.backup"),
                     column("PVC", ".spec.persistentVolumeClaimName"), phase,
                     column("Node", ".status.node"), REASON, AGE]),
    ]
