"""Helpers for test_real_scheduler.py: the extender under a real kube-scheduler v1.20.2.

* :func:`scheduler_config`: the chart's KubeSchedulerConfiguration rendered as v1beta1 (the
  only version 1.20 reads), with only what a test run must change: its own scheduler name,
  the kubeconfig, no leader election, the extender's local URL, a loopback health port.
* :class:`Process`: a server started in its own session, stopped by its pid, log kept.
* :class:`HandMadeNodes`: Ready Node objects without a kubelet, kept alive by a heartbeat
  thread (their Lease in ``kube-node-lease`` and the Ready condition's heartbeat time), so
  the node lifecycle controller never marks them unreachable.
* :func:`install_crds`, :func:`wait_until`, :func:`force_delete_pod`.

Every wait is on a condition with a deadline; none sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import yaml

from statehold.errors import NotFound, StateholdError
from statehold.kube.facade import Kube
from statehold.kube.kinds import LEASE, NODE
from tests.unit.kube.validation import render

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
WAIT = 90.0
"""Deadline of one wait (seconds): generous, the host's 2 cores are shared."""
HEARTBEAT = 5.0
"""Seconds between heartbeats: the node lifecycle controller allows 40 s without one."""
LEASE_SECONDS = 40
TEST_TAINT = "statehold.io/scheduler-test"
"""Taint (and label) of the hand-made nodes: only our pods tolerate it and select it."""
NODE_LEASE_NAMESPACE = "kube-node-lease"

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], what: str, *, timeout: float = WAIT,
               alive: Sequence[Process] = ()) -> T:
    """Poll check() until it returns something other than None/False; fail after the
    deadline (or as soon as one of the ``alive`` processes exits) naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None and got is not False:
            return got
        for p in alive:
            if not p.running():
                raise AssertionError(f"{p.name} exited while waiting for {what}:\n{p.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def api_client(kubeconfig: Path) -> Any:
    """The official client for what the facade does not cover (CRDs, forced deletes)."""
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


# -- processes ------------------------------------------------------------------------------

@dataclass
class Process:
    """One server process: started in its own session, stopped by its pid (SIGTERM, then
    SIGKILL), restartable; every start appends to the same log."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def healthz(port: int) -> bool:
    """True when GET /healthz on 127.0.0.1:port answers ok (plain HTTP)."""
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=3)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read() == b"ok"
    except OSError:
        return False
    finally:
        conn.close()


def extender_args(listen: str) -> list[str]:
    """The chart Deployment's extender arguments, listening on ``listen`` instead."""
    docs = render.render_chart({"schedulerExtender": {"enabled": True}})
    (dep,) = [d for d in docs if d["kind"] == "Deployment"
              and d["metadata"]["name"] == "statehold-scheduler-extender"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return [f"--listen={listen}" if a.startswith("--listen=") else a for a in container["args"]]


def chart_scheduler_config(version: str) -> dict[str, Any]:
    """The KubeSchedulerConfiguration the chart's ConfigMap carries for that version."""
    docs = render.render_chart({"schedulerExtender": {"enabled": True,
                                                      "schedulerConfigVersion": version}})
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"
             and d["metadata"]["name"] == "statehold-scheduler-config"]
    config: dict[str, Any] = yaml.safe_load(cm["data"]["kube-scheduler-config.yaml"])
    return config


def scheduler_config(*, kubeconfig: Path, scheduler_name: str, extender_url: str,
                     health_port: int) -> dict[str, Any]:
    """The chart's v1beta1 configuration, changed only where a test run must differ: a
    second scheduler beside the session's (own profile name, no leader election), the
    admin kubeconfig, the extender on 127.0.0.1, a free loopback port for /healthz."""
    config = chart_scheduler_config("v1beta1")
    config["clientConnection"]["kubeconfig"] = str(kubeconfig)
    config["leaderElection"] = {"leaderElect": False}
    config["profiles"] = [{"schedulerName": scheduler_name}]
    config["healthzBindAddress"] = config["metricsBindAddress"] = f"{HOST}:{health_port}"
    (extender,) = config["extenders"]
    extender["urlPrefix"] = extender_url
    return config


# -- cluster objects ------------------------------------------------------------------------

