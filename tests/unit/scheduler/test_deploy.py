"""deploy/scheduler/: valid Kubernetes objects, a valid KubeSchedulerConfiguration, and the
two agree with each other and with what the extender really serves and reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from statehold.kube.kinds import NODE, PV, PVC, REPLICATED_VOLUME, STORAGE_CLASS, STORAGE_POOL
from statehold.scheduler.view import DRIVER

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy" / "scheduler"
SCHEMA = json.loads((DEPLOY / "kubescheduler-config.v1.schema.json").read_text())
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest we claim to support


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = [d for p in sorted(DEPLOY.rglob("*.yaml")) for d in docs(p)
             if d["kind"] != "KubeSchedulerConfiguration"]
CONFIG = docs(DEPLOY / "extender" / "kube-scheduler-config.yaml")[0]


def by_kind(kind: str) -> dict[str, Any]:
    (obj,) = [d for d in MANIFESTS if d["kind"] == kind]
    return obj


def test_kubernetes_validate_has_no_schema_for_component_config() -> None:
    """Why we ship our own schema for the KubeSchedulerConfiguration."""
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        kubernetes_validate.validate(CONFIG, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("obj", MANIFESTS, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_manifests_are_valid_kubernetes_objects(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_scheduler_config_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(CONFIG, SCHEMA, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(("change", "fragment"), [
    ({"weight": 0}, "minimum"),
    ({"urlPrefix": "statehold:9251"}, "does not match"),
    ({"nodeCacheCapabel": True}, "Additional properties"),
    ({"httpTimeout": "5 seconds"}, "does not match"),
    ({"ignorable": "yes"}, "is not of type"),
])
def test_schema_rejects_broken_extender_stanzas(change: dict[str, Any], fragment: str) -> None:
    bad = json.loads(json.dumps(CONFIG))
    bad["extenders"][0].update(change)
    with pytest.raises(jsonschema.ValidationError, match=fragment):
        jsonschema.validate(bad, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_extender_stanza_matches_the_service_and_the_server() -> None:
    (ext,) = CONFIG["extenders"]
    assert (ext["filterVerb"], ext["prioritizeVerb"]) == ("filter", "prioritize")
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is True and ext["weight"] > 0
    svc = by_kind("Service")
    port = svc["spec"]["ports"][0]["port"]
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert ext["urlPrefix"] == f"http://{host}:{port}"
    deploy = by_kind("Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "scheduler-extender"
    listen = next(a for a in container["args"] if a.startswith("--listen="))
    assert listen.endswith(f":{container['ports'][0]['containerPort']}")
    assert svc["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert svc["spec"]["selector"] == deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_rbac_grants_reads_of_every_kind_the_kube_view_reads_and_no_writes() -> None:
    granted = {(g, r): set(rule["verbs"]) for rule in by_kind("ClusterRole")["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    for kind in (PVC, PV, STORAGE_CLASS, STORAGE_POOL, REPLICATED_VOLUME, NODE):
        assert {"get", "list"} <= granted[(kind.group, kind.plural)]
    assert all(verbs <= {"get", "list", "watch"} for verbs in granted.values())
    binding = by_kind("ClusterRoleBinding")
    sa = by_kind("ServiceAccount")
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    pod_spec = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == sa["metadata"]["name"]


def test_capacity_tracking_class_waits_for_first_consumer() -> None:
    sc = by_kind("StorageClass")
    assert sc["provisioner"] == DRIVER
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["parameters"]["type"] == "local"


def test_the_chart_csidriver_publishes_storage_capacity() -> None:
    """The other half of the capacity-tracking set-up lives in the Helm chart."""
    chart = docs(ROOT / "deploy" / "manifests" / "statehold.yaml")
    (driver,) = [d for d in chart if d["kind"] == "CSIDriver"]
    assert driver["metadata"]["name"] == DRIVER and driver["spec"]["storageCapacity"] is True


def chart_config(version: str | None = None) -> dict[str, Any]:
    """The KubeSchedulerConfiguration in the chart's ConfigMap (extender on)."""
    from tests.unit.kube.validation import render

    values: dict[str, Any] = {"enabled": True}
    if version is not None:
        values["schedulerConfigVersion"] = version
    rendered = render.render_chart({"schedulerExtender": values})
    (cm,) = [d for d in rendered if d["kind"] == "ConfigMap"
             and d["metadata"]["name"] == "statehold-scheduler-config"]
    config: dict[str, Any] = yaml.safe_load(cm["data"]["kube-scheduler-config.yaml"])
    return config


def test_chart_renders_the_v1_config_for_current_clusters_by_default() -> None:
    config = chart_config()
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config == chart_config("v1") == CONFIG
    jsonschema.validate(config, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_chart_renders_v1beta1_for_kubernetes_1_19_to_1_22_from_the_same_template() -> None:
    """Same stanza, other apiVersion; v1beta1 still has the deprecated plain-HTTP health
    and metrics port (0.0.0.0:10251 unless set; port 0 is refused), kept on loopback.
    tests/integration/scheduler/test_real_scheduler.py runs it in kube-scheduler 1.20."""
    beta, v1 = chart_config("v1beta1"), chart_config("v1")
    assert beta["apiVersion"] == "kubescheduler.config.k8s.io/v1beta1"
    assert beta.pop("healthzBindAddress") == beta.pop("metricsBindAddress") == "127.0.0.1:10251"
    assert {**beta, "apiVersion": v1["apiVersion"]} == v1


@pytest.mark.parametrize("version", ["v1beta2", "v1beta3", "v2", ""])
def test_chart_refuses_scheduler_config_versions_it_does_not_render(version: str) -> None:
    from helm_python.errors import HelmError

    with pytest.raises(HelmError):
        chart_config(version)
