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
    DNS_LABEL,
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
SUBVOLUME_NEEDS_BTRFS = "self.layout == 'file' || self.filesystem == 'btrfs'"
DIRECTORY_NEEDS_SIZE = "!has(self.directory) || self.importExisting || has(self.imageSize)"
FS_MATCHES_DISKS = ("(self.filesystem == 'btrfs') == "
                    "((has(self.devices) ? size(self.devices) > 1 : self.imageCount > 1) "
                    "|| self.layout == 'subvolume')")
ONE_OF_S3_PATH = "has(self.s3) != has(self.path)"
SELECTOR_NOT_EMPTY = (
    "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
    "(has(self.matchExpressions) && size(self.matchExpressions) > 0)")
ONE_REQUEST_AT_A_TIME = "!(has(self.promote) && has(self.move))"
EPOCH_ONLY_GROWS = "self >= oldSelf"
VALUES_MATCH_OPERATOR = (
    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
    ": (!has(self.values) || size(self.values) == 0)")
ONE_OF_SET_NAME_SELECTOR = "has(self.statefulSetName) != has(self.selector)"
ONE_OF_SET_REF = "has(self.name) != has(self.selector)"
ONE_OF_PVCS_SET = "has(self.selector) != has(self.statefulSet)"
ONE_OF_BACKUP_GROUP = "has(self.backup) != has(self.groupBackupId)"
GROUP_ID_NEEDS_TARGET = "has(self.groupBackupId) == has(self.target)"
GROUP_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$"


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
        "filesystem": string("Pool filesystem: xfs (reflink) or btrfs (several disks, RAID, "
                             "or layout subvolume).",
                             enum=["xfs", "btrfs"], default="xfs"),
        "profile": string("RAID profile across the disks (btrfs only for anything but "
                          "single).", enum=["single", "raid0", "raid1", "raid10"],
                          default="single"),
        "layout": string("Where volumes live, fixed when the pool is made: file (a reflinked "
                         "file per volume) or subvolume (btrfs only: a subvolume per volume, "
                         "so snapshots and clones cost the same however fragmented a volume "
                         "is, for slower 4 KiB random writes; docs/design/snapshots.md).",
                         enum=["file", "subvolume"], default="file"),
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
        "thresholds": obj({
            "warningPercent": integer("Above this share of the pool's capacity in use: a "
                                      "Warning Event and the condition SpacePressure.",
                                      minimum=1, maximum=100, default=80),
            "criticalPercent": integer("Above this share: also new volumes, clones and "
                                       "snapshots in the pool are refused (RESOURCE_EXHAUSTED) "
                                       "until space is freed. Not below warningPercent.",
                                       minimum=1, maximum=100, default=90),
        }, desc="How full the pool may get (thin volumes can fill it).", default={}),
    }, required=("node",), rules=(
        (ONE_OF_DEVICES_DIRECTORY, "exactly one of devices or directory must be set"),
        (RAID_NEEDS_BTRFS, "RAID profiles other than single need filesystem btrfs"),
        (SUBVOLUME_NEEDS_BTRFS, "layout subvolume needs filesystem btrfs"),
        (DIRECTORY_NEEDS_SIZE, "directory pools need imageSize (unless importExisting)"),
        (FS_MATCHES_DISKS, "filesystem must be btrfs for several disks or layout subvolume, "
                           "xfs otherwise"),
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
        "usedPercent": number("Share of the capacity in use, in percent.", minimum=0,
                              maximum=100),
        "spaceLevel": string("Usage against spec.thresholds.",
                             enum=["ok", "warning", "critical", "full"]),
    })
    return obj({"spec": spec, "status": st}, required=("spec",))


