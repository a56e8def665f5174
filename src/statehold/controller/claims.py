"""The PersistentVolume + claim pair a VolumeRestore ends with (block and shared alike)."""

from __future__ import annotations

import contextlib
from typing import Any

from statehold.errors import AlreadyExists
from statehold.kube.facade import Kube, Obj

RESTORE_ANNOTATION = "statehold.io/restored-by"
"""On the PV and the claim: the uid of the VolumeRestore that made them (a retry that finds
a claim without it, or with another uid, must not adopt it)."""


def restored_claim(obj: Obj, pv: dict[str, Any], sc: str, modes: list[str]) -> dict[str, Any]:
    """The claim the restore asked for, bound to ``pv`` up front (no provisioning)."""
    meta, spec = obj["metadata"], obj["spec"]
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": spec["persistentVolumeClaimName"], "namespace": meta["namespace"],
                     "annotations": {RESTORE_ANNOTATION: meta["uid"]},
                     "labels": {"statehold.io/restore": meta["name"]}},
        "spec": {"accessModes": modes, "storageClassName": sc, "volumeName": pv["metadata"]["name"],
                 "volumeMode": "Filesystem",
                 "resources": {"requests": {"storage": pv["spec"]["capacity"]["storage"]}}},
    }


def create_bound_pair(kube: Kube, obj: Obj, pv: dict[str, Any], sc: str, modes: list[str]) -> None:
    """Create the PV, then its claim; either may exist from an earlier attempt."""
    for made in (pv, restored_claim(obj, pv, sc, modes)):
        with contextlib.suppress(AlreadyExists):
            kube.create(made)