def install_crds(kubeconfig: Path) -> None:
    """Create every Statehold CRD that is not there yet, and wait until each is served.
    CRDs another test installed are left as they are; none is deleted afterwards (the
    session's cluster is thrown away whole)."""
    from statehold.controller.crds import all_crds

    ext = kubernetes.client.ApiextensionsV1Api(api_client(kubeconfig))
    names = []
    for crd in all_crds():
        names.append(crd["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(crd)
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                raise

    def established() -> bool:
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                return False
        return True

    wait_until(established, "the Statehold CRDs established")


def force_delete_pod(kubeconfig: Path, name: str, namespace: str) -> None:
    """Delete at once: no kubelet will ever confirm a graceful deletion of a bound pod."""
    core = kubernetes.client.CoreV1Api(api_client(kubeconfig))
    with contextlib.suppress(kubernetes.client.ApiException):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class HandMadeNodes:
    """Ready Nodes with no kubelet behind them.

    Each carries ``kubernetes.io/hostname`` and ``topology.statehold.io/node`` (its name), the
    label and NoSchedule taint :data:`TEST_TAINT` = ``run`` (so other tests' pods stay off
    and ours select only these), allocatable CPU, memory and pods. A heartbeat thread
    renews each node's Lease and the Ready condition's ``lastHeartbeatTime`` every
    :data:`HEARTBEAT` seconds, as a kubelet does.
    """

    kube: Kube
    names: tuple[str, ...]
    run: str
    beats: int = field(default=0, init=False)
    last_error: str = field(default="", init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _since: str = field(default_factory=lambda: _time(_now()), init=False)

    def _conditions(self, now: dt.datetime) -> list[dict[str, Any]]:
        beat = _time(now)
        return [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "hand-made node (statehold scheduler test)",
                 "lastHeartbeatTime": beat, "lastTransitionTime": self._since}]

    def _node(self, name: str) -> dict[str, Any]:
        resources = {"cpu": "64", "memory": "256Gi", "pods": "110"}
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "topology.statehold.io/node": name, TEST_TAINT: self.run}},
                "spec": {"taints": [{"key": TEST_TAINT, "value": self.run,
                                     "effect": "NoSchedule"}]},
                # a Node's status may be set on create (no kubelet will post one)
                "status": {"capacity": resources, "allocatable": resources,
                           "conditions": self._conditions(_now()),
                           "addresses": [{"type": "Hostname", "address": name}]}}

    def start(self) -> None:
        for name in self.names:
            node = self.kube.create(self._node(name))
            now = _now()
            self.kube.create({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE,
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                                  "name": name,
                                                  "uid": node["metadata"]["uid"]}]},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                         "acquireTime": _micro_time(now), "renewTime": _micro_time(now)}})
        self._thread = threading.Thread(target=self._beat, name="node-heartbeat", daemon=True)
        self._thread.start()
        wait_until(self._all_schedulable, f"nodes {', '.join(self.names)} Ready and untainted")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            now = _now()
            for name in self.names:
                try:
                    self.kube.patch(LEASE, name, {"spec": {"renewTime": _micro_time(now)}},
                                    NODE_LEASE_NAMESPACE)
                    self.kube.patch_status(NODE, name, {"conditions": self._conditions(now)})
                except StateholdError as exc:  # an API hiccup: the next beat retries
                    self.last_error = f"{name}: {exc}"
                    log.warning("event=heartbeat_failed node=%s error=%s", name, exc)
            self.beats += 1

    def _all_schedulable(self) -> bool:
        """Ready=True and none of the lifecycle controller's taints (the TaintNodesByCondition
        admission plugin puts not-ready on every new Node; the controller lifts it)."""
        for name in self.names:
            node = self.kube.get(NODE, name)
            ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
            taints = {t["key"] for t in node["spec"].get("taints") or []}
            if not ready or ready[0]["status"] != "True" or taints - {TEST_TAINT}:
                return False
        return True

    def stop(self) -> None:
        """Stop the heartbeat, then delete the Nodes (their Leases go with them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for name in self.names:
            with contextlib.suppress(NotFound):
                self.kube.delete(NODE, name)
            with contextlib.suppress(NotFound):
                self.kube.delete(LEASE, name, NODE_LEASE_NAMESPACE)


@contextlib.contextmanager
def hand_made_nodes(kube: Kube, names: Sequence[str], run: str) -> Iterator[HandMadeNodes]:
    nodes = HandMadeNodes(kube, tuple(names), run)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def venv_bin(name: str) -> str:
    """An executable of this virtualenv (``statehold``), beside the running interpreter."""
    import sys

    path = Path(sys.executable).with_name(name)
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{path} is missing: is the package installed in this venv?")
    return str(path)