VERIFY_SUBSET_PATTERN = r"^([0-9]+(\.[0-9]+)?%|[0-9]+/[0-9]+)$"


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
    gc = obj({
        "schedule": string("Cron expression, five fields, UTC (e.g. \"0 4 * * 0\"); checked "
                           "by the operator.", minLength=1, maxLength=128),
        "graceSeconds": integer("Chunks younger than this are kept even when no backup names "
                                "them (a safety margin for writers with wrong clocks; the "
                                "exclusive lock already keeps gc from racing a backup).",
                                minimum=0, maximum=30 * 86400, default=3600),
    }, required=("schedule",), desc="Garbage collection of the repository: deletes the "
        "chunks no backup names any more (what pruning and forgetting left), under the "
        "repository's exclusive lock, run by one node agent on this schedule.")
    verify = obj({
        "schedule": string("Cron expression, five fields, UTC (e.g. \"0 3 * * *\"); checked "
                           "by the operator.", minLength=1, maxLength=128),
        "readDataSubset": string("Also read this part of the stored data in full, every chunk "
                                 "decrypted and re-hashed: \"N%\" a fresh random share of the "
                                 "packs each run, or \"n/m\": slice n at the first run and the "
                                 "next slice at each run after, so m runs read everything once. "
                                 "Unset: only the quick checks (every chunk a backup names is "
                                 "indexed and its pack exists).",
                                 pattern=VERIFY_SUBSET_PATTERN, maxLength=16),
    }, required=("schedule",), desc="Verification of the repository on this schedule, by one "
        "node agent, under the repository's shared lock (it runs beside backups and waits "
        "only for prune and gc); the result goes into status.verify and a Verified or "
        "VerifyFailed Event.")
    spec = obj({
        "s3": s3,
        "path": path,
        "passwordSecretRef": secret_key_ref(
            "Secret holding the repository password (encryption key).", "password"),
        "gc": gc,
        "verify": verify,
    }, required=("passwordSecretRef",), rules=(
        (ONE_OF_S3_PATH, "exactly one target type must be set: s3 or path"),))
    gc_status = obj({
        "phase": string("Of the latest run.", enum=["Pending", "Running", "Completed", "Failed"]),
        "node": string("The node whose agent runs it.", maxLength=253),
        "scheduledTime": string("The slot of the latest run.", format="date-time"),
        "lastScheduleTime": string(format="date-time"),
        "nextScheduleTime": string(format="date-time"),
        "startTime": string(format="date-time"),
        "completionTime": string(format="date-time"),
        "durationSeconds": number("How long the latest completed run took.", minimum=0),
        "bytesFreed": integer("Stored bytes of the chunks the latest run deleted.", minimum=0),
        "chunksDeleted": integer(minimum=0),
        "chunksTotal": integer("Chunks in the repository before the latest run.", minimum=0),
        "chunksReferenced": integer(minimum=0),
        "chunksInGrace": integer("Unreferenced chunks kept as younger than graceSeconds.",
                                 minimum=0),
        "chunksKeptUnknown": integer("Unreferenced chunks kept because a backup cannot be "
                                     "read (no chunk is deleted while one cannot).", minimum=0),
        "damagedBackups": integer(minimum=0),
        "message": string(maxLength=4096),
    }, desc="Garbage collection: the latest run and the schedule.")
    damage = obj({
        "what": string("missing, corrupt, pack, index, manifest or quarantined.", maxLength=32),
        "name": string("The chunk id, pack id, index object or backup id.", maxLength=256),
        "detail": string(maxLength=1024),
        "backups": array(string(maxLength=256), "Backups it breaks (the first ten).",
                         maxItems=10),
    })
    verify_status = obj({
        "phase": string("Of the latest run.", enum=["Pending", "Running", "Completed", "Failed"]),
        "outcome": string("Of the latest completed run.", enum=["Clean", "Damaged"]),
        "node": string("The node whose agent runs it.", maxLength=253),
        "scheduledTime": string("The slot of the latest run.", format="date-time"),
        "lastScheduleTime": string(format="date-time"),
        "nextScheduleTime": string(format="date-time"),
        "startTime": string(format="date-time"),
        "completionTime": string(format="date-time"),
        "durationSeconds": number("How long the latest completed run took.", minimum=0),
        "subset": string("The data subset the latest run reads (a percentage with the seed "
                         "it used, once done).", maxLength=64),
        "nextSlice": integer("With readDataSubset n/m: the slice the next run reads.",
                             minimum=1),
        "backups": integer("Backups whose manifests were checked.", minimum=0),
        "chunks": integer("Chunks those backups name.", minimum=0),
        "objects": string("What the subset counts: packs, or chunks (format 1).",
                          enum=["packs", "chunks"]),
        "objectsTotal": integer(minimum=0),
        "objectsRead": integer(minimum=0),
        "bytesRead": integer("Stored bytes the subset read.", minimum=0),
        "bytesChecked": integer("Plaintext bytes decrypted and re-hashed.", minimum=0),
        "problems": integer("Damaged objects found.", minimum=0),
        "damage": array(damage, "The damaged objects found (the first twenty).", maxItems=20),
        "damagedBackups": array(string(maxLength=256), "Backups that cannot be restored whole "
                                "(the first hundred).", maxItems=100),
        "message": string(maxLength=4096),
    }, desc="Verification: the latest run and the schedule.")
    st = status({"phase": string(enum=["Pending", "Ready", "Failed"]),
                 "repository": string("Repository location, for display."),
                 "gc": gc_status, "verify": verify_status})
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


