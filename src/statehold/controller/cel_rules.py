"""Python twins of the CEL rules in our CRDs, keyed by the exact rule text.

The API server evaluates the CEL; the in-memory API (tests) and the kubectl plugin's local
checks evaluate these. ``tests/unit/controller/test_cel_rules.py`` runs every rule through
a real CEL interpreter (cel-python) on a table of inputs and asserts both agree, and that
every rule in the CRDs has a twin here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from statehold.controller import crds

Rule = Callable[[Any, Any], bool]  # (self, oldSelf) -> valid


def _nonempty(d: Any, key: str) -> bool:
    return key in d and len(d[key]) > 0


RULES: dict[str, Rule] = {
    crds.ONE_OF_DEVICES_DIRECTORY: lambda s, _: ("devices" in s) != ("directory" in s),
    crds.RAID_NEEDS_BTRFS: lambda s, _: s["profile"] == "single" or s["filesystem"] == "btrfs",
    crds.SUBVOLUME_NEEDS_BTRFS: lambda s, _: s["layout"] == "file" or s["filesystem"] == "btrfs",
    crds.DIRECTORY_NEEDS_SIZE: lambda s, _: ("directory" not in s or bool(s["importExisting"])
                                             or "imageSize" in s),
    crds.FS_MATCHES_DISKS: lambda s, _: (s["filesystem"] == "btrfs") == (
        (len(s["devices"]) > 1 if "devices" in s else s["imageCount"] > 1)
        or s["layout"] == "subvolume"),
    crds.ONE_OF_S3_PATH: lambda s, _: ("s3" in s) != ("path" in s),
    crds.SELECTOR_NOT_EMPTY: lambda s, _: _nonempty(s, "matchLabels")
    or _nonempty(s, "matchExpressions"),
    crds.VALUES_MATCH_OPERATOR: lambda s, _: (
        _nonempty(s, "values") if s["operator"] in ("In", "NotIn")
        else not _nonempty(s, "values")),
    crds.ONE_REQUEST_AT_A_TIME: lambda s, _: not ("promote" in s and "move" in s),
    crds.ONE_OF_SET_NAME_SELECTOR: lambda s, _: ("statefulSetName" in s) != ("selector" in s),
    crds.ONE_OF_SET_REF: lambda s, _: ("name" in s) != ("selector" in s),
    crds.ONE_OF_PVCS_SET: lambda s, _: ("selector" in s) != ("statefulSet" in s),
    crds.ONE_OF_BACKUP_GROUP: lambda s, _: ("backup" in s) != ("groupBackupId" in s),
    crds.GROUP_ID_NEEDS_TARGET: lambda s, _: ("groupBackupId" in s) == ("target" in s),
    "self == oldSelf": lambda s, old: bool(s == old),
    crds.EPOCH_ONLY_GROWS: lambda s, old: bool(s >= old),
}


def is_transition_rule(rule: str) -> bool:
    """Rules that compare with the old object run on updates only."""
    return "oldSelf" in rule
