"""The extender called by a real kube-scheduler v1.20.2, against the session's real control
plane (tests/fixtures/controlplane.py).

A second kube-scheduler runs beside the session's, with its own profile
(``schedulerName`` below) and the chart's KubeSchedulerConfiguration rendered as
``v1beta1`` (the only version 1.20 reads; the chart's default stays ``v1`` for current
clusters). It calls ``statehold scheduler-extender`` (a subprocess with the chart
Deployment's arguments and an admin kubeconfig) on 127.0.0.1. Three hand-made Ready Nodes
(no kubelet; a heartbeat thread renews their Leases) have one StoragePool each:

    big 100 GiB, mid 30 GiB, small 8 GiB   (overprovisionRatio 1)

There is no CSI driver: when kube-scheduler has written ``volume.kubernetes.io/selected-node``
on a WaitForFirstConsumer claim, the test acts as the external provisioner and creates the
PV on that node, bound to the claim; kube-controller-manager binds the claim and
kube-scheduler then binds the pod. Assertions are on API data only: the claim's
selected-node, the pod's ``spec.nodeName``, the pod's PodScheduled condition.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from statehold.errors import NotFound
from statehold.kube.client import ApiKube
from statehold.kube.kinds import LEASE, NAMESPACE, NODE, POD, PV, PVC, STORAGE_CLASS, STORAGE_POOL
from statehold.scheduler.objects import SELECTED_NODE
from tests.fixtures.controlplane import BIN_DIR, ControlPlane
from tests.integration.scheduler.realcluster import (
    HOST,
    NODE_LEASE_NAMESPACE,
    TEST_TAINT,
    HandMadeNodes,
    Process,
    api_client,
    extender_args,
    force_delete_pod,
    free_port,
    hand_made_nodes,
    healthz,
    install_crds,
    scheduler_config,
    venv_bin,
    wait_until,
)

pytestmark = pytest.mark.slow

GiB = 1 << 30
DRIVER = "csi.statehold.io"
SCHEDULER_NAME = "statehold-test"
POOLS_GIB = {"big": 100, "mid": 30, "small": 8}


@dataclass
class Env:
    kube: ApiKube
    kubeconfig: Path
    run: str
    namespace: str
    storage_class: str
    nodes: dict[str, str]  # "big" -> node name
    extender: Process
    extender_port: int
    scheduler: Process
    hand_made: HandMadeNodes
    extender_expected: bool = True
    """False while a test has stopped the extender on purpose."""

    @property
    def processes(self) -> tuple[Process, ...]:
        """What must stay up while a test waits: a wait fails at once if one exits."""
        return (self.scheduler, self.extender) if self.extender_expected else (self.scheduler,)

    def pool(self, size: str) -> str:
        return f"{self.nodes[size]}-pool"


def _server_version(kubeconfig: Path) -> str:
    info = kubernetes.client.VersionApi(api_client(kubeconfig)).get_code()
    return str(info.git_version)


def _storage_pool(name: str, node: str, capacity_gib: int) -> tuple[dict[str, Any], dict[str, Any]]:
    obj = {"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
           "metadata": {"name": name},
           "spec": {"node": node, "directory": "/var/lib/statehold", "imageSize": "200Gi",
                    "overprovisionRatio": 1}}
    status = {"phase": "Ready", "capacity": capacity_gib * GiB, "allocated": 0,
              "provisioned": 0, "volumes": 0}
    return obj, status


@pytest.fixture(scope="module")
def env(kube_control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kubeconfig = kube_control_plane.kubeconfig
    version = _server_version(kubeconfig)
    if not version.startswith("v1.20."):
        # only reached with STATEHOLD_TEST_KUBECONFIG: our kube-scheduler is v1.20.2
        pytest.skip(f"needs a v1.20 API server for kube-scheduler v1.20.2; "
                    f"STATEHOLD_TEST_KUBECONFIG's is {version}")
    install_crds(kubeconfig)
    kube = ApiKube.from_kubeconfig(str(kubeconfig))
    home = tmp_path_factory.mktemp("real-scheduler")
    run = uuid.uuid4().hex[:6]
    namespace, sc = f"statehold-sched-{run}", f"statehold-local-{run}"
    nodes = {size: f"sched-{run}-{size}" for size in POOLS_GIB}
    ext_port, health_port = free_port(), free_port()
    extender = Process("statehold scheduler-extender", [
        venv_bin("statehold"), *extender_args(f"{HOST}:{ext_port}"),
        f"--kubeconfig={kubeconfig}"], home / "extender.log")
    config = home / "kube-scheduler.yaml"
    config.write_text(yaml.safe_dump(scheduler_config(
        kubeconfig=kubeconfig, scheduler_name=SCHEDULER_NAME,
        extender_url=f"http://{HOST}:{ext_port}", health_port=health_port)))
    # --secure-port=0: no HTTPS port; /healthz on the configuration's loopback address
    scheduler = Process("kube-scheduler", [str(BIN_DIR / "kube-scheduler"), f"--config={config}",
                                           "--secure-port=0"], home / "kube-scheduler.log")
    with contextlib.ExitStack() as stack:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        stack.callback(_delete, kube, NAMESPACE, namespace)
        kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                     "metadata": {"name": sc}, "provisioner": DRIVER,
                     "parameters": {"type": "local"}, "reclaimPolicy": "Delete",
                     "volumeBindingMode": "WaitForFirstConsumer"})
        stack.callback(_delete, kube, STORAGE_CLASS, sc)
        hand_made = stack.enter_context(hand_made_nodes(kube, list(nodes.values()), run))
        for size, node in nodes.items():
            obj, status = _storage_pool(f"{node}-pool", node, POOLS_GIB[size])
            kube.create(obj)
            stack.callback(_delete, kube, STORAGE_POOL, obj["metadata"]["name"])
            kube.patch_status(STORAGE_POOL, obj["metadata"]["name"], status)
        extender.start()
        stack.callback(extender.stop)
        scheduler.start()
        stack.callback(scheduler.stop)
        wait_until(lambda: healthz(ext_port), "the extender's /healthz", alive=[extender])
        wait_until(lambda: healthz(health_port), "kube-scheduler's /healthz", alive=[scheduler])
        # pods need their namespace's default ServiceAccount (admission looks it up)
        wait_until(lambda: _has_service_account(kubeconfig, "default", namespace),
                   "the namespace's default ServiceAccount")
        yield Env(kube, kubeconfig, run, namespace, sc, nodes, extender, ext_port, scheduler,
                  hand_made)


def _delete(kube: ApiKube, kind: Any, name: str, namespace: str | None = None) -> None:
    with contextlib.suppress(NotFound):
        kube.delete(kind, name, namespace)


def _has_service_account(kubeconfig: Path, name: str, namespace: str) -> bool:
    core = kubernetes.client.CoreV1Api(api_client(kubeconfig))
    try:
        core.read_namespaced_service_account(name, namespace)
    except kubernetes.client.ApiException:
        return False
    return True


@dataclass
class Objects:
    """What one test creates, deleted afterwards in the order the controllers need: pods
    (forced: no kubelet confirms), then claims, then volumes (released once unclaimed).
    Names get a per-test suffix, so no test meets what another one is still deleting."""

    env: Env
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    pods: list[str] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def name(self, base: str) -> str:
        return f"{base}-{self.tag}"

    def claim(self, base: str, size: str) -> str:
        name = self.name(base)
        spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                "storageClassName": self.env.storage_class,
                                "resources": {"requests": {"storage": size}}}
        self.env.kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "metadata": {"name": name, "namespace": self.env.namespace},
                              "spec": spec})
        self.claims.append(name)
        return name

    def pod(self, base: str, claims: list[str], *, on: str | None = None) -> str:
        """A pod for our scheduler, confined to the hand-made nodes (``on``: one of them, by
        the scheduler's own NodeAffinity filter)."""
        name = self.name(base)
        selector = {TEST_TAINT: self.env.run}
        if on is not None:
            selector["kubernetes.io/hostname"] = on
        self.env.kube.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.env.namespace},
            "spec": {
                "schedulerName": SCHEDULER_NAME, "nodeSelector": selector,
                "tolerations": [{"key": TEST_TAINT, "operator": "Equal", "value": self.env.run,
                                 "effect": "NoSchedule"}],
                "automountServiceAccountToken": False,
                "containers": [{"name": "app", "image": "registry.invalid/none:0"}],
                "volumes": [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                            for i, c in enumerate(claims)]}})
        self.pods.append(name)
        return name

    def volume(self, name: str, size: str, nodes: list[str], *, claim: str,
               primary: str | None = None) -> str:
        """A PV of our driver pinned to ``nodes`` and reserved for ``claim`` (claimRef), as
        external-provisioner writes one (plus the primary-copy annotation when given)."""
        uid = self.env.kube.get(PVC, claim, self.env.namespace)["metadata"]["uid"]
        ref = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "namespace": self.env.namespace, "name": claim, "uid": uid}
        annotations = {"pv.kubernetes.io/provisioned-by": DRIVER}
        if primary:
            annotations["statehold.io/primary-node"] = primary
        self.env.kube.create({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": self.env.storage_class, "volumeMode": "Filesystem",
                "claimRef": ref,
                "csi": {"driver": DRIVER, "volumeHandle": f"pool/{name}", "fsType": "xfs"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "topology.statehold.io/node", "operator": "In",
                     "values": nodes}]}]}}}})
        self.volumes.append(name)
        return name

    def provision(self, claim: str, node: str) -> str:
        """Act as the external provisioner for ``claim`` on the node kube-scheduler chose."""
        size = self.env.kube.get(PVC, claim, self.env.namespace)["spec"]["resources"][
            "requests"]["storage"]
        return self.volume(f"pv-{claim}", size, [node], claim=claim)

    def cleanup(self) -> None:
        env = self.env
        for pod in self.pods:
            force_delete_pod(env.kubeconfig, pod, env.namespace)
        for claim in self.claims:
            _delete(env.kube, PVC, claim, env.namespace)
        for pod in self.pods:
            wait_until(lambda p=pod: _gone(env.kube, POD, p, env.namespace), f"pod {pod} deleted")
        for claim in self.claims:
            wait_until(lambda c=claim: _gone(env.kube, PVC, c, env.namespace),
                       f"claim {claim} deleted")
        for pv in self.volumes:
            _delete(env.kube, PV, pv)
        for pv in self.volumes:
            wait_until(lambda v=pv: _gone(env.kube, PV, v), f"volume {pv} deleted")