def checked_selector(desc: str) -> Schema:
    """A label selector that must select something, with well-formed expressions."""
    s = label_selector(desc)
    s["x-kubernetes-validations"] = [{"rule": SELECTOR_NOT_EMPTY,
                                      "message": "selector must not be empty"}]
    s["properties"]["matchExpressions"]["items"]["x-kubernetes-validations"] = [
        {"rule": VALUES_MATCH_OPERATOR,
         "message": "In/NotIn need values; Exists/DoesNotExist take none"}]
    return s


MAX_ORDINAL = 1 << 20


def hook_schema() -> Schema:
    return obj({
        "name": string("Names the hook in status and Events.", minLength=1, maxLength=63,
                       pattern=DNS_LABEL),
        "container": string("The container to run in (default: the pod's first).",
                            minLength=1, maxLength=63, pattern=DNS_LABEL),
        "command": array(string(maxLength=1024), "The command and its arguments, run without "
                         "a shell (use [\"sh\", \"-c\", \"...\"] for one).", minItems=1,
                         maxItems=32),
        "ordinals": array(integer(minimum=0, maximum=MAX_ORDINAL), "The pods to run in, by "
                          "ordinal (default: every pod of the set).", minItems=1, maxItems=64),
        "timeoutSeconds": integer("How long the command may run; a hook still running then "
                                  "has failed (the command may go on in the container).",
                                  minimum=1, maximum=3600, default=30),
        "onError": string("Fail: the backup fails (a pre-hook failing stops the snapshot; "
                          "post-hooks still run). Continue: record it and go on (the backup "
                          "is then crash-consistent only).", enum=["Fail", "Continue"],
                          default="Fail"),
    }, required=("name", "command"))


def hooks_schema() -> Schema:
    return obj({
        "pre": array(hook_schema(), "Run before the group snapshot: every one, in every pod, "
                     "before the first filesystem is frozen.", maxItems=8),
        "post": array(hook_schema(), "Run after the group snapshot: every one, in every pod, "
                      "after the last filesystem is thawed, even when the snapshot failed.",
                      maxItems=8),
    }, desc="Commands run in the set's pods through the Kubernetes exec API.")


FREEZE_TIMEOUT = integer("Seconds the set's filesystems may stay frozen before the watchdog "
                         "thaws them (the snapshot is then retried).", minimum=1, maximum=600,
                         default=10)


RETENTION_WITHIN_PATTERN = r"^([0-9]+[hdw])+$"


def _keep(what: str) -> Schema:
    return integer(f"Keep the newest backup of each of the N most recent {what} that have "
                   "one (UTC), per PVC (per StatefulSet, of its group backups, for statefulSet "
                   "schedules).", minimum=1, maximum=1000)


def retention_schema() -> Schema:
    """Which of its own backups a schedule keeps; a backup kept by any rule is kept. Every
    field is optional, but at least one must be set (no default inside, so a calendar
    policy is not silently widened by a keepLast it did not ask for)."""
    return obj({
        "keepLast": integer("Keep the N newest completed backups per PVC (the N newest group "
                            "backups per StatefulSet for statefulSet schedules).", minimum=1,
                            maximum=1000),
        "keepHourly": _keep("hours"),
        "keepDaily": _keep("days"),
        "keepWeekly": _keep("ISO weeks"),
        "keepMonthly": _keep("months"),
        "keepYearly": _keep("years"),
        "keepWithin": string("Keep every backup made within this long of the PVC's newest "
                             "backup (of the StatefulSet's newest group backup): hours, days "
                             "or weeks, e.g. 36h, 14d, 2w.", pattern=RETENTION_WITHIN_PATTERN,
                             maxLength=32),
    }, desc="Pruning of the backups this schedule made (never of backups made by hand or by "
       "another schedule): after each of its backups, the PVC's backups of this schedule "
       "that no rule keeps are removed from the repository and their VolumeBackups deleted; "
       "for statefulSet schedules, the set's group backups of this schedule, each judged by "
       "its group manifest's time and removed with all its members (never a member alone), "
       "and their StatefulSetBackups deleted. Default: keepLast 7.",
       default={"keepLast": 7}, minProperties=1)


