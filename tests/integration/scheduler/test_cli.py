"""`statehold scheduler-extender` as a process: serves, answers, stops on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from statehold.scheduler.core import GiB
from tests.unit.scheduler import shapes


def _deployment_args() -> list[str]:
    """The args of the shipped Deployment, with --listen moved to a free local port."""
    root = Path(__file__).resolve().parents[3]
    docs = yaml.safe_load_all((root / "deploy/scheduler/extender/extender.yaml").read_text())
    (deploy,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return [("--listen=127.0.0.1:0" if a.startswith("--listen=") else a)
            for a in container["args"]]


def test_command_serves_filter_from_a_cluster_file(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump_all([
        shapes.storage_class("statehold-local"),
        shapes.pvc("data-pg-0", "10Gi"),
        {"apiVersion": "v1", "kind": "List", "items": [
            shapes.storage_pool("n0-a", "n0", 5 * GiB, 0, ratio=1),
            shapes.storage_pool("n1-a", "n1", 50 * GiB, 0, ratio=1)]},
    ]))
    exe = Path(sys.executable).with_name("statehold")
    # exactly the flags the Deployment passes, plus a cluster file instead of a cluster
    proc = subprocess.Popen([str(exe), *_deployment_args(), "--cluster-file", str(cluster)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok"
        body = json.dumps(shapes.args(shapes.pod("pg-0", ["data-pg-0"]), ["n0", "n1"]))
        conn.request("POST", "/filter", body, {"Content-Type": "application/json"})
        out = json.loads(conn.getresponse().read())
        assert out["NodeNames"] == ["n1"]
        assert "does not fit" in out["FailedAndUnresolvableNodes"]["n0"]
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_bad_listen_address_exits_non_zero() -> None:
    exe = Path(sys.executable).with_name("statehold")
    r = subprocess.run([str(exe), "scheduler-extender", "--listen", "nonsense"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2  # InvalidArgument, by the CLI's one exit-code table
    assert "--listen must be HOST:PORT" in r.stderr
