"""Snapshot and clone latency: does the cost stay flat as the volume grows?

Two block-mode volumes in one file-backed XFS pool, attached as the engine attaches them
(loop, direct I/O), filled with real data written through the loop device (fio, 4 MiB
sequential writes; a sparse or fallocated file would make the test trivially cheap):
a small one (default 1 GiB) and a large one (default 32 GiB). Then, alternating small and
large so drift hits both alike, ``runs`` times each:

* snapshot: ``Pool.create_snapshot`` of the attached volume (buffer flush + FICLONE +
  fsync + metadata commit), timed;
* clone:    ``Pool.create_volume(source=snapshot)`` (FICLONE + metadata commit), timed;
* then the clone and the snapshot are deleted and the pool synced (untimed) so every run
  starts alike and no background freeing from the last run lands in the next one;
* for reference, the bare FICLONE ioctl of the volume file (no flush, fsync or metadata).

Prints p50/p99/max per size and operation, the extent count of each volume file (FICLONE
work grows with extents, not bytes), and last ``ratio=<p99 large / p99 small>`` for the
worse of the two operations.

With ``--mounted`` the volumes are XFS filesystems, mounted, filled through a file, and
every snapshot freezes the filesystem around the FICLONE (the CSI path for filesystem
volumes).

Usage: ``.venv/bin/python bench/snapshot.py [--small 1Gi] [--large 32Gi] [--runs 100]
[--mounted]``.

**Fragmented case** (issue 14), ``--fragmented``: what a snapshot costs once a volume has
lived under random writes with snapshots kept, and how long it stalls the application. Two
block volumes of ``--size`` (default 2 GiB), attached with direct I/O, filled sequentially:
``fresh`` stays so; ``aged`` gets rounds of 4 KiB random writes (fio through its loop
device), one snapshot kept between rounds so every write copies on write, until its backing
file has ``--extents`` extents (default 200,000). The last round's snapshot stays (a
retained backup). Then, with a **probe** running (a child process writing 4 KiB with
O_DIRECT + fdatasync in a loop into the first 64 MiB of the aged volume, logging each
write's start and end), ``--frag-runs`` times, fresh and aged alternating: a snapshot, timed;
the longest probe write overlapping it is the **stall**; the same probe measured over an
equal interval with no snapshot is the **baseline stall**; the snapshot is deleted and the
pool settled (untimed). Then 4 KiB random-write IOPS of each volume (fio, qd32, a snapshot
retained), informational. ``--layout`` picks the candidate:

* ``file`` (the default pool layout): ``volumes/<n>.img`` in the pool filesystem,
  ``Pool.create_snapshot`` (FICLONE); ``--pool-fs xfs`` (default) or ``btrfs``;
* ``subvolume`` (the opt-in pool layout, engine/layouts.py): btrfs pool, each volume file
  alone in a subvolume; ``Pool.create_snapshot`` = a read-only subvolume snapshot
  (``BTRFS_IOC_SNAP_CREATE_V2``); ``--presync`` commits the pool's transaction first
  (``BTRFS_IOC_SYNC``, timed as part of the snapshot; a mounted volume's snapshot does it
  anyway, outside the freeze).

``--layout subvolume`` without ``--fragmented``: the fresh-volume runs above on a pool of
that layout (two images: btrfs).

With ``--mounted`` the two volumes are XFS filesystems, mounted, and fio, the fragmentation
and the probe write a data file filling each; snapshots then freeze (the engine: early copy,
keeper-held freeze for the catch-up only; the subvolume layout: freeze around the ioctl).

``--compare-expedite`` (with ``--mounted``): a third series, ``aged-plain``, the aged volume
snapshotted with the freeze keeper's expedited RCU grace periods off (engine/rcu.py): the
previous version at the same moment, for the stall. ``--compare-spare`` (with
``--mounted``): a series ``aged-cold``, the aged volume snapshotted after the idle spare
keeper is dropped, so its keeper starts cold (engine/spare.py): the call as it was before
spares, at the same moments.

Last line ``ratio=<p99 snapshot of the aged volume / 50 ms>`` (goal <= 1); the fresh
figures are printed beside it.

Runs as root; everything lives under its own home in /var/tmp and is removed at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import snapshot_aged
from benchhome import cleanup

from statehold.engine.ficlone import FICLONE
from statehold.engine.fiemap import file_extents
from statehold.engine.freeze import syncfs
from statehold.engine.names import parse_size
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, PoolSpec, Source, SourceKind, VolumeMode
from statehold.runner import run


def fill(device: str, size: int) -> float:
    """Write ``size`` bytes of data through the device; returns MiB/s."""
    t0 = time.perf_counter()
    run(["fio", "--name", "fill", "--filename", device, "--size", str(size), "--rw=write",
         "--bs=4M", "--ioengine=libaio", "--iodepth=8", "--direct=1", "--output-format=json"],
        timeout=1800)
    return size / (1 << 20) / (time.perf_counter() - t0)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the second largest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def measure(pool: Pool, volume: str, size: int, i: int, mounted: bool) -> tuple[float, float]:
    snap, clone = f"{volume}-s{i}", f"{volume}-c{i}"
    t0 = time.perf_counter()
    pool.create_snapshot(volume, snap, freeze=True)
    t1 = time.perf_counter()
    pool.create_volume(clone, size, mode=VolumeMode.FILESYSTEM if mounted else VolumeMode.BLOCK,
                       fs=FsType.XFS if mounted else None,
                       source=Source(SourceKind.SNAPSHOT, snap))
    t2 = time.perf_counter()
    pool.delete_volume(clone)
    pool.delete_snapshot(snap)
    settle(pool)
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def settle(pool: Pool) -> None:
    """syncfs the pool (untimed): XFS frees a deleted reflinked file's extents in the
    background (btrfs a deleted subvolume's tree), and that work must not land inside the
    next timed operation."""
    if pool.layout.name == "subvolume":
        run(["btrfs", "subvolume", "sync", str(pool.mountpoint)], timeout=1800)
    syncfs(str(pool.mountpoint))


def bare_ficlone(pool: Pool, volume: str) -> float:
    """The FICLONE ioctl alone (no flush, no fsync, no metadata): the size-dependent part."""
    src = pool.get_volume(volume).path
    dst = pool.mountpoint / f"bare-{volume}.img"
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        took = (time.perf_counter() - t0) * 1000
    finally:
        os.close(dst_fd)
        os.close(src_fd)
        dst.unlink()
        settle(pool)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", default="1Gi")
    parser.add_argument("--large", default="32Gi")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--mounted", action="store_true",
                        help="XFS volumes mounted and filled through the filesystem; snapshots "
                        "then fsfreeze around the FICLONE (default: attached block volumes)")
    snapshot_aged.add_options(parser)
    args = parser.parse_args()
    if args.fragmented:
        snapshot_aged.main(args)
        return
    sizes = {"small": parse_size(args.small), "large": parse_size(args.large)}

    home = Path(tempfile.mkdtemp(prefix="statehold-bench-snap-", dir="/var/tmp"))
    node = Node(home)
    pool: Pool | None = None
    ratio = float("nan")
    try:
        image_size = sum(sizes.values()) + 4 * GiB
        count = 2 if args.layout == "subvolume" else 1  # several disks: btrfs
        pool = node.create_pool(PoolSpec(
            name="bench", images=tuple(str(home / "disks" / f"bench-{i}.img") for i in range(count)),
            image_size=image_size, overprovision_ratio=float(len(sizes) + 2), layout=args.layout,
        ))
        print(f"pool: {pool.fs}, layout {pool.layout.name}", flush=True)
        for label, size in sizes.items():
            if args.mounted:
                pool.create_volume(label, size, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
                target = home / "mnt" / label
                target.mkdir(parents=True)
                pool.mount(label, target)
                free = shutil.disk_usage(target).free
                where = f"{target} (xfs)"
                rate = fill(str(target / "data"), free - free % (4 << 20) - (64 << 20))
            else:
                pool.create_volume(label, size, mode=VolumeMode.BLOCK, fs=None)
                where = pool.attach(label)
                rate = fill(where, size)
            extents = len(file_extents(pool.get_volume(label).path))
            print(f"{label}: {size / GiB:g} GiB on {where}, filled at {rate:.0f} MiB/s, "
                  f"{extents} extents", flush=True)

        # Let the fill's write-back drain, and warm caches: the runs then measure the
        # operations, not the tail of a 33 GiB write.
        run(["sync", "-f", str(pool.mountpoint)], timeout=1800)
        for label in sizes:
            measure(pool, label, sizes[label], -1, args.mounted)
        times: dict[tuple[str, str], list[float]] = {}
        for i in range(args.runs):
            for label in (("small", "large") if i % 2 == 0 else ("large", "small")):
                snap_ms, clone_ms = measure(pool, label, sizes[label], i, args.mounted)
                times.setdefault((label, "snapshot"), []).append(snap_ms)
                times.setdefault((label, "clone"), []).append(clone_ms)
                times.setdefault((label, "ficlone"), []).append(bare_ficlone(pool, label))

        print(f"{'volume':<8}{'op':<10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"   ({args.runs} runs)")
        for (label, op), vals in sorted(times.items()):
            print(f"{label:<8}{op:<10}{statistics.median(vals):>9.2f}{pct(vals, 90):>9.2f}"
                  f"{pct(vals, 99):>9.2f}{max(vals):>9.2f}")
        ratios = {
            op: pct(times[("large", op)], 99) / pct(times[("small", op)], 99)
            for op in ("snapshot", "clone")
        }
        bare = statistics.median(times[("large", "ficlone")]) / statistics.median(
            times[("small", "ficlone")])
        print(f"bare FICLONE: p50 large / p50 small = {bare:.3f} (informational)")
        for op, r in ratios.items():
            print(f"{op}: p99 large / p99 small = {r:.3f}")
        ratio = max(ratios.values())
    finally:
        cleanup(node, pool, home, list(sizes))
    print(f"ratio={ratio:.3f}")



if __name__ == "__main__":
    main()
