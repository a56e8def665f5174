"""deploy/grafana/statehold.json (and the chart's PrometheusRule) name only metrics that
Statehold's components register: every registry is instantiated here and its families (with
the sample suffixes Prometheus adds: ``_total``, ``_bucket``, ``_sum``, ``_count``) collected,
then each PromQL expression's ``statehold_*`` names are checked against them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from statehold.agent.metrics import AgentMetrics
from statehold.agent.qos_metrics import QosCollector
from statehold.agent.storage_metrics import StorageCollector
from statehold.controller.metrics import OperatorMetrics
from statehold.csi.metrics import ConditionCollector, CsiMetrics
from statehold.kube.memory import MemoryKube
from statehold.scheduler.metrics import ExtenderMetrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "statehold.json"
BUILTIN = {"up"}
"""Series Prometheus makes itself (``up``: the target answered its last scrape)."""

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""), "gauge": ("",), "info": ("_info",), "unknown": ("",)}


def registries(tmp: Path) -> Iterator[CollectorRegistry]:
    yield OperatorMetrics(MemoryKube()).registry
    csi = CsiMetrics()
    csi.registry.register(ConditionCollector(list, tmp))
    yield csi.registry
    agent = AgentMetrics(list)
    agent.registry.register(StorageCollector(list))
    agent.registry.register(QosCollector(list, cast(Any, None), cast(Any, None)))
    yield agent.registry
    yield ExtenderMetrics(lambda: 0.0, lambda: 0.0).registry


def known_names(tmp: Path) -> set[str]:
    names = set(BUILTIN)
    for registry in registries(tmp):
        for family in registry.collect():
            names.update(family.name + s for s in SUFFIXES[family.type])
    return names


def names_in(expr: str) -> set[str]:
    """The ``statehold_*`` metric names and ``up`` an expression reads (string literals,
    where a label value could look like a name, are dropped first)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    found = set(re.findall(r"\bstatehold_[a-zA-Z0-9_]+", bare))
    if re.search(r"(?<![\w.])up\s*[{\[]", bare):
        found.add("up")
    return found


def dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_names_are_parsed_out_of_promql() -> None:
    assert names_in('sum by (volume) (rate(statehold_volume_device_ios_total{op="write"}[5m]))'
                    ) == {"statehold_volume_device_ios_total"}
    assert names_in('up{job="statehold-node-metrics"} == 0') == {"up"}
    assert names_in('x{volume="statehold_not_a_metric"}') == set()


def test_every_registry_yields_its_families_before_any_data(tmp_path: Path) -> None:
    known = known_names(tmp_path)
    for name in ("statehold_pool_capacity_bytes", "statehold_volume_device_bytes_total",
                 "statehold_csi_calls_total", "statehold_csi_call_seconds_bucket",
                 "statehold_backups_total", "statehold_backup_last_success_timestamp_seconds",
                 "statehold_reconcile_seconds_count", "statehold_replication_lag_seconds",
                 "statehold_volume_condition_abnormal", "statehold_schedule_misses_total"):
        assert name in known


def test_every_dashboard_expression_names_only_metrics_that_exist(tmp_path: Path) -> None:
    known = known_names(tmp_path)
    exprs = dashboard_expressions()
    assert len(exprs) > 30
    for expr in exprs:
        names = names_in(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= known, f"{expr!r} names {sorted(names - known)}"


def test_the_dashboard_has_its_sections_and_unique_panel_ids() -> None:
    dash = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Cluster overview", "Pools", "Volumes", "Backups", "Operator and CSI"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
