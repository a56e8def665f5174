"""The chart's optional scheduler extender: off by default; when on, the same objects as
deploy/scheduler/extender/ (one replica, read-only RBAC, the Service), and a valid
KubeSchedulerConfiguration in a ConfigMap that points at that Service."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.kube.test_deploy import by, containers
from tests.unit.kube.validation import ROOT, render, validate_object

DEPLOY = ROOT / "deploy" / "scheduler"
SCHEMA = json.loads((DEPLOY / "kubescheduler-config.v1.schema.json").read_text())
SHIPPED = [d for d in yaml.safe_load_all((DEPLOY / "extender" / "extender.yaml").read_text()) if d]
SHIPPED_CONFIG = yaml.safe_load((DEPLOY / "extender" / "kube-scheduler-config.yaml").read_text())


def shipped(kind: str) -> dict[str, Any]:
    (obj,) = [d for d in SHIPPED if d["kind"] == kind]
    return obj


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    out = render.render_chart({"schedulerExtender": {"enabled": True}})
    for doc in out:
        validate_object(doc)
    return list(out)


def scheduler_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = by(docs, "ConfigMap", "statehold-scheduler-config")
    config: dict[str, Any] = yaml.safe_load(cm["data"]["kube-scheduler-config.yaml"])
    return config


def test_extender_is_off_by_default() -> None:
    docs = render.render_chart()
    assert not [d for d in docs if "scheduler" in d["metadata"]["name"]]


def test_extender_deployment_is_one_replica_and_matches_the_shipped_one(docs: list) -> None:
    dep = by(docs, "Deployment", "statehold-scheduler-extender")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    ours, theirs = containers(dep)["extender"], containers(shipped("Deployment"))["extender"]
    assert ours["args"] == theirs["args"]
    assert ours["securityContext"]["runAsNonRoot"] is True
    assert ours["securityContext"]["capabilities"]["drop"] == ["ALL"]
    svc = by(docs, "Service", "statehold-scheduler-extender")
    assert svc["spec"]["ports"] == shipped("Service")["spec"]["ports"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())


def test_extender_rbac_is_the_shipped_read_only_set(docs: list) -> None:
    role = by(docs, "ClusterRole", "statehold-scheduler-extender")
    assert role["rules"] == shipped("ClusterRole")["rules"]
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    binding = by(docs, "ClusterRoleBinding", "statehold-scheduler-extender")
    assert binding["subjects"][0]["namespace"] == "statehold-system"


def test_configmap_holds_a_valid_scheduler_config_pointing_at_the_service(docs: list) -> None:
    config = scheduler_config(docs)
    jsonschema.validate(config, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert config == SHIPPED_CONFIG  # the release namespace is the shipped one here


def test_other_namespace_and_port_follow_into_the_url() -> None:
    docs = render.render_chart({"schedulerExtender": {"enabled": True, "port": 9300, "weight": 3}},
                               name="sh", namespace="storage")
    for doc in docs:
        validate_object(doc)
    (ext,) = scheduler_config(docs)["extenders"]
    assert ext["urlPrefix"] == "http://statehold-scheduler-extender.storage.svc:9300"
    assert ext["weight"] == 3
    dep = by(docs, "Deployment", "statehold-scheduler-extender")
    assert "--listen=0.0.0.0:9300" in containers(dep)["extender"]["args"]


@pytest.mark.parametrize("bad", [{"weight": 0}, {"httpTimeout": "5 seconds"}, {"replicas": 2},
                                 {"port": 0}])
def test_bad_extender_values_are_refused(bad: dict[str, Any]) -> None:
    from helm_python.errors import HelmError

    with pytest.raises(HelmError):
        render.render_chart({"schedulerExtender": {"enabled": True, **bad}})
