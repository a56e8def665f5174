"""Scheduler extender latency: filter + prioritize for a pod with 3 PVCs over 1,000 nodes.

The extender runs as its own process (``statehold scheduler-extender --cluster-file``) on
127.0.0.1, as kube-scheduler would reach it; this process plays kube-scheduler: one
keep-alive connection, the JSON it sends (full Pod; ``NodeNames`` as with
``nodeCacheCapable: true``), filter over 1,000 nodes, then prioritize over the nodes that
passed. One sample = filter + prioritize, end to end.

Baseline, same run: the same two calls for a pod without Statehold claims (pure HTTP +
JSON cost of the service). Also shown: the ``Nodes`` form (nodeCacheCapable false, full
Node objects on the wire). The ratio is p99 of the 3-PVC pod over the 20 ms goal.

    .venv/bin/python bench/extender.py [--samples 400]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.unit.scheduler import shapes  # noqa: E402  (builders of the real JSON shapes)

GiB = 1 << 30
NODES = 1000
GOAL_MS = 20.0


def cluster_objects(rng: random.Random) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [shapes.storage_class("statehold-local")]
    for i in range(NODES):
        cap = rng.choice([200, 500, 1000, 2000]) * GiB
        objs.append(shapes.storage_pool(f"node-{i:04d}-a", f"node-{i:04d}", cap,
                                        rng.randrange(0, cap), ratio=2))
    for name, size in (("data-pg-0", "200Gi"), ("wal-pg-0", "50Gi"), ("logs-pg-0", "20Gi")):
        objs.append(shapes.pvc(name, size, namespace="db"))
    return objs


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


class Scheduler:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, verb: str, body: bytes) -> Any:
        self.conn.request("POST", f"/{verb}", body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"{verb}: HTTP {r.status}: {data[:200]!r}")
        return json.loads(data)

    def cycle(self, pod: dict[str, Any], names: list[str], full_nodes: bool) -> float:
        t0 = time.perf_counter()
        out = self.post("filter", json.dumps(shapes.args(pod, names, full_nodes=full_nodes)).encode())
        if out["Error"]:
            raise SystemExit(f"filter error: {out['Error']}")
        passed = out["NodeNames"] if not full_nodes else [
            n["metadata"]["name"] for n in out["Nodes"]["items"]]
        self.passed = len(passed)
        self.post("prioritize", json.dumps(shapes.args(pod, passed, full_nodes=full_nodes)).encode())
        return (time.perf_counter() - t0) * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(s: Scheduler, pod: dict[str, Any], names: list[str], samples: int,
            full_nodes: bool = False, pid: int | None = None) -> tuple[float, float, float]:
    """p50 and p99 wall time of one cycle, and the extender's CPU time per cycle (ms):
    the wall time includes waiting for a CPU, the CPU time does not."""
    for _ in range(20):
        s.cycle(pod, names, full_nodes)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    times = [s.cycle(pod, names, full_nodes) for _ in range(samples)]
    cpu = (cpu_seconds(pid) - cpu0) * 1000 / samples if pid else 0.0
    return statistics.median(times), percentile(times, 0.99), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=400)
    a = ap.parse_args()
    rng = random.Random(42)
    load = os.getloadavg()[0]
    names = [f"node-{i:04d}" for i in range(NODES)]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Path(tmp) / "cluster.json"
        cluster.write_text(json.dumps(cluster_objects(rng)))
        exe = Path(sys.executable).with_name("statehold")
        proc = subprocess.Popen([str(exe), "scheduler-extender", "--listen", "127.0.0.1:0",
                                 "--cluster-file", str(cluster)],
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            m = re.search(r":(\d+)\s*$", proc.stderr.readline())
            if not m:
                raise SystemExit("extender did not start")
            s = Scheduler(int(m.group(1)))
            pod = shapes.pod("pg-0", ["data-pg-0", "wal-pg-0", "logs-pg-0"], namespace="db",
                             uid="bench-pod")
            plain = shapes.pod("web-0", [], namespace="db", uid="bench-plain")
            base50, base99, base_cpu = measure(s, plain, names, a.samples, pid=proc.pid)
            p50, p99, cpu = measure(s, pod, names, a.samples, pid=proc.pid)
            if not 500 < s.passed < NODES:  # sanity: the claims were really evaluated
                raise SystemExit(f"unexpected filter result: {s.passed} nodes passed")
            passed = s.passed
            f50, f99, _ = measure(s, pod, names, max(a.samples // 4, 50), full_nodes=True)
            s.conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            if proc.stderr is not None:
                proc.stderr.close()
    print(f"nodes={NODES} pvcs=3 samples={a.samples} (filter + prioritize, HTTP, NodeNames); "
          f"{passed} nodes pass the filter")
    print(f"load average at start: {load:.2f} on {os.cpu_count()} CPUs")
    print(f"baseline pod without statehold claims: p50={base50:.2f}ms p99={base99:.2f}ms "
          f"extender-cpu/cycle={base_cpu:.2f}ms")
    print(f"pod with 3 statehold PVCs:            p50={p50:.2f}ms p99={p99:.2f}ms "
          f"extender-cpu/cycle={cpu:.2f}ms (goal p99 < {GOAL_MS:.0f}ms)")
    print(f"same pod, full Node objects (nodeCacheCapable=false): p50={f50:.2f}ms "
          f"p99={f99:.2f}ms")
    print(f"ratio={p99 / GOAL_MS:.3f}")


if __name__ == "__main__":
    main()