def _gone(kube: ApiKube, kind: Any, name: str, namespace: str | None = None) -> bool:
    try:
        kube.get(kind, name, namespace)
    except NotFound:
        return True
    return False


@pytest.fixture
def objects(env: Env) -> Iterator[Objects]:
    objs = Objects(env)
    try:
        yield objs
    finally:
        objs.cleanup()


def selected_node(env: Env, claim: str) -> str | None:
    obj = env.kube.get(PVC, claim, env.namespace)
    return (obj["metadata"].get("annotations") or {}).get(SELECTED_NODE)


def bound_node(env: Env, pod: str) -> str | None:
    return env.kube.get(POD, pod, env.namespace)["spec"].get("nodeName")


def unschedulable_message(env: Env, pod: str) -> str | None:
    """The PodScheduled=False/Unschedulable condition's message, once kube-scheduler wrote it."""
    conditions = env.kube.get(POD, pod, env.namespace).get("status", {}).get("conditions") or []
    for c in conditions:
        if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable":
            return str(c.get("message", ""))
    return None


def claim_phase(env: Env, claim: str) -> str | None:
    return env.kube.get(PVC, claim, env.namespace).get("status", {}).get("phase")


def schedule_with_provisioning(env: Env, objects: Objects, claim: str, pod: str) -> str:
    """Wait for kube-scheduler to pick a node for the claim, provision it there, and wait
    for the pod's binding; return the node the pod was bound to."""
    chosen = wait_until(lambda: selected_node(env, claim),
                        f"kube-scheduler writes {SELECTED_NODE} on claim {claim}",
                        alive=env.processes)
    objects.provision(claim, chosen)
    node = wait_until(lambda: bound_node(env, pod), f"pod {pod} bound to a node",
                      alive=env.processes)
    assert node == chosen
    return node


