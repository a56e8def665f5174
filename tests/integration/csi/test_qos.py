"""Per-volume I/O limits through the real CSI socket, enforced by the real kernel.

Path covered on this host: **cgroup v1** ``blkio.throttle.*`` (the host mounts v1 blkio; its
v2 hierarchy has no ``io`` controller, so ``io.max`` cannot be exercised here -- its format
and plan are unit-tested in tests/unit/engine/test_qos.py). Each test says what it asserts.

The asserts are about the mechanism, deterministically: the rule files hold exactly the
configured values for the volume's ``MAJ:MIN`` and nothing else in the scope names it, a
change is visible without a remount, and the kernel's own counters charge every I/O of a
fixed-size fio run to the cgroup that issued it. The one rate check is an upper bound at
twice the limit: a throttle can only make fio slower, and so can a loaded host, so the
measured rate cannot rise above the limit by more than the throttle's first time slice lets
through (a few percent of the run); twice the limit cannot be reached by chance. How close
to the limit the rate really gets is measured by bench/qos.py, not asserted here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from statehold.agent.qos_metrics import QosCollector
from statehold.csi.gen import csi_pb2 as pb
from statehold.engine import qos, throttle
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.qos import Limits
from statehold.engine.throttle import Throttle
from tests.integration.csi.cgroups import Scope, cgroup_scope, fio, fio_result
from tests.integration.csi.harness import Driver, MiB, code_of, mount_cap, running_driver

pytestmark = [pytest.mark.root]

CLASS = {"writeIOPS": "500", "writeBytesPerSecond": "20Mi"}
LIMITS = Limits(write_iops=500, write_bps=20 * MiB)


@pytest.fixture
def scope(node: Node) -> Iterator[Scope]:
    with cgroup_scope() as s:
        s.write_config(node.home)  # the driver, the CLI and the agent read it from the home
        print(f"cgroup path covered: {s.hierarchy.text()} (scope {s.path})")
        yield s


@pytest.fixture
def driver(node: Node, pool: Pool, scope: Scope) -> Iterator[Driver]:
    with running_driver(node, node.home) as d:
        yield d


class Published:
    """A filesystem volume staged and published at a kubelet-like pod path."""

    def __init__(self, d: Driver, name: str, parameters: dict[str, str]) -> None:
        self.d = d
        made = d.controller.CreateVolume(pb.CreateVolumeRequest(
            name=name, capacity_range=pb.CapacityRange(required_bytes=512 * MiB),
            volume_capabilities=[mount_cap("xfs")], parameters=parameters))
        self.id = made.volume.volume_id
        self.staging = d.staging(name)
        self.target = (d.kubelet / "pods" / str(uuid.uuid4()) / "volumes" / "kubernetes.io~csi"
                       / name / "mount")

    def __enter__(self) -> Published:
        self.d.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging), volume_capability=mount_cap("xfs")))
        self.d.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging), target_path=str(self.target),
            volume_capability=mount_cap("xfs")))
        return self

    def __exit__(self, *_: object) -> None:
        self.d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=self.id, target_path=str(self.target)))
        self.d.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging)))

    def file(self, name: str, size: int = 64 * MiB) -> Path:
        """A file fio writes into, allocated here (outside the test cgroups)."""
        path = self.target / name
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        return path


def device_of(pool: Pool, volume_id: str) -> str:
    dev = pool.get_volume(volume_id.split("/")[1]).device
    assert dev is not None
    return dev


def rules(scope: Scope, device: str) -> dict[Path, Limits]:
    return {r.cgroup: r.limits for r in Throttle(scope.hierarchy, [scope.path]).applied(device)}


def staging_mount_id(staging: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(staging):
            return fields[0]
    raise AssertionError(f"nothing mounted at {staging}")


def test_two_cgroups_on_one_volume_share_its_class_limit(driver: Driver, pool: Pool, scope: Scope) -> None:
    """v1: each of the two cgroups using the volume holds half the limit for exactly the
    volume's loop device, nothing else in the scope does, and every I/O of the two fio runs
    is charged where it was issued; together they stay under twice the limit (loose)."""
    a, b, idle = scope.child("a"), scope.child("b"), scope.child("idle")
    with Published(driver, "pvc-shared", CLASS) as vol:
        device = device_of(pool, vol.id)
        number = throttle.device_number(device)
        files = {c: vol.file(c.name) for c in (a, b)}
        n = 400
        jobs = {c: scope.hold(c, fio(files[c], ios=n, name=c.name)) for c in (a, b)}
        # a process in a mount namespace without the volume (a pod's sandbox): no share
        scope.hold(idle, ["true"], hide=[vol.staging, vol.target])
        # a second publish (another pod) re-plans the shares: now both users are known
        driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=vol.id, staging_target_path=str(vol.staging), target_path=str(vol.target),
            volume_capability=mount_cap("xfs")))
        if scope.hierarchy.version == 1:
            half = Limits(write_iops=250, write_bps=10 * MiB)
            assert rules(scope, device) == {a: half, b: half}
            assert (a / "blkio.throttle.write_iops_device").read_text() == f"{number} 250\n"
            assert (b / "blkio.throttle.write_bps_device").read_text() == f"{number} {10 * MiB}\n"
            assert (idle / "blkio.throttle.write_iops_device").read_text() == ""
        else:
            assert (scope.path / "io.max").read_text() == (
                f"{number} rbps=max wbps={20 * MiB} riops=max wiops=500\n")

        before = throttle.counters(scope.hierarchy, scope.path, number)
        for job in jobs.values():
            job.go()
        results = {c: fio_result(job.output()) for c, job in jobs.items()}
        after = throttle.counters(scope.hierarchy, scope.path, number)

        assert all(r["total_ios"] == n for r in results.values())
        assert after.write_ios - before.write_ios == 2 * n  # every write, charged in the scope
        if scope.hierarchy.version == 1:
            for c in (a, b):
                assert throttle.parse_v1_stat((c / "blkio.throttle.io_serviced").read_text(),
                                              number)[1] == n
        slowest = max(r["runtime"] for r in results.values()) / 1000
        together = 2 * n / slowest
        print(f"two cgroups: {together:.0f} write IOPS together, limit 500")
        assert together < 2 * 500

        # describe and the metrics show the limit and the rules
        out = subprocess.run([sys.executable, "-m", "statehold.cli.main", "volume", "describe",
                              vol.id.split("/")[1], "--home", str(driver.server.config.home)],
                             capture_output=True, text=True, check=True).stdout
        assert re.search(r"I/O limits:\s+write 500 IOPS \+ 20 MiB/s \(class\)", out), out
        assert str(a) in out and str(b) in out  # the Throttle lines: one rule per user (v1)
        registry = CollectorRegistry()
        home = driver.server.config.home
        registry.register(QosCollector(lambda: [pool], Throttle.for_home(home), qos.Overrides(home)))
        text = generate_latest(registry).decode()
        assert f'statehold_volume_limit{{limit="write_iops",source="class",volume="{vol.id}"}} 500.0' in text
        rule_count = 2 if scope.hierarchy.version == 1 else 1
        assert f'statehold_volume_throttle_rules{{volume="{vol.id}"}} {rule_count}.0' in text
        assert f'statehold_volume_io_total{{op="write",volume="{vol.id}"}} {after.write_ios}.0' in text
    assert rules(scope, device) == {}  # unstaged: the loop device keeps no rule


def test_a_limit_change_takes_effect_without_a_remount(driver: Driver, pool: Pool, scope: Scope) -> None:
    """v1: ``statehold volume limits`` rewrites the rule in place: same mount, same device,
    the file holds the new value, and a fio run after it stays under twice the new limit."""
    user = scope.child("db")
    with Published(driver, "pvc-change", CLASS) as vol:
        device = device_of(pool, vol.id)
        number = throttle.device_number(device)
        data = vol.file("data")
        job = scope.hold(user, fio(data, ios=300))
        scope.hold(user, ["true"])  # the pod's process that outlives the fio run
        driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(  # a retry: re-plans, idempotent
            volume_id=vol.id, staging_target_path=str(vol.staging), target_path=str(vol.target),
            volume_capability=mount_cap("xfs")))
        place = user if scope.hierarchy.version == 1 else scope.path
        assert rules(scope, device) == {place: LIMITS}
        mounted = staging_mount_id(vol.staging)

        subprocess.run([sys.executable, "-m", "statehold.cli.main", "volume", "limits",
                        vol.id.split("/")[1], "--set", "write_iops=100", "--home",
                        str(driver.server.config.home)], check=True, capture_output=True)

        assert rules(scope, device) == {place: Limits(write_iops=100)}
        assert staging_mount_id(vol.staging) == mounted
        assert device_of(pool, vol.id) == device
        if scope.hierarchy.version == 1:
            assert (user / "blkio.throttle.write_iops_device").read_text() == f"{number} 100\n"
            assert (user / "blkio.throttle.write_bps_device").read_text() == ""
        job.go()
        result = fio_result(job.output())
        rate = result["total_ios"] / (result["runtime"] / 1000)
        print(f"after the change: {rate:.0f} write IOPS, limit 100")
        assert result["total_ios"] == 300 and rate < 2 * 100

        # dropping the override goes back to the class limits, again in place
        subprocess.run([sys.executable, "-m", "statehold.cli.main", "volume", "limits",
                        vol.id.split("/")[1], "--clear", "--home", str(driver.server.config.home)],
                       check=True, capture_output=True)
        assert rules(scope, device) == {place: LIMITS}
        assert staging_mount_id(vol.staging) == mounted


def test_an_unlimited_volume_beside_a_limited_one_gets_no_rule(driver: Driver, pool: Pool,
                                                             scope: Scope) -> None:
    """v1: the same cgroup uses both volumes; only the limited one's device has rules."""
    user = scope.child("both")
    with Published(driver, "pvc-db", CLASS) as db, Published(driver, "pvc-batch", {}) as batch:
        scope.hold(user, ["true"])
        for vol in (db, batch):  # re-plan with the user present (a pod's second volume mount)
            driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(
                volume_id=vol.id, staging_target_path=str(vol.staging), target_path=str(vol.target),
                volume_capability=mount_cap("xfs")))
        place = user if scope.hierarchy.version == 1 else scope.path
        assert rules(scope, device_of(pool, db.id)) == {place: LIMITS}
        assert rules(scope, device_of(pool, batch.id)) == {}


