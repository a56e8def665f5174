"""Quantities, object parsing and claim resolution (which claims are Statehold's)."""

from __future__ import annotations

import pytest

from statehold.errors import InvalidArgument
from statehold.scheduler.claims import ClaimPolicy, resolve
from statehold.scheduler.core import BoundVolume, ClaimKey, GiB, MiB, PendingClaim
from statehold.scheduler.objects import (
    claim_info,
    memory_view,
    pool_state,
    pools_by_node,
    storage_class_info,
    volume_info,
)
from statehold.scheduler.quantity import parse_quantity
from statehold.scheduler.wire import decode_pod
from tests.unit.scheduler import shapes


@pytest.mark.parametrize(("text", "n"), [
    ("10Gi", 10 * GiB), ("512Mi", 512 * MiB), ("1G", 10**9), ("1.5Gi", 3 * GiB // 2),
    ("100", 100), (100, 100), ("1e3", 1000), ("1500m", 2), ("0", 0), (" 2Ki ", 2048),
    ("0.5", 1), (2.5, 3)])
def test_parse_quantity(text: object, n: int) -> None:
    assert parse_quantity(text) == n


@pytest.mark.parametrize("bad", ["", "ten", "10GB", "-1Gi", "1Gi2", None, True, [1]])
def test_bad_quantity_is_invalid_argument(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_quantity(bad)


def test_claim_info_reads_class_size_binding_and_selected_node() -> None:
    c = claim_info(shapes.pvc("data", "10Gi", namespace="db", selected_node="n2"))
    assert (c.namespace, c.name, c.storage_class, c.request) == ("db", "data", "statehold-local",
                                                                 10 * GiB)
    assert (c.volume_name, c.selected_node) == (None, "n2")
    assert claim_info(shapes.pvc("d", "1Gi", volume="pv-1")).volume_name == "pv-1"


def test_claim_with_unparseable_size_counts_zero() -> None:
    obj = shapes.pvc("d", "lots")
    assert claim_info(obj).request == 0


def test_volume_info_nodes_from_topology_and_primary() -> None:
    v = volume_info(shapes.pv("pv-1", ["n1", "n2"], primary="n2"))
    assert v.nodes == frozenset({"n1", "n2"}) and v.primary == "n2"
    assert v.driver == "csi.statehold.io" and v.handle == "pool-a/pv-1"
    assert volume_info(shapes.pv("pv-2", ["n3"])).primary == "n3"
    assert volume_info(shapes.pv("pv-3", [])).nodes == frozenset()


def test_storage_class_info() -> None:
    sc = storage_class_info(shapes.storage_class(pool="fast"))
    assert sc.wait_for_first_consumer and sc.provisioner == "csi.statehold.io"
    assert sc.parameters["pool"] == "fast"
    assert not storage_class_info(shapes.storage_class(wffc=False)).wait_for_first_consumer


def test_pool_state_uses_provisioned_and_ratio_default_ten() -> None:
    p = pool_state(shapes.storage_pool("n1-a", "n1", 100 * GiB, 30 * GiB))
    assert p is not None
    assert (p.node, p.name, p.capacity, p.allocated, p.overprovision) == (
        "n1", "n1-a", 100 * GiB, 30 * GiB, 10.0)
    assert pool_state(shapes.storage_pool("x", "n1", 1, ratio=1.5)).overprovision == 1.5


def test_pools_without_status_or_failed_have_no_capacity_data() -> None:
    no_status = shapes.storage_pool("n1-a", "n1", GiB)
    del no_status["status"]
    failed = shapes.storage_pool("n2-a", "n2", GiB, phase="Failed")
    ok = shapes.storage_pool("n3-a", "n3", GiB)
    assert set(pools_by_node([no_status, failed, ok])) == {"n3"}


def _cluster() -> list[dict]:
    return [
        shapes.storage_class("statehold-local"),
        shapes.storage_class("statehold-fast", pool="fast"),
        shapes.storage_class("statehold-shared", type="shared"),
        shapes.storage_class("statehold-now", wffc=False),
        shapes.storage_class("other", provisioner="ebs.csi.aws.com"),
        shapes.pvc("bound", "5Gi", volume="pv-bound"),
        shapes.pv("pv-bound", ["n1", "n2"], primary="n1"),
        shapes.pvc("bound-shared", "5Gi", volume="pv-shared"),
        shapes.pv("pv-shared", []),
        shapes.pvc("bound-other", "5Gi", volume="pv-ebs"),
        shapes.pv("pv-ebs", ["n9"], driver="ebs.csi.aws.com"),
        shapes.pvc("new", "1000001"),
        shapes.pvc("new-fast", "1Gi", sc="statehold-fast"),
        shapes.pvc("new-shared", "1Gi", sc="statehold-shared"),
        shapes.pvc("new-immediate", "1Gi", sc="statehold-now"),
        shapes.pvc("new-other", "1Gi", sc="other"),
        shapes.pvc("new-unknown-class", "1Gi", sc="nope"),
        shapes.pvc("provisioning", "1Gi", selected_node="n2"),
        shapes.pvc("dangling", "1Gi", volume="pv-gone"),
    ]


def _resolve(*claims: str):
    view = memory_view(_cluster())
    return resolve(decode_pod(shapes.pod("p-0", list(claims))), view, ClaimPolicy())


def K(name: str) -> ClaimKey:
    return ClaimKey("default", name)


def test_resolve_sorts_claims_into_bound_pending_and_ignored() -> None:
    vols = _resolve("bound", "bound-shared", "bound-other", "new", "new-fast", "new-shared",
                    "new-immediate", "new-other", "new-unknown-class", "provisioning")
    assert vols.bound == (BoundVolume(K("bound"), "pv-bound", frozenset({"n1", "n2"}), "n1"),)
    assert vols.pending == (PendingClaim(K("new"), MiB),  # rounded up to a whole MiB
                            PendingClaim(K("new-fast"), GiB, pool="fast"),
                            PendingClaim(K("provisioning"), GiB, selected_node="n2"))
    assert vols.problems == ()


def test_resolve_reports_unknown_claims_and_missing_volumes() -> None:
    vols = _resolve("ghost", "dangling")
    assert vols.problems == ("persistentvolumeclaim default/ghost not found",
                             "claim default/dangling is bound to volume pv-gone, which does "
                             "not exist")


def test_pod_without_statehold_claims_does_not_concern_us() -> None:
    assert not _resolve().concerns_us
    assert not _resolve("new-other", "bound-other", "new-shared").concerns_us


def test_pool_reported_physically_full_has_no_room() -> None:
    obj = shapes.storage_pool("n1-a", "n1", 100 * GiB, 10 * GiB)
    obj["status"]["allocatable"] = 0
    p = pool_state(obj)
    assert p is not None and p.free() == 0
    obj["status"]["allocatable"] = 5 * GiB
    assert pool_state(obj).free() == 990 * GiB
