"""The fragmented case of ``bench/snapshot.py`` (issue 14): snapshots of an aged volume.

See ``bench/snapshot.py``'s docstring for what is measured. This module builds the pool
filesystem itself (an image under the bench's home, loop-attached, mkfs, mounted), so that
each candidate layout sits on the filesystem it needs:

* ``file``: an engine directory pool on that filesystem;
* ``subvolume``: an engine directory pool of layout ``subvolume`` on btrfs
  (``volumes/<name>/volume.img``, a subvolume per volume; a snapshot is a read-only
  subvolume snapshot, frozen around the ioctl alone when mounted).

Either way volumes, snapshots, deletion and settling go through ``Pool`` exactly as the
product does them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from statehold.engine import freeze, freezekeeper, loop, rcu, subvolume
from statehold.engine.fiemap import raw_extents
from statehold.engine.names import parse_size
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, VolumeMode
from statehold.runner import run

GOAL_MS = 50.0
HOT = 64 * MiB
"""The probe rewrites this much at the start of the aged volume (a hot set: bounded growth
of the extent count while the runs go on)."""

def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fragmented case (issue 14)")
    group.add_argument("--fragmented", action="store_true",
                       help="measure snapshots of a volume fragmented by random writes")
    group.add_argument("--layout", choices=("file", "subvolume"), default="file")
    group.add_argument("--pool-fs", choices=("xfs", "btrfs"), default="xfs",
                       help="pool filesystem of the file layout (subvolume implies btrfs)")
    group.add_argument("--presync", action="store_true",
                       help="subvolume layout: commit the pool's transaction before each snapshot")
    group.add_argument("--size", default="2Gi", help="size of each of the two volumes")
    group.add_argument("--extents", type=int, default=200_000)
    group.add_argument("--per-round", type=int, default=50_000,
                       help="random 4 KiB writes per fragmentation round")
    group.add_argument("--frag-runs", type=int, default=30)
    group.add_argument("--compare-expedite", action="store_true",
                       help="with --mounted: a third series, the aged volume snapshotted with "
                       "the freeze keeper's expedited RCU grace periods off (engine/rcu.py)")
    group.add_argument("--compare-spare", action="store_true",
                       help="with --mounted: a series more, the aged volume snapshotted with "
                       "a freeze keeper started cold (no idle spare, engine/spare.py)")


# -- layouts ---------------------------------------------------------------------------------

class Layout:
    """Volumes of one candidate layout: make, attach or mount, snapshot, delete, settle."""

    mounted: dict[str, Path]

    def make(self, name: str, size: int) -> Path:
        raise NotImplementedError

    def attach(self, name: str) -> str:
        raise NotImplementedError

    def mount(self, name: str, target: Path) -> None:
        """An XFS filesystem on the volume, mounted at ``target`` (the CSI node's way)."""
        raise NotImplementedError

    def snapshot(self, volume: str, snap: str) -> None:
        raise NotImplementedError

    def delete(self, snap: str) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        """Untimed: background work a deletion left must not land in the next timed run."""

    def close(self) -> None:
        """Release what :meth:`make` and :meth:`attach` made."""


class EngineLayout(Layout):
    """A directory pool of the engine on the bench's filesystem, of either pool layout."""

    def __init__(self, home: Path, root: Path, *, filesystem: bool, layout: str,
                 presync: bool) -> None:
        self.node = Node(home / "node")
        self.pool: Pool | None = None
        self.pool = self.node.create_pool(PoolSpec(name="bench", directory=str(root),
                                                   overprovision_ratio=4.0, layout=layout))
        self.names: list[str] = []
        self.filesystem = filesystem
        self.presync = presync
        self.mounted = {}

    def make(self, name: str, size: int) -> Path:
        assert self.pool is not None
        if self.filesystem:
            self.pool.create_volume(name, size, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
        else:
            self.pool.create_volume(name, size, mode=VolumeMode.BLOCK, fs=None)
        self.names.append(name)
        return self.pool.get_volume(name).path

    def mount(self, name: str, target: Path) -> None:
        assert self.pool is not None
        self.pool.mount(name, target)
        self.mounted[name] = target

    def attach(self, name: str) -> str:
        assert self.pool is not None
        return self.pool.attach(name)

    def snapshot(self, volume: str, snap: str) -> None:
        """(``--presync``: commit the pool's transaction first, timed); the engine's
        snapshot (a mounted volume: flush, pool sync, freeze around the ioctl, thaw)."""
        assert self.pool is not None
        if self.presync:
            subvolume.sync(self.pool.mountpoint)
        self.pool.create_snapshot(volume, snap, freeze=True)

    def delete(self, snap: str) -> None:
        assert self.pool is not None
        self.pool.delete_snapshot(snap)

    def settle(self) -> None:
        assert self.pool is not None
        if self.pool.layout.name == "subvolume":
            # wait until the cleaner has dropped deleted subvolumes (and commit)
            run(["btrfs", "subvolume", "sync", str(self.pool.mountpoint)], timeout=1800)
        freeze.syncfs(str(self.pool.mountpoint))

    def close(self) -> None:
        try:
            if self.pool is not None:
                for snap in self.pool.list_snapshots():
                    self.pool.delete_snapshot(snap.name)
                for name in self.names:
                    if name in self.mounted:
                        self.pool.unmount(name, self.mounted[name])
                    self.pool.detach(name)
                    self.pool.delete_volume(name)
                self.node.destroy_pool(self.pool.name)
        finally:
            self.node.close()


# -- the pool filesystem -----------------------------------------------------------------------

@dataclass
class PoolFs:
    """An image, its loop device and the filesystem mounted from it, all under ``home``."""

    home: Path
    fstype: str
    size: int
    device: str = ""
    root: Path = field(default_factory=Path)

    def __enter__(self) -> PoolFs:
        image = self.home / "pool.img"
        with open(image, "wb") as f:
            f.truncate(self.size)
        self.device = loop.attach(image)
        if self.fstype == "xfs":
            run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.device], timeout=300)
        else:
            run(["mkfs.btrfs", "-q", "-f", self.device], timeout=300)
        self.root = self.home / "poolfs"
        self.root.mkdir()
        run(["mount", "-t", self.fstype, self.device, str(self.root)], timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device:
            subprocess.run(["umount", str(self.root)], check=False)
            loop.detach(self.device)


# -- load, probe, fragmentation ------------------------------------------------------------------

def fio(device: str, *args: str, timeout: float = 3600) -> dict[str, object]:
    proc = run(["fio", "--name=job", f"--filename={device}", "--direct=1", "--ioengine=libaio",
                "--output-format=json", *args], timeout=timeout)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def randwrite_iops(device: str, seconds: int) -> float:
    out = fio(device, "--rw=randwrite", "--bs=4k", "--iodepth=32", "--time_based",
              f"--runtime={seconds}")
    jobs = out["jobs"]
    assert isinstance(jobs, list)
    return float(jobs[0]["write"]["iops"])


def extent_count(path: Path) -> int:
    return len(raw_extents(path, sync=False))


PROBE = r"""
import mmap, os, random, struct, sys, time
dev, log, hot = sys.argv[1], sys.argv[2], int(sys.argv[3])
buf = mmap.mmap(-1, 4096); buf.write(os.urandom(4096))
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
rng = random.Random(14); blocks = hot // 4096; rec = struct.Struct("=dd")
while True:
    t0 = time.monotonic()
    os.pwritev(fd, [buf], rng.randrange(blocks) * 4096)
    os.fdatasync(fd)
    os.write(out, rec.pack(t0, time.monotonic()))
"""


def read_probe(log: Path) -> list[tuple[float, float]]:
    data = log.read_bytes()
    rec = struct.Struct("=dd")
    return [rec.unpack_from(data, i) for i in range(0, len(data) - len(data) % rec.size, rec.size)]


def stall(writes: list[tuple[float, float]], start: float, end: float) -> float:
    """Longest probe write that overlapped [start, end] (seconds); a write still running
    when the log was read counts up to then."""
    worst = 0.0
    for began, done in writes:
        if began <= end and done >= start:
            worst = max(worst, done - began)
    return worst


def fragment(layout: Layout, name: str, device: str, path: Path, target: int,
             per_round: int, size: int) -> tuple[int, float]:
    """Rounds of random writes with one snapshot kept; returns (rounds, seconds)."""
    t0 = time.monotonic()
    kept = f"{name}-frag0"
    layout.snapshot(name, kept)
    rounds = 0
    count = extent_count(path)
    while count < target and rounds < 100:
        rounds += 1
        fio(device, "--rw=randwrite", "--bs=4k", "--iodepth=16", f"--number_ios={per_round}",
            f"--size={size}", "--randrepeat=0", "--norandommap")
        snap = f"{name}-frag{rounds}"
        layout.snapshot(name, snap)
        layout.delete(kept)
        kept = snap
        count = extent_count(path)
        print(f"  round {rounds}: {count} extents, {time.monotonic() - t0:.0f} s", flush=True)
    layout.settle()
    return rounds, time.monotonic() - t0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def main(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    size = parse_size(args.size)
    compare = args.compare_expedite and args.mounted  # block volumes are never frozen
    cold = args.compare_spare and args.mounted
    fstype = "btrfs" if args.layout == "subvolume" else args.pool_fs
    label = args.layout + ("" if args.layout == "subvolume" else f" on {fstype}") + \
        (" + presync" if args.presync else "") + (", mounted XFS volumes" if args.mounted else "")
    home = Path(tempfile.mkdtemp(prefix="statehold-bench-aged-", dir="/var/tmp"))
    probe: subprocess.Popen[bytes] | None = None
    layout: Layout | None = None
    ratio = float("nan")
    try:
        with PoolFs(home, fstype, 4 * size + 4 * GiB) as poolfs:
            layout = EngineLayout(home, poolfs.root, filesystem=args.mounted,
                                  layout=args.layout, presync=args.presync)
            paths: dict[str, Path] = {}
            devices: dict[str, str] = {}  # what fio and the probe write: device or data file
            io_size = size
            for name in ("fresh", "aged"):
                paths[name] = layout.make(name, size)
                if args.mounted:
                    target = home / "mnt" / name
                    layout.mount(name, target)
                    free = shutil.disk_usage(target).free
                    io_size = (free - 64 * MiB) // (4 * MiB) * (4 * MiB)
                    devices[name] = str(target / "data")
                else:
                    devices[name] = layout.attach(name)
                fio(devices[name], "--rw=write", "--bs=4M", "--iodepth=8", f"--size={io_size}",
                    "--end_fsync=1")
            print(f"layout {label}: two {size / GiB:g} GiB volumes filled", flush=True)
            rounds, took = fragment(layout, "aged", devices["aged"], paths["aged"], args.extents,
                                    args.per_round, io_size)
            extents = {n: extent_count(p) for n, p in paths.items()}
            print(f"fragmented in {took:.0f} s ({rounds} rounds of {args.per_round} writes): aged "
                  f"{extents['aged']} extents, fresh {extents['fresh']}", flush=True)

            log = home / "probe.log"
            probe = subprocess.Popen([sys.executable, "-c", PROBE, devices["aged"], str(log),
                                      str(HOT)])
            rng = random.Random(14)
            series = ("fresh", "aged") + (("aged-plain",) if compare else ()) + \
                (("aged-cold",) if cold else ())
            times: dict[str, list[float]] = {n: [] for n in series}
            spans: dict[str, list[tuple[float, float]]] = {n: [] for n in (*series, "none")}
            for i in range(args.frag_runs):
                for name in (series if i % 2 == 0 else series[::-1]):
                    time.sleep(0.2 + rng.random() * 0.2)  # pacing: let the probe run alone
                    snap = f"{name}-m{i}"
                    volume = "aged" if name.startswith("aged") else name
                    if name == "aged-plain":
                        freezekeeper.configure(None)  # the previous version, same moment
                    if name == "aged-cold":
                        freezekeeper.drop_spare()  # a keeper started now, as before spares
                    try:
                        t0 = time.monotonic()
                        layout.snapshot(volume, snap)
                        t1 = time.monotonic()
                    finally:
                        freezekeeper.configure(rcu.Expedite())
                    times[name].append((t1 - t0) * 1000)
                    spans[name].append((t0, t1))
                    time.sleep(0.2 + rng.random() * 0.2)
                    # an interval as long, with no snapshot: the probe's own tail
                    t2 = time.monotonic()
                    time.sleep(max(t1 - t0, 0.005))
                    spans["none"].append((t2, time.monotonic()))
                    layout.delete(snap)
                    layout.settle()
                if (i + 1) % 10 == 0:
                    print(f"  {i + 1} runs: aged p50 {statistics.median(times['aged']):.1f} ms",
                          flush=True)
            probe.send_signal(signal.SIGTERM)
            probe.wait(60)
            writes = read_probe(log)
            extents_after = extent_count(paths["aged"])
            iops_after = {n: randwrite_iops(d, 3) for n, d in devices.items()}

            stalls = {k: [stall(writes, a, b) * 1000 for a, b in v] for k, v in spans.items()}
            print(f"host load average (1 min) {os.getloadavg()[0]:.1f}; probe {len(writes)} "
                  f"writes; aged extents during the runs {extents['aged']} -> {extents_after}")
            print(f"{'volume':<11}{'extents':>9}{'snap p50':>10}{'p99':>9}{'max':>9}"
                  f"{'stall p50':>11}{'p99':>9}{'max':>9}   (ms, {args.frag_runs} runs, {label})")
            for name in series:
                t, st = times[name], stalls[name]
                count = extents[name.split("-")[0]]
                print(f"{name:<11}{count:>9}{statistics.median(t):>10.1f}{pct(t, 99):>9.1f}"
                      f"{max(t):>9.1f}{statistics.median(st):>11.1f}{pct(st, 99):>9.1f}"
                      f"{max(st):>9.1f}")
            st = stalls["none"]
            print(f"{'(none)':<11}{'':>9}{'':>10}{'':>9}{'':>9}{statistics.median(st):>11.1f}"
                  f"{pct(st, 99):>9.1f}{max(st):>9.1f}   <- probe alone, same intervals")
            print(f"4k randwrite qd32 IOPS (a snapshot retained): fresh {iops_after['fresh']:.0f}, "
                  f"aged {iops_after['aged']:.0f}")
            ratio = pct(times["aged"], 99) / GOAL_MS
            print(f"fresh: p99 {pct(times['fresh'], 99):.1f} ms = {pct(times['fresh'], 99) / GOAL_MS:.3f}"
                  f" of the goal; aged stall p99 {pct(stalls['aged'], 99):.1f} ms")
            layout.close()
            layout = None
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()
            probe.wait()
        if layout is not None:
            with contextlib.suppress(Exception):
                layout.close()
        for dev in loop.under(home):
            print(f"warning: detaching leftover {dev}", file=sys.stderr)
            loop.detach(dev)
        subprocess.run(["rm", "-rf", "--one-file-system", str(home)], check=False)
    print(f"ratio={ratio:.3f}")

