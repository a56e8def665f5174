"""Replication between two nodes (issue 12): (a) seed throughput vs a plain TCP copy of the
same bytes (goal >= 0.8), (b) bytes sent to resync after k % of a volume changed vs the bytes
changed (goal <= 1.1), (c) replication lag p99 under pgbench vs the RPO (goal <= 1).

Two nodes as network namespaces on this host (``tests/fixtures/netns.py``: a veth pair each
to a bridge in a switch namespace), each with a file-backed XFS pool and its own
``statehold agent serve`` (real TCP, mutual TLS). A *driver* process in n1's namespace
holds one gRPC client (controller certificate) and times ``Sync`` calls and samples
``CopyStatus``, so no CLI start-up is timed.

**(a)** A block volume of ``--size`` on n1 is filled with random bytes (dense: every variant
moves exactly the same bytes). ``--runs`` times, the order rotating:

* *seed*: a fresh reflink clone of it is made primary and synced to n2, which has no copy
  (CopyStatus, CreateCopy, the point snapshot, every data range as extents with BLAKE3 and
  CRC over gRPC and TLS, the replica's writes with a durable checkpoint every 64 MiB, fsync,
  commit). Timed around the Sync call;
* *tcp*: the bytes of a fresh clone (uncached, like the seed's new point snapshot) sent from
  n1 to n2 over one plain TCP connection with ``sendfile`` into a file in n2's pool, fsynced
  before the receiver answers. Timed from connect to the answer;
* *tls*: the same over mutual TLS (Python ``ssl``, the nodes' agent certificates), 1 MiB
  reads: what encryption alone costs, to tell it apart from the rest.

CPU seconds of both ends are reported for each. ``ratio_a`` = median of seed/tcp throughput.

**(b)** A block volume of ``--size`` on n1, filled with random bytes, is seeded to n2. Then,
for each k of ``--changes``, k % of it is rewritten with random bytes in 64 KiB writes at
distinct random 64 KiB-aligned offsets, and one sync runs. Counted: the stream's bytes (the
encoded frames the primary's agent handed to gRPC: ``sent_bytes``) and the bytes n1's
``eth0`` transmitted (TCP/IP, TLS and HTTP/2 included), each over the bytes changed.
``ratio_b`` = the largest wire ratio.

**(c)** A 2 GiB XFS volume on n1, mounted, holds a PostgreSQL cluster (Debian's binaries,
as the ``postgres`` user, unix socket only) initialised with ``pgbench -i -s --scale``. For
each RPO of ``--rpo``, n1's agent runs its replication loop every ``RPO / 3`` seconds (the
chart's shipped proportion: ``intervalSeconds: 5`` for the default ``rpo: 15s``) while
``pgbench -c 4 -j 2 -T <--pgbench-seconds>`` runs; the replica's lag (age of the newest point
it acknowledged, from the primary's CopyStatus) is sampled every ``--cadence`` seconds.
``ratio_c`` = the largest lag p99 / RPO.

The last line is ``ratio=<ratio_c>`` (the issue's final ratio) when (c) ran, else the ratio
of the last part that ran. Usage::

    .venv/bin/python bench/replication.py [--only a,b,c] [--size 1Gi] [--runs 5]
        [--changes 1,5,20] [--rpo 5,15] [--pgbench-seconds 60]

Runs as root; everything lives under its own directory in /var/tmp and is removed at the
end, even on Ctrl-C or SIGTERM: PostgreSQL stopped (its postmaster killed by pid if it does
not stop), processes killed by pid, mounts and loop devices released by exact path,
namespaces deleted by name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' harness

from pgcluster import Postgres

from statehold.engine.names import parse_size
from tests.fixtures.netns import Cluster, NetNode, wait_for
from tests.integration.agent.harness import Agents, MiB

KiB = 1024
WRITE = 64 * KiB

DRIVER = r"""
import json, sys, time
from pathlib import Path
from statehold.agent import pki
from statehold.agent.client import AgentClient
from statehold.agent.copies import VolumeRef