def test_a_stale_rule_on_a_reused_loop_device_is_removed_at_stage(driver: Driver, pool: Pool,
                                                                  scope: Scope) -> None:
    """v1: a rule left for a loop device (a crash between detach and clear) does not follow
    the device to the next volume: staging an unlimited volume there removes it."""
    user = scope.child("next")
    scope.hold(user, ["true"])
    vol = Published(driver, "pvc-next", {})
    with vol:
        device = device_of(pool, vol.id)
        t = Throttle(scope.hierarchy, [scope.path])
        place = user if scope.hierarchy.version == 1 else scope.path
        throttle.write_rule(scope.hierarchy, place, throttle.device_number(device), Limits(read_iops=7))
        assert rules(scope, device) == {place: Limits(read_iops=7)}
        driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=vol.id, staging_target_path=str(vol.staging), target_path=str(vol.target),
            volume_capability=mount_cap("xfs")))
        assert t.applied(device) == []


def test_limits_on_a_node_without_a_scope_are_refused_at_stage(node: Node, pool: Pool, scope: Scope) -> None:
    """No pod cgroup to put the rule in (the configured scope is gone): NodeStageVolume is
    FAILED_PRECONDITION and nothing is mounted; an unlimited volume stages as before."""
    (node.home / throttle.CONFIG).write_text(
        f'{{"hierarchy": "{scope.hierarchy.root}", "scopes": ["{scope.relative}-missing"]}}')
    with running_driver(node, node.home) as d:
        limited = Published(d, "pvc-limited", CLASS)
        req = pb.NodeStageVolumeRequest(volume_id=limited.id, staging_target_path=str(limited.staging),
                                        volume_capability=mount_cap("xfs"))
        assert code_of(d.node.NodeStageVolume, req) == grpc.StatusCode.FAILED_PRECONDITION
        assert pool.get_volume(limited.id.split("/")[1]).mounts == ()
        with Published(d, "pvc-free", {}) as free:
            assert pool.get_volume(free.id.split("/")[1]).mounts


