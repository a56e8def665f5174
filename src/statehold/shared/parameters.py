"""What a ``type: shared`` StorageClass asks for, parsed once from its parameters.

Parameters (see docs/shared.md)::

    sharedRoot: /mnt/share            # host-based: the share is mounted there on every node
    source: 10.0.0.5:/vol0            # native: we mount it (or server: + share:)
    fsType: glusterfs | nfs | nfs4 | cephfs | cifs
    mountOptions: "opt1,opt2"
    credentialsFile: /etc/statehold/smb/credentials   # cifs: a file from a Secret
    deletionPolicy: delete | retain | archive      (default delete)
    enforceQuota: "true" | "false"                 (default false)

The CSI plugin reads them from CreateVolume, the operator from the StorageClass of a
restore; both get the same answer, and InvalidArgument naming the parameter when wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from statehold.errors import InvalidArgument
from statehold.shared.registry import RootSpec
from statehold.shared.types import DeletionPolicy


def flag(params: Mapping[str, str], name: str) -> bool:
    """A boolean parameter, absent = false; InvalidArgument unless "true" or "false"."""
    value = params.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise InvalidArgument(f"parameter {name}={value!r} must be \"true\" or \"false\"")
    return value == "true"


def deletion_policy(params: Mapping[str, str]) -> DeletionPolicy:
    value = params.get("deletionPolicy", "delete").strip().lower()
    try:
        return DeletionPolicy(value)
    except ValueError:
        raise InvalidArgument(f"deletionPolicy {value!r} is not delete, retain or archive") from None


@dataclass(frozen=True, slots=True)
class VolumeClass:
    """Where new volumes go and how they behave: the root, the deletion policy, and whether
    a kernel-enforced size is required (FailedPrecondition on a root without quotas)."""

    root: RootSpec
    policy: DeletionPolicy = DeletionPolicy.DELETE
    enforce: bool = False

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> VolumeClass:
        policy, enforce = deletion_policy(params), flag(params, "enforceQuota")
        return cls(root=RootSpec.from_parameters(params), policy=policy, enforce=enforce)