client = AgentClient(sys.argv[1], pki.load_bundle(Path(sys.argv[2])), timeout=60)
print(json.dumps({"ready": True}), flush=True)

def replicas(rs):
    return [{"node": r.node, "point": r.point, "lag": r.lag_seconds, "sent": r.sent_bytes,
             "error": r.last_error} for r in rs]

for line in sys.stdin:
    cmd = json.loads(line)
    ref = VolumeRef.parse(cmd["volume"])
    if cmd["op"] == "sync":
        t0 = time.perf_counter()
        rs = client.sync(ref)
        out = {"seconds": time.perf_counter() - t0, "replicas": replicas(rs)}
    elif cmd["op"] == "status":
        out = {"replicas": replicas(client.copy_status(ref).replicas)}
    else:  # sample: the first replica's lag every cadence seconds, for seconds
        lags, start, n = [], time.monotonic(), 0
        while time.monotonic() - start < cmd["seconds"]:
            r = client.copy_status(ref).replicas[0]
            lags.append(r.lag_seconds if r.point else None)
            n += 1
            time.sleep(max(0.0, start + n * cmd["cadence"] - time.monotonic()))
        out = {"lags": lags}
    print(json.dumps(out), flush=True)
"""

RECEIVER = r"""
import os, socket, ssl, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 7500)); srv.listen(); open(sys.argv[3], "w").write("ready")
conn, _ = srv.accept()
if sys.argv[4]:  # certs directory: mutual TLS
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{sys.argv[4]}/tls.crt", f"{sys.argv[4]}/tls.key")
    ctx.load_verify_locations(f"{sys.argv[4]}/ca.crt"); ctx.verify_mode = ssl.CERT_REQUIRED
    conn = ctx.wrap_socket(conn, server_side=True)
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
buf = bytearray(1 << 20); view = memoryview(buf)
head = b""
while len(head) < 8:
    head += conn.recv(8 - len(head))
left = int.from_bytes(head, "big")
while left:
    n = conn.recv_into(buf, min(left, len(buf)))
    if not n:
        raise SystemExit("the sender stopped early")
    os.write(fd, view[:n])
    left -= n
os.fsync(fd); os.close(fd)
conn.sendall(f"{time.process_time():9.3f}".encode())
"""

SENDER = r"""
import json, os, socket, ssl, sys, time
t0 = time.perf_counter()
s = socket.create_connection((sys.argv[1], 7500))
if sys.argv[3]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False
    ctx.load_cert_chain(f"{sys.argv[3]}/tls.crt", f"{sys.argv[3]}/tls.key")
    ctx.load_verify_locations(f"{sys.argv[3]}/ca.crt")
    s = ctx.wrap_socket(s)
with open(sys.argv[2], "rb", buffering=0) as f:
    s.sendall(os.fstat(f.fileno()).st_size.to_bytes(8, "big"))
    if sys.argv[3]:  # no sendfile through TLS: 1 MiB reads
        buf = bytearray(1 << 20); view = memoryview(buf)
        while n := f.readinto(buf):
            s.sendall(view[:n])
    else:
        s.sendfile(f)
answer = b""
while len(answer) < 9:
    answer += s.recv(9 - len(answer))
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time(),
                  "peer_cpu": float(answer)}))