# -- the cases ------------------------------------------------------------------------------

def test_kube_scheduler_1_20_reads_the_v1beta1_config_and_refuses_v1(env: Env, tmp_path: Path) -> None:
    """The chart's config as 1.20 needs it passes 1.20's strict decoding (``--write-config-to``
    loads, validates and exits); the v1 one current clusters get is unknown to 1.20."""
    import subprocess

    from tests.integration.scheduler.realcluster import chart_scheduler_config

    port = free_port()
    beta = scheduler_config(kubeconfig=env.kubeconfig, scheduler_name=SCHEDULER_NAME,
                            extender_url=f"http://{HOST}:{env.extender_port}", health_port=port)
    v1 = chart_scheduler_config("v1")
    for name, config in (("v1beta1", beta), ("v1", v1)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    exe = str(BIN_DIR / "kube-scheduler")

    def check(name: str) -> int:
        return subprocess.run([exe, f"--config={tmp_path / f'{name}.yaml'}", "--secure-port=0",
                               f"--write-config-to={tmp_path / f'{name}.out.yaml'}"],
                              capture_output=True, timeout=60).returncode

    assert check("v1beta1") == 0
    written = yaml.safe_load((tmp_path / "v1beta1.out.yaml").read_text())
    # read back as 1.20 understood it (false values are omitted when written)
    assert written["extenders"] == [{k: v for k, v in beta["extenders"][0].items() if v is not False}]
    assert check("v1") != 0
    assert not (tmp_path / "v1.out.yaml").exists()


def test_hand_made_nodes_stay_ready_on_their_lease_heartbeat(env: Env) -> None:
    """No kubelet: the test's heartbeat renews each node's Lease (the node lifecycle
    controller's health signal) so the nodes outlive its 40 s grace period however slow
    the run."""
    names = list(env.nodes.values())

    def renewed() -> dict[str, str]:
        return {n: env.kube.get(LEASE, n, NODE_LEASE_NAMESPACE)["spec"]["renewTime"] for n in names}

    before = renewed()
    wait_until(lambda: all(now > before[n] for n, now in renewed().items()),
               "every node's Lease renewed")
    for name in names:
        node = env.kube.get(NODE, name)
        (ready,) = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready["status"] == "True"
        assert {t["key"] for t in node["spec"].get("taints") or []} == {TEST_TAINT}
    assert env.hand_made.last_error == ""


@pytest.mark.parametrize(("size", "why"), [("50Gi", "only big has room"),
                                           ("10Gi", "big has the most room left")])
def test_unbound_wffc_claim_goes_to_a_node_with_room(env: Env, objects: Objects, size: str,
                                                     why: str) -> None:
    claim = objects.claim("data", size)
    pod = objects.pod("app", [claim])
    assert schedule_with_provisioning(env, objects, claim, pod) == env.nodes["big"], why


@pytest.mark.parametrize(("copies", "primary"), [(["small"], None), (["mid", "small"], "small")],
                         ids=["one-node", "two-copies-primary-small"])
def test_claim_bound_to_a_node_pinned_volume_goes_to_that_node(
        env: Env, objects: Objects, copies: list[str], primary: str | None) -> None:
    """small has no room for 20 GiB, but a bound claim needs none: its data is there. With
    two copies kube-scheduler's own VolumeBinding passes both nodes; the extender's score
    (primary copy 10) picks small over mid, which has more headroom."""
    claim = objects.claim("data", "20Gi")
    # a PV pre-bound to the claim (claimRef with its uid), as a static or restored volume
    # is: kube-controller-manager binds the two at once. (A claim naming a PV that already
    # exists, spec.volumeName, binds just as well, but 1.20's PV controller loses a race
    # between its two workers about half the time and waits for its 15 s resync.)
    pv = objects.volume(objects.name("pv"), "20Gi", [env.nodes[c] for c in copies],
                        claim=claim, primary=env.nodes[primary] if primary else None)
    wait_until(lambda: claim_phase(env, claim) == "Bound", f"claim {claim} bound to {pv}")
    pod = objects.pod("app", [claim])
    assert wait_until(lambda: bound_node(env, pod), f"pod {pod} bound",
                      alive=env.processes) == env.nodes["small"]


def test_over_capacity_claim_stays_pending_with_the_extenders_reason(env: Env,
                                                                     objects: Objects) -> None:
    claim = objects.claim("huge", "500Gi")
    pod = objects.pod("app", [claim])
    message = wait_until(lambda: unschedulable_message(env, pod),
                         f"pod {pod} marked Unschedulable", alive=env.processes)
    assert f"claim {env.namespace}/{claim} (500.0GiB) does not fit" in message
    for size in POOLS_GIB:
        assert f"pool {env.pool(size)} has" in message, size
    assert bound_node(env, pod) is None
    assert selected_node(env, claim) is None


def test_extender_down_pods_still_schedule_by_kube_schedulers_own_rules(env: Env,
                                                                        objects: Objects) -> None:
    """ignorable: true. A 50 GiB claim on small (8 GiB pool) is what the extender refuses;
    with the extender stopped, the pod goes where kube-scheduler's own filters put it."""
    env.extender_expected = False
    env.extender.stop()
    try:
        assert not healthz(env.extender_port)
        claim = objects.claim("data", "50Gi")
        pod = objects.pod("app", [claim], on=env.nodes["small"])
        assert schedule_with_provisioning(env, objects, claim, pod) == env.nodes["small"]
    finally:
        env.extender.start()
        wait_until(lambda: healthz(env.extender_port), "the extender's /healthz again",
                   alive=[env.extender])
        env.extender_expected = True
