"""Per-volume I/O limits: fio against volumes limited by Statehold, versus the limits.

Everything runs on one file-backed pool in this run's own home, each fio in a cgroup of
this run's own (a "scope" in the hierarchy that holds the block controller: cgroup v1
``blkio`` on a host that mounts it, else v2 ``io``), and the rules are written by the
engine's ``Throttle`` exactly as the CSI node plugin writes them. Volumes are xfs, mounted
here; fio does direct I/O to a preallocated file (psync, one I/O at a time, unless said).

1. **Limits**: volume ``limited`` has 500 write IOPS and 20 MiB/s. 4k random writes at
   iodepth 4 in one cgroup (IOPS binds; enough I/O in flight that the device's own latency
   never holds it under the limit), then 1 MiB sequential writes (bandwidth binds); then the
   same two in two cgroups at once (the limit is for the volume, together). A 4k writer at
   iodepth 1 is printed too, not counted: it measures the host's latency, not the limit.
2. **Neighbour**: 4k random writes (iodepth 16, libaio) to an unlimited volume alone, then
   beside a throttled fio on ``limited``; alternating pairs, median of the pair ratios.
3. **Latency**: a "database" (4k random writes at 200 IOPS, qd1, on a volume limited to 500
   write IOPS) alone, beside a "batch" volume writing 1 MiB blocks flat out (libaio, qd 16),
   and beside the same batch capped at 20 MiB/s; p99 completion latency of the database.

Prints every measurement; last line ``ratio=<max(|measured/limit - 1|) / 0.1>`` over the
limit measurements of part 1 (goal: <= 1, every measurement within 10 % of its limit).

Usage: ``.venv/bin/python bench/qos.py [--runtime 10] [--pairs 5]``, as root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchhome import cleanup

from statehold.engine import throttle
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.qos import Limits
from statehold.engine.throttle import Hierarchy, Throttle
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, VolumeMode

LIMITED = Limits(write_iops=500, write_bps=20 * MiB)
DB = Limits(write_iops=500)
BATCH_CAP = Limits(write_bps=20 * MiB)
FILE_SIZE = 256 * MiB


class Scope:
    """This run's cgroups; processes started in them join before they are told to go."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hierarchy = hierarchy
        self.path = hierarchy.root / f"statehold-bench-qos-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        self.children: list[Path] = []
        self.procs: list[subprocess.Popen[str]] = []

    def child(self) -> Path:
        path = self.path / f"c{len(self.children)}"
        path.mkdir()
        self.children.append(path)
        return path

    def hold(self, cgroup: Path, argv: Sequence[str], hide: Sequence[Path]) -> subprocess.Popen[str]:
        """``argv`` in ``cgroup`` and in a mount namespace of its own without the ``hide``
        mounts (a pod sees only its own volumes; on cgroup v1 that is how the engine finds
        which cgroups use a volume)."""
        inner = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'for m in "$@"; do umount -l "$m" || exit 1; done; echo joined && read go && exec '
                 + shlex.join(argv), "sh", *map(str, hide)]
        proc = subprocess.Popen(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup),
                                 *inner], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "joined\n", proc.args
        return proc

    def empty(self) -> None:
        """Remove the children (their processes have exited or are killed first)."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.procs.clear()
        for cgroup in reversed(self.children):
            for pid in throttle.procs(cgroup):
                with contextlib.suppress(OSError):
                    (self.hierarchy.root / "cgroup.procs").write_text(str(pid))
            cgroup.rmdir()
        self.children.clear()

    def remove(self) -> None:
        self.empty()
        self.path.rmdir()


def go(procs: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Release the held processes together; their fio job results."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"fio failed: {err}")
        results.append(json.loads(out)["jobs"][0]["write"])
    return results


def fio(path: Path, runtime: int, *, bs: str = "4k", rw: str = "randwrite", depth: int = 1,
        rate_iops: int = 0, name: str = "job") -> list[str]:
    argv = ["fio", f"--name={name}", f"--filename={path}", f"--size={FILE_SIZE}", f"--rw={rw}",
            f"--bs={bs}", "--direct=1", "--time_based", f"--runtime={runtime}", "--ramp_time=1",
            "--randrepeat=0", "--norandommap", "--output-format=json"]
    argv += ["--ioengine=libaio", f"--iodepth={depth}"] if depth > 1 else ["--ioengine=psync"]
    if rate_iops:
        argv.append(f"--rate_iops={rate_iops}")
    return argv


def volume(pool: Pool, name: str, mounts: Path) -> tuple[str, Path]:
    """A mounted xfs volume with a preallocated file for fio: (device, file)."""
    pool.create_volume(name, 1 * GiB, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
    target = mounts / name
    target.mkdir(parents=True)
    vol = pool.mount(name, target)
    assert vol.device is not None
    data = target / "data"
    fd = os.open(data, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.posix_fallocate(fd, 0, FILE_SIZE)
    finally:
        os.close(fd)
    # written once, so no run pays for unwritten-extent conversion
    subprocess.run(["fio", "--name=fill", f"--filename={data}", f"--size={FILE_SIZE}", "--rw=write",
                    "--bs=1M", "--direct=1", "--ioengine=psync", "--output-format=json"],
                   check=True, capture_output=True)
    return vol.device, data


@contextlib.contextmanager
def limited(t: Throttle, scope: Scope, rules: dict[str, Limits], jobs: Sequence[tuple[str, list[str]]],
            mounts: dict[str, Path]) -> Iterator[list[subprocess.Popen[str]]]:
    """Hold one process per job (volume, argv) in a cgroup of its own that sees only that
    volume, then apply every device's limits (v1 splits each among the cgroups that use
    it), then yield them."""
    procs = [scope.hold(scope.child(), argv, [m for n, m in mounts.items() if n != name])
             for name, argv in jobs]
    for device, limits in rules.items():
        t.apply(device, limits)
    try:
        yield procs
    finally:
        scope.empty()
        for device in rules:
            t.clear(device)


def deviation(measured: float, limit: float) -> float:
    return abs(measured / limit - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    found = throttle.detect()
    if not found:
        raise SystemExit("no cgroup hierarchy holds the io (v2) or blkio (v1) controller")
    hierarchy = found[0]
    home = Path(tempfile.mkdtemp(prefix="statehold-bench-qos-", dir="/var/tmp"))
    node = Node(home)
    pool: Pool | None = None
    names = ["limited", "free", "db", "batch"]
    scope = Scope(hierarchy)
    print(f"cgroup path: {hierarchy.text()}; scope {scope.path}")
    try:
        pool = node.create_pool(PoolSpec(name="bench", image_size=8 * GiB))
        vols = {n: volume(pool, n, home / "mnt") for n in names}
        t = Throttle(hierarchy, [scope.path])
        rt = args.runtime
        dev = {n: vols[n][0] for n in names}
        data = {n: vols[n][1] for n in names}
        mounts = {n: home / "mnt" / n for n in names}
        deviations: list[float] = []

        # 1. the limits, one cgroup then two
        one = [("limited", fio(data["limited"], rt, depth=4))]
        with limited(t, scope, {dev["limited"]: LIMITED}, one, mounts) as p:
            iops = go(p)[0]["iops"]
        print(f"limits: one cgroup, 4k randwrite qd4: {iops:.1f} IOPS (limit 500, {iops / 500:.3f})")
        deviations.append(deviation(iops, 500))
        sync = [("limited", fio(data["limited"], rt))]
        with limited(t, scope, {dev["limited"]: LIMITED}, sync, mounts) as p:
            iops = go(p)[0]
        print(f"(not a limit measurement) one cgroup, 4k randwrite qd1: {iops['iops']:.1f} IOPS "
              f"({iops['iops'] / 500:.3f}), completion latency p99 "
              f"{iops['clat_ns']['percentile']['99.000000'] / 1e6:.2f} ms: one synchronous "
              "writer cannot go faster than its own latency allows")
        with limited(t, scope, {dev["limited"]: LIMITED},
                     [("limited", fio(data["limited"], rt, bs="1M", rw="write"))], mounts) as p:
            bw = go(p)[0]["bw_bytes"]
        print(f"limits: one cgroup, 1M write: {bw / MiB:.2f} MiB/s (limit 20, {bw / (20 * MiB):.3f})")
        deviations.append(deviation(bw, 20 * MiB))
        with limited(t, scope, {dev["limited"]: LIMITED},
                     [("limited", fio(data["limited"], rt, depth=4, name=f"w{i}")) for i in range(2)],
                     mounts) as p:
            both = [r["iops"] for r in go(p)]
        print(f"limits: two cgroups, 4k randwrite qd4: {' + '.join(f'{x:.1f}' for x in both)} = "
              f"{sum(both):.1f} IOPS together (limit 500, {sum(both) / 500:.3f})")
        deviations.append(deviation(sum(both), 500))
        with limited(t, scope, {dev["limited"]: LIMITED},
                     [("limited", fio(data["limited"], rt, bs="1M", rw="write", name=f"w{i}"))
                      for i in range(2)], mounts) as p:
            bws = [r["bw_bytes"] for r in go(p)]
        print(f"limits: two cgroups, 1M write: {' + '.join(f'{x / MiB:.2f}' for x in bws)} = "
              f"{sum(bws) / MiB:.2f} MiB/s together (limit 20, {sum(bws) / (20 * MiB):.3f})")
        deviations.append(deviation(sum(bws), 20 * MiB))

        # 2. an unlimited volume beside a throttled one
        short = max(3, rt // 2)
        pair_ratios = []
        for i in range(args.pairs):
            sides: dict[str, float] = {}
            for side in (("alone", "beside") if i % 2 == 0 else ("beside", "alone")):
                jobs = [("free", fio(data["free"], short, depth=16, name="free"))]
                if side == "beside":
                    jobs.append(("limited", fio(data["limited"], short + 2, name="throttled")))
                with limited(t, scope, {dev["limited"]: LIMITED}, jobs, mounts) as p:
                    sides[side] = go(p)[0]["iops"]
            pair_ratios.append(sides["beside"] / sides["alone"])
            print(f"neighbour pair {i}: unlimited alone {sides['alone']:.0f} IOPS, beside the "
                  f"throttled volume {sides['beside']:.0f} IOPS ({pair_ratios[-1]:.3f})")
        print(f"neighbour: median beside/alone {statistics.median(pair_ratios):.3f}")

        # 3. the database's latency beside a batch volume
        p99 = {}
        cases = (("alone", None), ("batch uncapped", Limits()), ("batch capped 20 MiB/s", BATCH_CAP))
        for label, batch in cases:
            jobs = [("db", fio(data["db"], rt, rate_iops=200, name="db"))]
            if batch is not None:
                jobs.append(("batch", fio(data["batch"], rt + 2, bs="1M", rw="write", depth=16,
                                               name="batch")))
            rules = {dev["db"]: DB} | ({dev["batch"]: batch} if batch is not None else {})
            with limited(t, scope, rules, jobs, mounts) as p:
                results = go(p)
            p99[label] = results[0]["clat_ns"]["percentile"]["99.000000"] / 1e6
            extra = f", batch {results[1]['bw_bytes'] / MiB:.1f} MiB/s" if batch is not None else ""
            print(f"latency: db p99 {p99[label]:.2f} ms at {results[0]['iops']:.0f} IOPS, {label}{extra}")

        worst = max(deviations)
        print(f"worst deviation from a limit: {worst * 100:.1f} %")
        print(f"ratio={worst / 0.1:.2f}")
    finally:
        with contextlib.suppress(Exception):
            scope.remove()
        cleanup(node, pool, home, names)


if __name__ == "__main__":
    main()
