"""Our CRDs: valid CRD objects, structural schemas, printer columns, and what they reject."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from statehold.controller.cel_rules import RULES
from statehold.controller.crds import all_crds
from statehold.controller.schemas import validate_custom_resource
from statehold.errors import InvalidArgument

K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += walk(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crds_validate_against_the_kubernetes_schema(version: str) -> None:
    for crd in all_crds():
        kubernetes_validate.validate(crd, version, strict=True)


def test_crd_schemas_are_structural_with_status_subresource_and_columns() -> None:
    for crd in all_crds():
        (ver,) = crd["spec"]["versions"]
        assert ver["subresources"] == {"status": {}}
        assert any(c["name"] == "Age" for c in ver["additionalPrinterColumns"])
        root = ver["schema"]["openAPIV3Schema"]
        for path, node in walk(root):
            assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert "conditions" in root["properties"]["status"]["properties"]


def test_every_cel_rule_has_a_python_twin() -> None:
    for crd in all_crds():
        for path, node in walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            for rule in node.get("x-kubernetes-validations", []):
                assert rule["rule"] in RULES, (crd["metadata"]["name"], path)


def cr(kind: str, spec: dict[str, Any], name: str = "x", ns: str | None = "default") -> dict:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "statehold.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


SECRET_REF = {"name": "repo-password"}
GOOD_S3 = {"endpoint": "https://s3.example.com", "bucket": "backups",
           "credentialsSecretRef": {"name": "s3-creds"}}


@pytest.mark.parametrize(("kind", "spec"), [
    ("StoragePool", {"node": "n1", "devices": ["/dev/sdb"]}),
    ("StoragePool", {"node": "n1", "directory": "/var/lib/statehold", "imageSize": "100Gi"}),
    ("StoragePool", {"node": "n1", "devices": ["/dev/sdb", "/dev/sdc"], "filesystem": "btrfs",
                     "profile": "raid1"}),
    ("BackupTarget", {"s3": GOOD_S3, "passwordSecretRef": SECRET_REF}),
    ("BackupTarget", {"path": {"path": "/mnt/backups"}, "passwordSecretRef": SECRET_REF}),
    ("BackupSchedule", {"schedule": "0 3 * * *", "target": "t",
                        "selector": {"matchLabels": {"app": "db"}}}),
    ("VolumeBackup", {"persistentVolumeClaimName": "data-db-0", "target": "t"}),
    ("VolumeRestore", {"backup": "b", "persistentVolumeClaimName": "restored", "size": "2Gi"}),
])
def test_good_resources_are_admitted_with_defaults(kind: str, spec: dict[str, Any]) -> None:
    got = validate_custom_resource(cr(kind, spec))
    if kind == "StoragePool":
        assert got["spec"]["overprovisionRatio"] == 10
    if kind == "BackupSchedule":
        assert got["spec"]["retention"] == {"keepLast": 7} or "retention" not in spec
    if kind == "VolumeRestore":
        assert got["spec"]["storageClassName"] == "statehold-local"


@pytest.mark.parametrize(("kind", "spec", "why"), [
    ("StoragePool", {"node": "n1"}, "exactly one of devices or directory"),
    ("StoragePool", {"node": "n1", "devices": ["/dev/sdb"], "directory": "/x", "imageSize": 1},
     "exactly one of devices or directory"),
    ("StoragePool", {"node": "n1", "devices": ["/dev/sdb"], "profile": "raid1"}, "need filesystem btrfs"),
    ("StoragePool", {"node": "n1", "directory": "/var/x"}, "need imageSize"),
    ("StoragePool", {"node": "n1", "devices": ["sdb"]}, "does not match"),
    ("StoragePool", {"node": "n1", "devices": ["/dev/sdb", "/dev/sdc"]}, "btrfs for several"),
    ("StoragePool", {"node": "n1", "devices": ["/dev/sdb"], "overprovisionRatio": 0.5}, "minimum"),
    ("BackupTarget", {"passwordSecretRef": SECRET_REF}, "exactly one target type"),
    ("BackupTarget", {"s3": GOOD_S3, "path": {"path": "/x"}, "passwordSecretRef": SECRET_REF},
     "exactly one target type"),
    ("BackupTarget", {"gcs": {"bucket": "b"}, "passwordSecretRef": SECRET_REF}, "'gcs' was unexpected"),
    ("BackupTarget", {"path": {"path": "/x"}}, "'passwordSecretRef' is a required property"),
    ("BackupSchedule", {"schedule": "0 3 * * *", "target": "t", "selector": {"matchLabels": {"a": "b"}},
                        "retention": {"keepLast": -1}}, "minimum"),
    ("BackupSchedule", {"schedule": "0 3 * * *", "target": "t", "selector": {}},
     "selector must not be empty"),
    ("BackupSchedule", {"schedule": "0 3 * * *", "target": "t", "selector": {
        "matchExpressions": [{"key": "a", "operator": "In"}]}}, "In/NotIn need values"),
    ("VolumeBackup", {"persistentVolumeClaimName": "Bad_Name", "target": "t"}, "does not match"),
    ("VolumeRestore", {"backup": "b", "persistentVolumeClaimName": "r", "size": "-1Gi"}, "size"),
])
def test_bad_resources_are_rejected_with_the_reason(kind: str, spec: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        validate_custom_resource(cr(kind, spec))


def test_volume_backup_spec_is_immutable() -> None:
    old = validate_custom_resource(cr("VolumeBackup", {"persistentVolumeClaimName": "a", "target": "t"}))
    new = cr("VolumeBackup", {"persistentVolumeClaimName": "b", "target": "t"})
    with pytest.raises(InvalidArgument, match="spec is immutable"):
        validate_custom_resource(new, old)
    validate_custom_resource(old, old)


def test_storage_pool_node_is_immutable() -> None:
    old = validate_custom_resource(cr("StoragePool", {"node": "n1", "devices": ["/dev/sdb"]}, ns=None))
    moved = cr("StoragePool", {"node": "n2", "devices": ["/dev/sdb"]}, ns=None)
    with pytest.raises(InvalidArgument, match="node is immutable"):
        validate_custom_resource(moved, old)


def test_values_under_cel_rules_are_bounded_so_the_cost_estimate_stays_small() -> None:
    """The API server rejects a CRD whose CEL rules may cost too much; the estimate is
    bounded by maxLength/maxItems/maxProperties of what a rule can see (and of the lists
    the rule is repeated for)."""
    def unbounded(node: dict[str, Any], path: str) -> list[str]:
        out = []
        for p, n in walk(node, path):
            if n.get("type") == "string" and "maxLength" not in n and "enum" not in n:
                out.append(p)
            if n.get("type") == "array" and "maxItems" not in n:
                out.append(p)
            if isinstance(n.get("additionalProperties"), dict) and "maxProperties" not in n:
                out.append(p)
            if n.get("x-kubernetes-int-or-string") and "maxLength" not in n:
                out.append(p)
        return out

    for crd in all_crds():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in walk(root["properties"]["spec"], "spec"):
            rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
            if any("oldSelf" in r or "size(" in r for r in rules):
                assert unbounded(node, path) == [], (crd["metadata"]["name"], path)
        for path, node in walk(root["properties"]["spec"], "spec"):
            if node.get("type") == "array" and "x-kubernetes-validations" in node.get("items", {}):
                assert "maxItems" in node, path


# -- quantities (int-or-string): the checks moved beside the anyOf still bite --------------

QUANTITY_FIELDS = [
    ("StoragePool", "imageSize", {"node": "n1", "directory": "/var/lib/statehold"}, None),
    ("VolumeRestore", "size", {"backup": "b", "persistentVolumeClaimName": "r"}, "default"),
]


@pytest.mark.parametrize("value", ["20Gi", 21474836480, "512M", "1.5Ti", 1])
@pytest.mark.parametrize(("kind", "field", "spec", "ns"), QUANTITY_FIELDS)
def test_quantity_accepts_a_quantity_or_a_byte_count(kind: str, field: str, spec: dict,
                                                     ns: str | None, value: object) -> None:
    got = validate_custom_resource(cr(kind, {**spec, field: value}, ns=ns))
    assert got["spec"][field] == value


@pytest.mark.parametrize(("value", "why"), [
    (0, "less than the minimum of 1"),
    (-5, "less than the minimum of 1"),
    ("20 gigs", "does not match"),
    ("-1Gi", "does not match"),
    ("1" * 65, "is too long"),
    (1.5, "is not valid under any of the given schemas"),
    (True, "is not valid under any of the given schemas"),
    ([20], "is not valid under any of the given schemas"),
])
@pytest.mark.parametrize(("kind", "field", "spec", "ns"), QUANTITY_FIELDS)
def test_quantity_rejects_zero_and_malformed_sizes(kind: str, field: str, spec: dict,
                                                   ns: str | None, value: object, why: str) -> None:
    with pytest.raises(InvalidArgument, match=f"spec.{field}: .*{why}"):
        validate_custom_resource(cr(kind, {**spec, field: value}, ns=ns))
