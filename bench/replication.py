"""Replication seed throughput between two nodes vs a plain TCP copy of the same bytes
(issue 12, benchmark (a); goal >= 0.8).

Two nodes as network namespaces on this host (``tests/fixtures/netns.py``: a veth pair
each to a bridge in a switch namespace), each with a file-backed XFS pool and its own
``statehold agent serve`` (real TCP, mutual TLS). On n1 a block volume of ``--size`` is
filled with random bytes (dense, so the seed and the baseline move exactly the same bytes).
Then, ``--runs`` times, alternating which goes first:

* **seed**: a fresh clone of that volume (reflink, same bytes) is made primary and
  ``statehold agent sync`` replicates it to n2, which has no copy: CopyStatus, CreateCopy,
  the point snapshot, the stream of every data range (BLAKE3 per 1 MiB extent, CRC per
  frame, gRPC over TLS), the replica's writes, fsync, commit (rename + point snapshot). Timed
  from the call to its answer;
* **tcp**: the same bytes (a fresh clone of the volume: its pages are not cached, like the
  seed's new point snapshot) sent from n1 to n2 over one plain TCP connection with
  ``sendfile`` (no TLS, no checksums, zero-copy on the sending side) into a file in n2's
  pool, fsynced before the receiver answers. Timed from connect to the receiver's answer.

Prints each pair and last ``ratio=<median of seed MiB/s / tcp MiB/s>``.

Usage: ``.venv/bin/python bench/replication.py [--size 1Gi] [--runs 3]``. Runs as root;
everything lives under its own directory in /var/tmp and is removed at the end (processes
killed by pid, loop devices detached by exact backing file, namespaces deleted by name).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' harness

from statehold.engine.names import parse_size
from tests.fixtures.netns import STATEHOLD, Cluster, wait_for
from tests.integration.agent.harness import Agents, MiB

RECEIVER = r"""
import os, socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 7500)); srv.listen(); open(sys.argv[3], "w").write("ready")
conn, _ = srv.accept()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
buf = bytearray(1 << 20); view = memoryview(buf)
while True:
    n = conn.recv_into(buf)
    if not n:
        break
    os.write(fd, view[:n])
os.fsync(fd); os.close(fd)
conn.sendall(b"ok"); conn.close()
"""

SENDER = r"""
import os, socket, sys, time
t0 = time.perf_counter()
s = socket.create_connection((sys.argv[1], 7500))
with open(sys.argv[2], "rb") as f:
    s.sendfile(f)
s.shutdown(socket.SHUT_WR)
assert s.recv(2) == b"ok"
print(time.perf_counter() - t0)
"""


def tcp_copy(agents: Agents, cluster: Cluster, run: int, size: int) -> float:
    """Seconds to copy a fresh clone of ``base`` (uncached, as the seed's point snapshot
    is) from n1 into n2's pool over plain TCP, fsynced."""
    n1, n2 = cluster.nodes
    clone = f"tcp{run}"
    cluster.statehold(n1, "volume", "create", clone, "--from-volume", "base", "--size", str(size),
                      "--mode", "block", "--home", str(n1.home))
    source = agents.volume_file(n1, clone)
    target = n2.home / "pools" / n2.pool / f"tcp-{run}.img"
    ready = n2.home.parent / f"tcp-ready-{run}"
    receiver = cluster.spawn(n2, [sys.executable, "-c", RECEIVER, n2.ip, str(target), str(ready)])
    wait_for(ready.exists, 30, "the TCP receiver")
    done = cluster.run(n1, [sys.executable, "-c", SENDER, n2.ip, str(source)], timeout=1800)
    receiver.wait(60)
    target.unlink()
    return float(done.stdout.strip())


def seed(agents: Agents, cluster: Cluster, run: int, size: int) -> float:
    """Seconds for a seed of a fresh clone of ``base`` from n1 to n2."""
    n1, n2 = cluster.nodes
    volume = f"db{run}"
    cluster.statehold(n1, "volume", "create", volume, "--from-volume", "base", "--size", str(size),
                      "--mode", "block", "--home", str(n1.home))
    ref = f"{n1.pool}/{volume}"
    agents.ask(n1, "replicas", ref, f"{n2.name}@{agents.address(n2)}")
    agents.ask(n1, "promote", ref, "--epoch", "1")
    t0 = time.perf_counter()
    reply = agents.ask(n1, "sync", ref, timeout=1800)[1]
    elapsed = time.perf_counter() - t0
    assert not reply["replicas"][0]["last_error"], reply
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1Gi")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)
    root = Path(tempfile.mkdtemp(prefix="statehold-bench-repl-", dir="/var/tmp"))
    image = max(4 * size * (args.runs + 1), 8 << 30)
    try:
        with Cluster(root / "cluster", 2, image_size=str(image)) as cluster:
            agents = Agents(cluster, root / "ca")
            n1, n2 = cluster.nodes
            cluster.statehold(n1, "volume", "create", "base", "--size", str(size), "--mode", "block",
                              "--home", str(n1.home))
            base = agents.volume_file(n1, "base")
            with open(base, "r+b") as f:
                for _ in range(size // MiB):
                    f.write(os.urandom(MiB))
                f.flush()
                os.fsync(f.fileno())
            agents.start(n1)
            agents.start(n2)
            mib = size / MiB
            ratios = []
            for run in range(args.runs):
                if run % 2 == 0:
                    s, t = seed(agents, cluster, run, size), tcp_copy(agents, cluster, run, size)
                else:
                    t, s = tcp_copy(agents, cluster, run, size), seed(agents, cluster, run, size)
                ratios.append((mib / s) / (mib / t))
                print(f"run {run}: seed {mib / s:.0f} MiB/s ({s:.2f} s), tcp {mib / t:.0f} MiB/s "
                      f"({t:.2f} s), seed/tcp {ratios[-1]:.2f}, load {os.getloadavg()[0]:.1f}",
                      flush=True)
            print(f"bytes per run: {size} ({mib:.0f} MiB); {STATEHOLD} agent sync vs sendfile")
            print(f"ratio={statistics.median(ratios):.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