"""


class Driver:
    """The driver process in a node's namespace: one JSON line in, one out."""

    def __init__(self, cluster: Cluster, agents: Agents, node: NetNode) -> None:
        argv = cluster.argv_in(node, [sys.executable, "-c", DRIVER, agents.address(node),
                                      str(agents.controller_certs)])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        node.procs.append(self.proc)  # type: ignore[arg-type]  # killed by pid at teardown
        assert json.loads(self._line())["ready"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the driver process ended (see its stderr above)")
        return line

    def ask(self, op: str, volume: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "volume": volume, **kw}) + "\n")
        self.proc.stdin.flush()
        out: dict[str, Any] = json.loads(self._line())
        return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tx_bytes(node: NetNode) -> int:
    """Bytes the node's eth0 has transmitted (its namespace's counters)."""
    out = subprocess.run(["ip", "-n", node.netns, "-s", "-j", "link", "show", "eth0"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the smallest sample with at least q % of the
    samples at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fill_random(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())


class Bench:
    def __init__(self, cluster: Cluster, agents: Agents, args: argparse.Namespace) -> None:
        self.cluster, self.agents, self.args = cluster, agents, args
        self.n1, self.n2 = cluster.nodes
        self.size: int = parse_size(args.size)
        self.driver: Driver | None = None

    def volume(self, name: str, *more: str, size: int | None = None) -> str:
        self.cluster.statehold(self.n1, "volume", "create", name, "--size", str(size or self.size),
                               *more, "--home", str(self.n1.home))
        return f"{self.n1.pool}/{name}"

    def start_agent(self, node: NetNode, interval: float = 0) -> None:
        self.agents.start(node, interval=interval)

    def stop_agent(self, node: NetNode) -> None:
        """SIGTERM the node's agent (by pid) and wait for it: a clean stop between phases."""
        proc = self.agents.procs.pop(node.name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            self.cluster.kill(proc)

    def make_primary(self, ref: str) -> None:
        self.agents.ask(self.n1, "replicas", ref, f"{self.n2.name}@{self.agents.address(self.n2)}")
        self.agents.ask(self.n1, "promote", ref, "--epoch", "1")

    def sync(self, ref: str) -> dict[str, Any]:
        assert self.driver is not None
        reply = self.driver.ask("sync", ref)
        error = reply["replicas"][0]["error"]
        if error:
            raise RuntimeError(f"sync of {ref} failed: {error}")
        return reply

    # -- (a) ---------------------------------------------------------------------------------
    def seed(self, run: int) -> tuple[float, float]:
        """(seconds, CPU seconds of both agents) of a seed of a fresh clone of ``base``."""
        ref = self.volume(f"db{run}", "--from-volume", "base", "--mode", "block")
        self.make_primary(ref)
        pids = [self.agents.procs[n.name].pid for n in (self.n1, self.n2)]
        cpu = sum(cpu_seconds(p) for p in pids)
        seconds = self.sync(ref)["seconds"]
        return seconds, sum(cpu_seconds(p) for p in pids) - cpu

    def copy(self, run: int, tls: bool) -> tuple[float, float]:
        """(seconds, CPU seconds of both ends) of a plain copy of a fresh clone of ``base``
        into n2's pool, over TCP or mutual TLS, fsynced."""
        kind = "tls" if tls else "tcp"
        self.volume(f"{kind}{run}", "--from-volume", "base", "--mode", "block")
        source = self.agents.volume_file(self.n1, f"{kind}{run}")
        target = self.n2.home / "pools" / self.n2.pool / f"{kind}-{run}.img"
        certs = (str(self.agents.certs(self.n2)), str(self.agents.certs(self.n1))) if tls else ("", "")
        ready = self.n2.home.parent / f"{kind}-ready-{run}"
        receiver = self.cluster.spawn(self.n2, [sys.executable, "-c", RECEIVER, self.n2.ip,
                                                str(target), str(ready), certs[0]])
        try:
            wait_for(ready.exists, 60, f"the {kind} receiver")
            done = self.cluster.run(self.n1, [sys.executable, "-c", SENDER, self.n2.ip,
                                              str(source), certs[1]], timeout=1800)
            result = json.loads(done.stdout)
            receiver.wait(60)
        finally:
            self.cluster.kill(receiver)
            target.unlink(missing_ok=True)
        return result["seconds"], result["cpu"] + result["peer_cpu"]

    def part_a(self) -> float:
        print(f"== (a) seed vs plain copies, {self.size // MiB} MiB of random bytes, "
              f"{self.args.runs} runs", flush=True)
        self.volume("base", "--mode", "block")
        fill_random(self.agents.volume_file(self.n1, "base"), self.size)
        mib = self.size / MiB
        ratios: list[float] = []
        for run in range(self.args.runs):
            order = ["seed", "tcp", "tls"]
            order = order[run % 3:] + order[:run % 3]
            got: dict[str, tuple[float, float]] = {}
            for kind in order:
                got[kind] = self.seed(run) if kind == "seed" else self.copy(run, kind == "tls")
            (s, s_cpu), (t, t_cpu), (e, e_cpu) = got["seed"], got["tcp"], got["tls"]
            ratios.append(t / s)
            print(f"run {run}: seed {mib / s:4.0f} MiB/s ({s:5.2f} s, cpu {s_cpu:4.1f} s), "
                  f"tcp {mib / t:4.0f} MiB/s ({t:5.2f} s, cpu {t_cpu:4.1f} s), "
                  f"tls {mib / e:4.0f} MiB/s ({e:5.2f} s, cpu {e_cpu:4.1f} s), "
                  f"seed/tcp {t / s:.2f}, seed/tls {e / s:.2f}, load {os.getloadavg()[0]:.1f}",
                  flush=True)
        ratio = statistics.median(ratios)
        print(f"(a) ratio_a={ratio:.2f} (median seed/tcp; goal >= 0.8: "
              f"{'met' if ratio >= 0.8 else 'not met'})", flush=True)
        return ratio

    # -- (b) ---------------------------------------------------------------------------------
    def part_b(self) -> float:
        changes = [float(k) for k in self.args.changes.split(",")]
        print(f"== (b) resync after k % changed in 64 KiB writes, {self.size // MiB} MiB volume",
              flush=True)
        ref = self.volume("rs", "--mode", "block")
        path = self.agents.volume_file(self.n1, "rs")
        fill_random(path, self.size)
        self.make_primary(ref)
        self.sync(ref)  # the seed
        rng = random.Random(12)
        slots = self.size // WRITE
        worst = 0.0
        for k in changes:
            count = round(slots * k / 100)
            fd = os.open(path, os.O_WRONLY)
            try:
                for slot in rng.sample(range(slots), count):
                    os.pwrite(fd, rng.randbytes(WRITE), slot * WRITE)
                os.fsync(fd)
            finally:
                os.close(fd)
            changed = count * WRITE
            sent0, tx0 = self.status_sent(ref), tx_bytes(self.n1)
            seconds = self.sync(ref)["seconds"]
            sent, tx = self.status_sent(ref) - sent0, tx_bytes(self.n1) - tx0
            worst = max(worst, tx / changed)
            print(f"k={k:g}%: changed {changed / MiB:7.1f} MiB in {count} writes, stream "
                  f"{sent / MiB:7.1f} MiB ({sent / changed:.3f}), wire {tx / MiB:7.1f} MiB "
                  f"({tx / changed:.3f}), sync {seconds:.2f} s, load {os.getloadavg()[0]:.1f}",
                  flush=True)
        print(f"(b) ratio_b={worst:.3f} (largest wire bytes / changed bytes; goal <= 1.1: "
              f"{'met' if worst <= 1.1 else 'not met'})", flush=True)
        return worst

    def status_sent(self, ref: str) -> int:
        assert self.driver is not None
        return int(self.driver.ask("status", ref)["replicas"][0]["sent"])

    # -- (c) ---------------------------------------------------------------------------------
    def part_c(self, pg: Postgres) -> float:
        rpos = [float(r) for r in self.args.rpo.split(",")]
        seconds = self.args.pgbench_seconds
        print(f"== (c) lag under pgbench (-s {self.args.scale}, -c 4, {seconds} s) per RPO, "
              f"loop interval RPO/3, sampled every {self.args.cadence} s", flush=True)
        ref = self.volume("pg", "--mode", "filesystem", "--fs", "xfs", size=2 << 30)
        mnt = self.n1.home / "mnt" / "pg"
        self.cluster.statehold(self.n1, "volume", "mount", "pg", str(mnt), "--home",
                               str(self.n1.home))
        pg.setup(mnt)
        pg.pgbench("-i", "-q", "-s", str(self.args.scale)).communicate(timeout=1800)
        self.make_primary(ref)
        self.sync(ref)  # the seed, before any timed loop
        driver = self.driver
        assert driver is not None
        worst = 0.0
        for rpo in rpos:
            self.stop_agent(self.n1)
            log = self.n1.home.parent / "agent.log"
            logged = log.stat().st_size if log.exists() else 0
            self.start_agent(self.n1, interval=rpo / 3)
            # this agent's first point acknowledged: from now on the lag is measured
            wait_for(lambda: driver.ask("status", ref)["replicas"][0]["point"], 120,
                     "a first point acknowledged")
            load = pg.pgbench("-c", "4", "-j", "2", "-T", str(seconds))
            try:
                lags = driver.ask("sample", ref, cadence=self.args.cadence, seconds=seconds)["lags"]
                out, err = load.communicate(timeout=seconds + 120)
            finally:
                if load.poll() is None:
                    self.cluster.kill(load)  # type: ignore[arg-type]
            if load.returncode != 0:
                raise RuntimeError(f"pgbench failed: {err[-2000:]}")
            with open(log, "rb") as f:  # the syncs of this phase: how long each took
                f.seek(logged)
                syncs = [int(m) / 1000 for m in re.findall(rb"replicated volume=\S+/pg .* ms=(\d+)",
                                                           f.read())]
            tps = next((ln.split("=")[1].split()[0] for ln in out.splitlines()
                        if ln.startswith("tps")), "?")
            samples = [x for x in lags if x is not None]
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            worst = max(worst, p99 / rpo)
            print(f"rpo {rpo:g} s (interval {rpo / 3:.2f} s): {len(samples)} samples, lag p50 "
                  f"{p50:.2f} s, p99 {p99:.2f} s, max {max(samples):.2f} s, p99/rpo "
                  f"{p99 / rpo:.2f}; {len(syncs)} syncs, p50 {percentile(syncs, 50):.2f} s, max "
                  f"{max(syncs):.2f} s; pgbench {float(tps):.0f} tps, load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
        print(f"(c) ratio_c={worst:.2f} (largest lag p99 / rpo; goal <= 1: "
              f"{'met' if worst <= 1 else 'not met'})", flush=True)
        return worst


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so the same clean-up runs as for Ctrl-C."""
    def handler(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="a,b,c", help="parts to run: a, b, c (comma separated)")
    parser.add_argument("--size", default="1Gi", help="volume size for (a) and (b)")
    parser.add_argument("--runs", type=int, default=5, help="(a): runs of each variant")
    parser.add_argument("--changes", default="1,5,20", help="(b): percentages changed")
    parser.add_argument("--rpo", default="5,15", help="(c): RPOs in seconds")
    parser.add_argument("--pgbench-seconds", type=int, default=60)
    parser.add_argument("--scale", type=int, default=10, help="(c): pgbench scale")
    parser.add_argument("--cadence", type=float, default=0.25, help="(c): lag sampling period (s)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if not parts or set(parts) - {"a", "b", "c"}:
        parser.error("--only takes a comma-separated subset of a, b, c")
    size = parse_size(args.size)
    root = Path(tempfile.mkdtemp(prefix="statehold-bench-repl-", dir="/var/tmp"))
    image = max(3 * size * (args.runs + 3), 16 << 30)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}: {' '.join(sys.argv)}", flush=True)
    pg = Postgres(root)
    ratio = None
    try:
        with terminated_as_interrupt(), Cluster(root / "cluster", 2, image_size=str(image)) as cluster:
            agents = Agents(cluster, root / "ca")
            bench = Bench(cluster, agents, args)
            try:
                for node in cluster.nodes:
                    bench.start_agent(node)
                bench.driver = Driver(cluster, agents, bench.n1)
                for part in sorted(parts):
                    ratio = (bench.part_a() if part == "a" else bench.part_b() if part == "b"
                             else bench.part_c(pg))
            finally:
                pg.close()  # before the cluster's teardown unmounts its volume
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
