"""Group snapshot freeze window: how long a group of 3 and of 10 volumes stays frozen.

Ten XFS volumes (default 1 GiB each) in one file-backed XFS pool, mounted as the CSI node
mounts them, each holding a data file that fills most of it. They are first **fragmented as
long-lived volumes are** (issue 14): rounds of 4 KiB random direct writes into the data
file, one snapshot of each volume kept between rounds so every write copies on write,
until the median volume file has ``--extents`` extents (FIEMAP of the backing file). The
pool is then settled (untimed, as after every deletion below): the last round's deletion
left background work that would otherwise land in the first timed run.

Then, under **write load** (fio: 4 KiB random direct writes into the first ``--hot`` bytes
of every volume's data file, a hot set rewritten over and over, ``--iops`` per volume,
running throughout), ``runs`` times each, alternating:

* ``Node.snapshot_group`` of the first 3 volumes and of all 10. The freeze window (first
  FIFREEZE began -> last FITHAW returned, as the freeze keeper reports it) and the call's
  whole latency are recorded; the group is then deleted (untimed) and the pool synced.
* baseline, the same group done the simple way in this process: freeze each filesystem
  one after the other, reflink each whole, thaw each (what a single-volume snapshot does,
  in a loop; no keeper, so not SIGKILL-safe). Same window, same clock; for 10 volumes only
  every 5th run (it holds ten volumes frozen for seconds).
* the previous version (unless ``--no-compare``): the same ``Node.snapshot_group`` with the
  keeper's expedited RCU grace periods turned off (engine/rcu.py), right after the group of
  3 in every run and the group of 10 in every 5th, so both see the same moment's load.

``--layout subvolume`` (the opt-in pool layout, engine/layouts.py): the pool is btrfs on two
images (loop devices), every volume's file alone in a btrfs subvolume; fragmentation, load
and runs are the same. A snapshot there is a read-only subvolume snapshot: the group's
window holds FIFREEZE and one ``BTRFS_IOC_SNAP_CREATE_V2`` per member, nothing that reads
the volume's extents (the pool's transaction is committed just before the freeze). Its
baseline: freeze each member one after the other, one subvolume snapshot each, thaw each.
After each group's deletion (untimed) the bench commits the pool (``BTRFS_IOC_SYNC``, which
wakes btrfs's cleaner) and waits for the cleaner to drop the deleted subvolumes (``btrfs
subvolume sync``), as bench/snapshot.py does.

Prints extents before and after, p50/p99/max (and p90, the 5 largest) per case, and last
``ratio=<p99 freeze window of the 3-volume group / 100 ms>`` (goal <= 1).

Usage: ``.venv/bin/python bench/group_snapshot.py [--size 1Gi] [--extents 20000]
[--runs 50] [--iops 50] [--hot 32Mi] [--layout file|subvolume]``. Runs as root; everything
lives under its own home in /var/tmp and is removed at the end (every filesystem is thawed
first, whatever happens; SIGINT and SIGTERM stop it through that cleanup).
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchhome import cleanup

from statehold.engine import freeze, freezekeeper, rcu, subvolume
from statehold.engine.ficlone import reflink
from statehold.engine.fiemap import file_extents
from statehold.engine.names import parse_size
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, MiB, PoolSpec
from statehold.runner import run

VOLUMES = 10
GROUPS = (3, VOLUMES)
BLOCK = 4096
BASELINE_EVERY = 5
"""The baseline of 10 (every member whole inside the window: seconds) runs every 5th run."""


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the largest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def fill(path: Path, size: int) -> None:
    run(["fio", "--name", "fill", "--filename", str(path), "--size", str(size), "--rw=write",
         "--bs=4M", "--ioengine=libaio", "--iodepth=8", "--direct=1", "--end_fsync=1",
         "--output-format=json"], timeout=1800)


def random_writes(path: Path, count: int, rng: random.Random) -> None:
    """``count`` 4 KiB direct writes at random 4 KiB-aligned offsets of ``path``."""
    blocks = path.stat().st_size // BLOCK
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(BLOCK))
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        for _ in range(count):
            os.pwritev(fd, [buf], rng.randrange(blocks) * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def extents(pool: Pool, names: list[str]) -> list[int]:
    return [len(file_extents(pool.get_volume(n).path, sync=False)) for n in names]


def fragment(pool: Pool, names: list[str], data: dict[str, Path], target: int,
             per_round: int) -> tuple[int, list[int]]:
    """Rounds of random writes, one snapshot per volume kept between rounds."""
    rng = random.Random(14)
    kept = {name: f"{name}-frag0" for name in names}
    for name in names:  # from here on every write copies on write
        pool.create_snapshot(name, kept[name], freeze=False)
    rounds = 0
    counts = extents(pool, names)
    while statistics.median(counts) < target and rounds < 200:
        rounds += 1
        for name in names:
            random_writes(data[name], per_round, rng)
            snap = f"{name}-frag{rounds}"
            pool.create_snapshot(name, snap, freeze=False)
            pool.delete_snapshot(kept[name])
            kept[name] = snap
        counts = extents(pool, names)
        print(f"  round {rounds}: extents min/median/max {min(counts)}/"
              f"{statistics.median(counts):.0f}/{max(counts)}", flush=True)
    return rounds, counts  # the last round's snapshots stay, like a retained backup


def writer(data: dict[str, Path], iops: int, hot: int) -> subprocess.Popen[bytes]:
    """fio: random 4 KiB direct writes into the first ``hot`` bytes of every data file (a
    database's hot set: rewritten again and again, so the extent count stays bounded)."""
    argv = ["fio", "--thread", "--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=psync",
            "--time_based", "--runtime=86400", f"--rate_iops={iops}", f"--size={hot}",
            "--output=/dev/null"]
    for name, path in data.items():
        argv += [f"--name={name}", f"--filename={path}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def subvolumes(pool: Pool) -> bool:
    return pool.layout.name == "subvolume"


def settle(pool: Pool) -> None:
    """Untimed: the background work a deletion left (XFS freeing a reflinked file's extents,
    btrfs's cleaner dropping a deleted subvolume's tree) must not land in the next run."""
    if subvolumes(pool):
        # BTRFS_IOC_SYNC commits and wakes the transaction thread, which pokes the cleaner;
        # otherwise it starts on the next periodic commit (up to 30 s later)
        subvolume.sync(pool.mountpoint)
        run(["btrfs", "subvolume", "sync", str(pool.mountpoint)], timeout=1800)
    freeze.syncfs(str(pool.mountpoint))


def baseline(pool: Pool, names: list[str], targets: dict[str, str], i: int) -> float:
    """Sequential freeze, copy (a whole reflink, or a subvolume snapshot for layout
    subvolume), thaw in this process: the window in seconds."""
    scratch = pool.mountpoint / "bench-baseline"
    scratch.mkdir(exist_ok=True)
    frozen: list[str] = []
    made: list[Path] = []
    try:
        start = time.monotonic()
        for name in names:
            freeze.freeze(targets[name])
            frozen.append(targets[name])
        for name in names:
            if subvolumes(pool):
                made.append(scratch / f"{name}-{i}")
                subvolume.snapshot(pool.layout.volume_entry(name), made[-1], readonly=True)
            else:
                reflink(pool.get_volume(name).path, scratch / f"{name}-{i}.img")
        while frozen:
            freeze.thaw(frozen.pop())
        return time.monotonic() - start
    finally:
        while frozen:
            freeze.thaw(frozen.pop())
        for entry in made:
            subvolume.destroy(entry)
        shutil.rmtree(scratch, ignore_errors=True)
        settle(pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1Gi", help="size of each of the 10 volumes")
    parser.add_argument("--extents", type=int, default=20000,
                        help="fragment until the median volume file has this many extents")
    parser.add_argument("--per-round", type=int, default=2500,
                        help="random 4 KiB writes per volume per fragmentation round")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--iops", type=int, default=50,
                        help="4 KiB random writes per second per volume during the runs")
    parser.add_argument("--hot", default="32Mi",
                        help="the write load rewrites this much at the start of each data file")
    parser.add_argument("--timeout", type=float, default=60.0, help="freeze timeout, seconds")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the same groups taken without expedited RCU grace periods")
    parser.add_argument("--layout", choices=("file", "subvolume"), default="file",
                        help="pool layout (subvolume: btrfs on two images, a subvolume per volume)")
    args = parser.parse_args()
    size = parse_size(args.size)
    # stop through the cleanup below, also when started in the background (SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    home = Path(tempfile.mkdtemp(prefix="statehold-bench-group-", dir="/var/tmp"))
    node = Node(home)
    pool: Pool | None = None
    names = [f"gv{i}" for i in range(VOLUMES)]
    targets: dict[str, str] = {}
    load: subprocess.Popen[bytes] | None = None
    ratio = float("nan")
    try:
        count = 2 if args.layout == "subvolume" else 1  # several disks: btrfs
        pool = node.create_pool(PoolSpec(
            name="bench", images=tuple(str(home / "disks" / f"bench-{i}.img") for i in range(count)),
            image_size=VOLUMES * size * 3 + 8 * GiB, overprovision_ratio=2.0, layout=args.layout))
        print(f"pool: {pool.fs} on {count} image(s), layout {pool.layout.name}", flush=True)
        data: dict[str, Path] = {}
        for name in names:
            pool.create_volume(name, size, fs=FsType.XFS)
            target = home / "mnt" / name
            pool.mount(name, target)
            targets[name] = str(target)
            data[name] = target / "data"
            free = shutil.disk_usage(target).free
            fill(data[name], (free - 64 * MiB) // (4 * MiB) * (4 * MiB))
        before_frag = extents(pool, names)
        print(f"{VOLUMES} volumes of {size / GiB:g} GiB (XFS, mounted), data files of "
              f"{data[names[0]].stat().st_size / MiB:.0f} MiB; extents after the fill: "
              f"median {statistics.median(before_frag):.0f}", flush=True)
        rounds, counts = fragment(pool, names, data, args.extents, args.per_round)
        print(f"fragmented in {rounds} rounds of {args.per_round} random 4 KiB writes per "
              f"volume (one snapshot kept): extents min/median/max {min(counts)}/"
              f"{statistics.median(counts):.0f}/{max(counts)}", flush=True)

        settle(pool)  # the last round's deletion must not land in the first timed run
        load = writer(data, args.iops, parse_size(args.hot))
        load_before = os.getloadavg()[0]
        windows: dict[str, list[float]] = {}
        calls: dict[str, list[float]] = {}
        parts: dict[str, list[tuple[float, float]]] = {}

        def take(label: str, name: str, n: int) -> float:
            """A group of the first ``n`` volumes: its window recorded under ``label``, then
            deleted and the pool settled (untimed); returns the call's seconds."""
            t0 = time.monotonic()
            group = node.snapshot_group(name, [("bench", v, f"{name}-{v}") for v in names[:n]],
                                        timeout=args.timeout)
            took = time.monotonic() - t0
            assert group.window is not None and group.freezing is not None
            windows.setdefault(label, []).append(group.window)
            parts.setdefault(label, []).append((group.freezing, group.window - group.freezing))
            node.delete_snapshot_group(name)
            settle(pool)
            return took

        for i in range(args.runs):
            for n in (GROUPS if i % 2 == 0 else GROUPS[::-1]):
                calls.setdefault(f"group of {n}", []).append(take(f"group of {n}", f"b{n}-{i}", n))
                if args.compare and (n == GROUPS[0] or i % BASELINE_EVERY == 0):
                    # the previous version, same moment: FIFREEZE without expedited RCU
                    freezekeeper.configure(None)
                    try:
                        take(f"not expedited, {n}", f"p{n}-{i}", n)
                    finally:
                        freezekeeper.configure(rcu.Expedite())
                if n == GROUPS[0] or i % BASELINE_EVERY == 0:
                    windows.setdefault(f"baseline of {n}", []).append(
                        baseline(pool, names[:n], targets, i))
            if (i + 1) % 10 == 0:
                print(f"  {i + 1} runs: median window, group of 3 "
                      f"{statistics.median(windows['group of 3']) * 1000:.0f} ms, of 10 "
                      f"{statistics.median(windows['group of 10']) * 1000:.0f} ms; extents "
                      f"median {statistics.median(extents(pool, names)):.0f}", flush=True)
        after = extents(pool, names)

        print(f"host load average (1 min) at the start of the runs {load_before:.1f}, at the end "
              f"{os.getloadavg()[0]:.1f} (2 cores, shared)")
        print(f"extents during the runs went from median {statistics.median(counts):.0f} to "
              f"{statistics.median(after):.0f} (max {max(after)}): the load keeps writing "
              "and every group is a snapshot it copies on write against")
        print(f"{'freeze window (ms)':<22}{'runs':>6}{'p50':>9}{'p99':>9}{'max':>9}   "
              f"(load {args.iops} IOPS/volume)")
        for label, vals in sorted(windows.items()):
            ms = [v * 1000 for v in vals]
            print(f"{label:<22}{len(ms):>6}{statistics.median(ms):>9.1f}{pct(ms, 99):>9.1f}"
                  f"{max(ms):>9.1f}   p90 {pct(ms, 90):.1f}, largest "
                  + " ".join(f"{v:.0f}" for v in sorted(ms)[-5:])
                  + f" (the largest in run {ms.index(max(ms))})")
        for label, vals in calls.items():
            ms = [v * 1000 for v in vals]
            print(f"{'call, ' + label:<22}{len(ms):>6}{statistics.median(ms):>9.1f}"
                  f"{pct(ms, 99):>9.1f}{max(ms):>9.1f}")
        rest = "snapshot ioctls + thaw" if subvolumes(pool) else "catch-up + thaw"
        for label, pairs in parts.items():
            print(f"{label}: of the window, FIFREEZE p50 {statistics.median(f for f, _ in pairs) * 1000:.1f} "
                  f"ms, {rest} p50 {statistics.median(r for _, r in pairs) * 1000:.1f} ms")
        if args.compare:
            for n in GROUPS:
                was, now = windows[f"not expedited, {n}"], windows[f"group of {n}"]
                print(f"group of {n}: window p50 expedited / not expedited = "
                      f"{statistics.median(now) / statistics.median(was):.3f}, p99 "
                      f"{pct(now, 99) / pct(was, 99):.3f}")
        ratio = pct(windows["group of 3"], 99) / 0.100
    finally:
        if load is not None and load.poll() is None:
            for mnt in targets.values():  # a writer blocked on a frozen fs cannot stop
                freeze.thaw(mnt)
            load.send_signal(signal.SIGTERM)
            try:
                load.wait(60)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait()
        for mnt in targets.values():
            freeze.thaw(mnt)
        if pool is not None:
            for snap in pool.list_snapshots():
                pool.delete_snapshot(snap.name)
        cleanup(node, pool, home, names)
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