def backup_schedule_schema() -> Schema:
    stateful_set = obj({
        "name": name_ref("The StatefulSet (same namespace)."),
        "selector": checked_selector("StatefulSets to back up, each as one group (same "
                                     "namespace)."),
        "hooks": hooks_schema(),
        "freezeTimeoutSeconds": FREEZE_TIMEOUT,
    }, desc="Back up StatefulSets, each as one group (StatefulSetBackups), instead of PVCs.",
        rules=((ONE_OF_SET_REF, "exactly one of name or selector must be set"),))
    spec = obj({
        "schedule": string("Cron expression, five fields, UTC (e.g. \"0 3 * * *\"); checked "
                           "by the operator.", minLength=1, maxLength=128),
        "target": name_ref("The BackupTarget (same namespace)."),
        "selector": checked_selector("PVCs to back up (same namespace)."),
        "statefulSet": stateful_set,
        "retention": retention_schema(),
        "suspend": boolean("Create no new backups while true.", default=False),
    }, required=("schedule", "target"), rules=(
        (ONE_OF_PVCS_SET, "exactly one of selector (PVCs) or statefulSet must be set"),))
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


def statefulset_backup_schema() -> Schema:
    spec = obj({
        "statefulSetName": immutable(name_ref("The StatefulSet to back up (same namespace)."),
                                     "statefulSetName"),
        "selector": immutable(checked_selector("Selects the StatefulSet to back up (same "
                                               "namespace); it must select exactly one."),
                              "selector"),
        "target": immutable(name_ref("The BackupTarget (same namespace)."), "target"),
        "hooks": hooks_schema(),
        "freezeTimeoutSeconds": FREEZE_TIMEOUT,
    }, required=("target",), rules=(
        (ONE_OF_SET_NAME_SELECTOR, "exactly one of statefulSetName or selector must be set"),))
    member = obj({
        "ordinal": integer(minimum=0),
        "template": string("The volumeClaimTemplate.", maxLength=253),
        "claim": string("<template>-<set>-<ordinal>.", maxLength=253),
        "volumeHandle": string(maxLength=1024),
        "snapshot": string("The member's snapshot in the group.", maxLength=253),
        "backupId": string("The member's backup in the repository.", maxLength=64),
        "parentBackupId": string(maxLength=64),
        "bytesTotal": integer(minimum=0),
        "bytesUploaded": integer(minimum=0),
    }, required=("ordinal", "template", "claim"))
    hook_run = obj({
        "phase": string(enum=["pre", "post"]),
        "name": string(maxLength=63),
        "pod": string(maxLength=253),
        "container": string(maxLength=63),
        "outcome": string(enum=["Succeeded", "Failed", "TimedOut", "Error"]),
        "exitCode": integer(),
        "onError": string(enum=["Fail", "Continue"]),
        "output": string("The end of the command's output.", maxLength=4096),
    }, required=("phase", "name", "pod", "outcome"))
    st = status({
        "phase": string(enum=["Pending", "Running", "Completed", "Failed"]),
        "node": string("The node holding every member, whose agent ran the backup."),
        "statefulSet": string(maxLength=253),
        "replicas": integer(minimum=0),
        "members": array(member, "One per claim: template x ordinal.", maxItems=4096),
        "groupSnapshot": string("The group snapshot the members were read from.",
                                maxLength=63),
        "snapshotTime": string("The group snapshot's instant.", format="date-time"),
        "freezeWindowSeconds": number("First freeze to last thaw.", minimum=0),
        "consistency": string("Application: every hook succeeded around the snapshot; Crash: "
                              "no hooks, or one failed with onError Continue (the members are "
                              "still one instant).", enum=["Application", "Crash"]),
        "hooks": array(hook_run, "Every hook run, in order.", maxItems=512),
        "groupBackupId": string("The group manifest in the repository: what a "
                                "StatefulSetRestore names.", maxLength=64),
        "bytesTotal": integer(minimum=0),
        "bytesUploaded": integer(minimum=0),
        "progress": integer("Members backed up, percent.", minimum=0, maximum=100),
        "startTime": string(format="date-time"),
        "completionTime": string(format="date-time"),
    })
    return obj({"spec": spec, "status": st}, required=("spec",))


