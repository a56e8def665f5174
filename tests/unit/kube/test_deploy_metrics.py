"""The chart's metrics: ports and flags on each component, headless Services over them, and
the optional ServiceMonitor and PrometheusRule, whose expressions name only metrics that
exist (tests/unit/metrics/test_dashboard_names.py collects them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helm_python import Chart
from helm_python.errors import HelmValuesError

from tests.unit.kube.validation import render, validate_object
from tests.unit.metrics.test_dashboard_names import known_names, names_in

ON = {"metrics": {"enabled": True}}
MONITORING = {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True},
                          "prometheusRule": {"enabled": True,
                                             "backupMaxAgeHours": 8, "replicaLagSeconds": 60}}}
ALERTS = {"StateholdPoolUsageWarning", "StateholdPoolUsageCritical", "StateholdBackupFailed",
          "StateholdBackupTooOld", "StateholdScheduleMissed", "StateholdVolumeConditionAbnormal",
          "StateholdReplicaLagAboveRPO", "StateholdNodeAgentDown"}


def by(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


def container(docs: list[dict[str, Any]], kind: str, name: str, cname: str) -> dict[str, Any]:
    (c,) = [c for c in by(docs, kind, name)["spec"]["template"]["spec"]["containers"]
            if c["name"] == cname]
    return dict(c)


def ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def test_each_component_serves_metrics_on_a_named_port_behind_a_service() -> None:
    docs = render.render_chart(ON)
    agent = container(docs, "DaemonSet", "statehold-node", "statehold-agent")
    plugin = container(docs, "DaemonSet", "statehold-node", "statehold-plugin")
    operator = container(docs, "Deployment", "statehold-operator", "operator")
    assert "--metrics-address=0.0.0.0:9102" in agent["args"] and ports(agent)["metrics"] == 9102
    assert "--metrics-address=0.0.0.0:9104" in plugin["args"] and ports(plugin)["csi-metrics"] == 9104
    assert "--metrics-address=0.0.0.0:9103" in operator["args"] and ports(operator)["metrics"] == 9103
    assert not any("--no-metrics-per-volume" in c["args"] for c in (agent, operator))
    node_svc = by(docs, "Service", "statehold-node-metrics")["spec"]
    op_svc = by(docs, "Service", "statehold-operator-metrics")["spec"]
    assert node_svc["clusterIP"] == op_svc["clusterIP"] == "None"
    assert {p["targetPort"] for p in node_svc["ports"]} == {"metrics", "csi-metrics"}
    assert node_svc["selector"]["app.kubernetes.io/component"] == "node"
    assert op_svc["selector"]["app.kubernetes.io/component"] == "operator"
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]


def test_metrics_are_off_by_default_no_port_flag_or_service() -> None:
    docs = render.render_chart(name="sh", namespace="storage")
    for doc in docs:
        validate_object(doc)
    assert not [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
    for c in (container(docs, "DaemonSet", "statehold-node", "statehold-agent"),
              container(docs, "Deployment", "statehold-operator", "operator")):
        assert not [a for a in c["args"] if a.startswith("--metrics")]


def test_per_volume_series_can_be_turned_off() -> None:
    docs = render.render_chart({"metrics": {"enabled": True, "perVolume": False}})
    for c in (container(docs, "DaemonSet", "statehold-node", "statehold-agent"),
              container(docs, "Deployment", "statehold-operator", "operator")):
        assert "--no-metrics-per-volume" in c["args"]


def test_service_monitor_and_alerts_name_only_metrics_that_exist(tmp_path: Path) -> None:
    docs = render.render_chart(MONITORING)
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_object(doc)
    monitor = by(docs, "ServiceMonitor", "statehold")["spec"]
    assert {e["port"] for e in monitor["endpoints"]} == {"metrics", "csi-metrics"}
    assert monitor["selector"]["matchLabels"]["statehold.io/metrics"] == "true"
    rules = by(docs, "PrometheusRule", "statehold")["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == ALERTS
    known = known_names(tmp_path)
    for rule in rules:
        names = names_in(rule["expr"])
        assert names and names <= known, rule["expr"]
        assert rule["labels"]["severity"] in ("warning", "critical")
    expr = {r["alert"]: r["expr"] for r in rules}
    # each pool's own marks, through the level the node agent reports
    assert expr["StateholdPoolUsageWarning"] == 'statehold_pool_space_state{state="warning"} == 1'
    assert expr["StateholdPoolUsageCritical"] == 'statehold_pool_space_state{state=~"critical|full"} == 1'
    assert expr["StateholdBackupTooOld"].endswith("> 8 * 3600")
    assert expr["StateholdReplicaLagAboveRPO"].endswith("> 60")  # one threshold, as asked
    assert "{{ $labels.pool }}" in next(r for r in rules if r["alert"] == "StateholdPoolUsageWarning"
                                        )["annotations"]["summary"]


def test_by_default_each_replica_is_compared_with_its_own_volume_s_rpo(tmp_path: Path) -> None:
    docs = render.render_chart({"metrics": {"enabled": True, "prometheusRule": {"enabled": True}}})
    rules = by(docs, "PrometheusRule", "statehold")["spec"]["groups"][0]["rules"]
    rule = next(r for r in rules if r["alert"] == "StateholdReplicaLagAboveRPO")
    assert rule["expr"] == ("statehold_replication_lag_seconds > on (job, instance, volume) "
                            "group_left statehold_replication_rpo_seconds")
    assert names_in(rule["expr"]) <= known_names(tmp_path)
    assert "the volume's RPO" in rule["annotations"]["summary"]


@pytest.mark.parametrize("bad", [{"prometheusRule": {"poolWarningPercent": 80}},  # gone: per pool
                                 {"prometheusRule": {"replicaLagSeconds": 0}},
                                 {"serviceMonitor": {"interval": "often"}},
                                 {"nodePort": 0}, {"perVolumes": False}])
def test_the_schema_refuses_bad_metrics_values(bad: dict[str, Any]) -> None:
    with Chart.load(render.CHART) as chart:
        values = chart.values
        metrics = {**values["metrics"]}
        for key, val in bad.items():
            metrics[key] = {**metrics[key], **val} if isinstance(val, dict) and key in metrics else val
        chart.validate_schema(values)
        with pytest.raises(HelmValuesError):
            chart.validate_schema({**values, "metrics": metrics})