@pytest.mark.parametrize("parameters", [{"writeIOPSBurst": "1000", "writeIOPS": "500"},
                                        {"writeIOPS": "fast"}, {"readBytesPerSecond": "-1"}])
def test_bad_qos_parameters_are_invalid_argument_and_create_nothing(
        driver: Driver, pool: Pool, parameters: dict[str, str]) -> None:
    req = pb.CreateVolumeRequest(name="pvc-bad", volume_capabilities=[mount_cap("xfs")],
                                 parameters=parameters)
    assert code_of(driver.controller.CreateVolume, req) == grpc.StatusCode.INVALID_ARGUMENT
    assert pool.list_volumes() == []


def test_the_agent_follows_claim_annotations_without_a_remount(driver: Driver, node: Node, pool: Pool,
                                                               scope: Scope) -> None:
    """v1: the node agent's pass turns a claim's ``statehold.io/qos-*`` annotations into an
    override applied in place, with a LimitsChanged Event; removing them restores the class
    limits; a malformed one is a Warning and changes nothing."""
    from statehold.controller.qos import QosPass
    from statehold.kube.kinds import PV, PVC
    from statehold.kube.memory import MemoryKube

    user = scope.child("app")
    with Published(driver, "pvc-annotated", CLASS) as vol:
        scope.hold(user, ["true"])
        device = device_of(pool, vol.id)
        kube = MemoryKube()
        kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-a"},
                     "spec": {"csi": {"driver": "csi.statehold.io", "volumeHandle": vol.id},
                              "claimRef": {"name": "data", "namespace": "db"}}})
        kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "data", "namespace": "db",
                                  "annotations": {"statehold.io/qos-write-iops": "50"}}})
        agent = QosPass(kube, node, "node-a")
        mounted = staging_mount_id(vol.staging)
        assert list(agent.run()) == ["db/data"]
        place = user if scope.hierarchy.version == 1 else scope.path
        assert rules(scope, device) == {place: Limits(write_iops=50)}
        assert staging_mount_id(vol.staging) == mounted
        pvc = kube.get(PVC, "data", "db")
        assert [e["reason"] for e in kube.events_for(pvc)] == ["LimitsChanged"]
        assert agent.run() == {}  # nothing changed: no write, no Event

        kube.patch(PVC, "data", {"metadata": {"annotations": {"statehold.io/qos-write-iops": "lots"}}}, "db")
        assert "invalid" in agent.run()["db/data"]
        assert rules(scope, device) == {place: Limits(write_iops=50)}
        kube.patch(PVC, "data", {"metadata": {"annotations": {"statehold.io/qos-write-iops": None}}}, "db")
        agent.run()
        assert rules(scope, device) == {place: LIMITS}
        reasons = [e["reason"] for e in kube.events_for(kube.get(PVC, "data", "db"))]
        assert reasons.count("LimitsChanged") == 2 and reasons.count("InvalidLimits") == 1
        assert kube.get(PV, "pv-a")  # the PV is only read