def statefulset_restore_schema() -> Schema:
    spec = immutable(obj({
        "backup": name_ref("A completed StatefulSetBackup in this namespace."),
        "groupBackupId": string("A group backup by id (in another namespace or cluster): "
                                "needs target.", pattern=GROUP_ID_PATTERN, maxLength=64),
        "target": name_ref("The BackupTarget (this namespace) holding groupBackupId: the same "
                           "repository, with its password."),
        "statefulSetName": string("The set the claims are for (default: the backed-up set): "
                                  "claims are named <template>-<set>-<ordinal>.", minLength=1,
                                  maxLength=63, pattern=DNS_LABEL),
        "ordinals": array(integer(minimum=0, maximum=MAX_ORDINAL), "Restore only these pods' "
                          "claims (default: every one in the backup).", minItems=1,
                          maxItems=1024),
        "storageClassName": name_ref("StorageClass of the new claims (default: the claim "
                                     "template's when it is a Statehold local class, else "
                                     "statehold-local)."),
        "node": string("Node to restore onto (default: the node the backup came from).",
                       minLength=1, maxLength=253),
    }, rules=(
        (ONE_OF_BACKUP_GROUP, "exactly one of backup or groupBackupId must be set"),
        (GROUP_ID_NEEDS_TARGET, "groupBackupId needs target (backup brings its own)"),
    )), "spec")
    member = obj({
        "ordinal": integer(minimum=0),
        "template": string(maxLength=253),
        "claim": string(maxLength=253),
        "backupId": string(maxLength=64),
        "volumeHandle": string(maxLength=1024),
        "persistentVolumeName": string(maxLength=253),
        "bytesRestored": integer(minimum=0),
    }, required=("ordinal", "template", "claim"))
    st = status({
        "phase": string(enum=["Pending", "Running", "Completed", "Failed"]),
        "node": string(),
        "target": string(maxLength=253),
        "groupBackupId": string(maxLength=64),
        "statefulSet": string(maxLength=253),
        "members": array(member, maxItems=4096),
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
            columns=[column("Repository", ".status.repository"), phase, READY,
                     column("GC", ".status.gc.phase", priority=1),
                     column("Freed", ".status.gc.bytesFreed", "integer", priority=1),
                     column("Last GC", ".status.gc.completionTime", "date", priority=1),
                     column("Verify", ".status.verify.outcome", priority=1),
                     column("Last Verify", ".status.verify.completionTime", "date", priority=1),
                     REASON, AGE]),
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
        crd("StatefulSetBackup", "statefulsetbackups", scope="Namespaced", short=["ssb"],
            schema=statefulset_backup_schema(), doc="One backup of a StatefulSet as a unit: "
            "hooks, one group snapshot of every claim, each member backed up, one group "
            "manifest.", columns=[
                column("StatefulSet", ".status.statefulSet"), column("Target", ".spec.target"),
                phase, column("Consistency", ".status.consistency"),
                column("Progress", ".status.progress", "integer"),
                column("Group", ".status.groupBackupId", priority=1),
                column("Node", ".status.node", priority=1), REASON, AGE]),
        crd("StatefulSetRestore", "statefulsetrestores", scope="Namespaced", short=["ssr"],
            schema=statefulset_restore_schema(), doc="Restores a StatefulSet's group backup as "
            "the claims its controller adopts (<template>-<set>-<ordinal>), before the set "
            "starts.", columns=[
                column("Backup", ".spec.backup"), column("Group", ".status.groupBackupId"),
                column("StatefulSet", ".status.statefulSet"), phase,
                column("Node", ".status.node", priority=1), REASON, AGE]),
    ]
