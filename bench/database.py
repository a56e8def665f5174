"""A real database on each pool layout: PostgreSQL's pgbench on a volume of the default
layout (a file per volume in an XFS pool) and of the opt-in ``subvolume`` layout (a btrfs
subvolume per volume, written in place), same run, with a frozen snapshot of each volume
taken while the database runs, as scheduled snapshots are.

What it answers (issue 14): what the subvolume layout costs a database, rather than fio's
4 KiB random writes at queue depth 32 (``bench/volume_io.py``); what each layout's snapshot
costs as the volume ages under the database's own writes; and how long the database's
transactions wait while a snapshot is taken.

Setup: two pools made by the engine, each on one sparse image under the bench's own home
in /var/tmp (XFS; btrfs of layout ``subvolume``), one filesystem volume (XFS inside) in
each, mounted by the engine; a PostgreSQL cluster on each (Debian's binaries, unix socket
only, its own port, a checkpoint every 30 s so data pages and not only WAL reach the
volume), ``pgbench -i -s <scale>``. Then ``--rounds`` rounds, the order of the two
alternating: ``pgbench -c <clients> -j 2 -T <seconds> -M prepared -n -l`` on one cluster,
then on the other; half-way through each run the engine takes a frozen snapshot of that
volume (``Pool.create_snapshot(freeze=True)``) and the previous round's is deleted, so one
stays retained and the first write to each block after it copies the block.

Per run: TPS; **snap** = the snapshot call; **stall** = the longest transaction that
overlapped the call (from pgbench's per-transaction log: what the database's clients
felt); **p99** = the 99th percentile of the other transactions of the run (the database's
own tail). At the end: the extents of each volume's backing file at the start and the end
(how far the database's writes aged it), medians and maxima, and the last line
``ratio=<median over rounds of subvolume TPS / file TPS>`` (1 = the layout costs the
database nothing).

Usage: ``.venv/bin/python bench/database.py [--scale 50] [--rounds 12] [--seconds 20]
[--clients 8] [--no-snapshots]``. Runs as root; everything lives under its own home in
/var/tmp and is removed at the end, even on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchhome import cleanup
from pgcluster import Postgres

from statehold.engine.fiemap import raw_extents
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, PoolSpec, VolumeMode

VOLUME = "db"
LAYOUTS = ("file", "subvolume")
TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)


def pgbench(pg: Postgres, *args: str) -> str:
    proc = pg.pgbench(*args)
    out, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {err[-2000:]}")
    return out


@dataclass(frozen=True, slots=True)
class Round:
    tps: float
    p99: float                # ms, transactions that did not overlap the snapshot
    snapshot: float | None    # ms, the create_snapshot call
    stall: float              # ms, the longest transaction overlapping the snapshot call


def one_round(pool: Pool, pg: Postgres, snap: str | None, args: argparse.Namespace,
              prefix: Path) -> Round:
    """One pgbench run with every transaction logged; a snapshot ``snap`` of the volume
    taken half-way through it."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    proc = pg.pgbench("-c", str(args.clients), "-j", "2", "-T", str(args.seconds),
                      "-M", "prepared", "-n", "-l", f"--log-prefix={prefix}")
    span = None
    try:
        if snap is not None:
            time.sleep(args.seconds / 2)  # pacing: the snapshot lands mid-run
            t0 = time.time()  # wall clock: pgbench logs epoch times
            pool.create_snapshot(VOLUME, snap, freeze=True)
            span = (t0, time.time())
        out, err = proc.communicate(timeout=args.seconds + 600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err[-2000:]}")
    found = TPS.search(out)
    if found is None:
        raise RuntimeError(f"no TPS in pgbench's output: {out[-500:]}")
    inside, outside = [], []
    for log in prefix.parent.glob(prefix.name + ".*"):
        for line in log.read_text().splitlines():
            # client transaction latency_us script epoch_s epoch_us
            f = line.split()
            latency = int(f[2]) / 1000
            end = int(f[4]) + int(f[5]) / 1e6
            overlaps = span is not None and end >= span[0] and end - latency / 1000 <= span[1]
            (inside if overlaps else outside).append(latency)
    outside.sort()
    p99 = outside[int(len(outside) * 0.99)] if outside else float("nan")
    return Round(float(found.group(1)), p99, None if span is None else
                 (span[1] - span[0]) * 1000, max(inside, default=0.0))


def extents(pool: Pool) -> int:
    return len(raw_extents(pool.get_volume(VOLUME).path, sync=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=50, help="pgbench -i -s (16 MB each)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=20, help="pgbench -T per run")
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="no snapshot during the runs: the volumes are never shared")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    home = Path(tempfile.mkdtemp(prefix="statehold-bench-db-", dir="/var/tmp"))
    node = Node(home)
    pools: dict[str, Pool] = {}
    pgs: dict[str, Postgres] = {}
    ratio = float("nan")
    try:
        size = 4 * GiB + args.scale * 40 * 2**20  # the database, its WAL and room to spare
        for i, layout in enumerate(LAYOUTS):
            images = (str(home / "disks" / f"{layout}.img"),)  # one disk each
            pool = node.create_pool(PoolSpec(name=f"db{layout}", images=images,
                                             image_size=2 * size, layout=layout))
            pools[layout] = pool
            pool.create_volume(VOLUME, size, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
            mnt = home / "mnt" / layout
            mnt.mkdir(parents=True)
            pool.mount(VOLUME, mnt)
            pg = Postgres(home, port=5440 + i)
            pgs[layout] = pg
            pg.setup(mnt, "checkpoint_timeout=30s", "max_wal_size=1GB")
            t0 = time.monotonic()
            pgbench(pg, "-i", "-q", "-s", str(args.scale))
            print(f"{layout}: pool {pool.fs}, volume {size / GiB:.1f} GiB, pgbench -i -s "
                  f"{args.scale} in {time.monotonic() - t0:.0f} s", flush=True)
        first = {layout: extents(pool) for layout, pool in pools.items()}

        tps: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        snaps: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        stalls: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        tails: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        ratios: list[float] = []
        print(f"{'round':<6}" + "".join(f"{n + ' TPS':>15}{'snap':>8}{'stall':>8}{'p99':>6}"
                                        for n in LAYOUTS) + f"{'ratio':>7}   (ms)", flush=True)
        for r in range(args.rounds):
            order = LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]
            got: dict[str, Round] = {}
            for layout in order:
                snap = None if args.no_snapshots else f"r{r}"
                got[layout] = one_round(pools[layout], pgs[layout], snap, args,
                                        home / "logs" / f"{layout}-{r}")
                if snap is not None and r > 0:
                    pools[layout].delete_snapshot(f"r{r - 1}")
                done = got[layout]
                tps[layout].append(done.tps)
                tails[layout].append(done.p99)
                if done.snapshot is not None:
                    snaps[layout].append(done.snapshot)
                    stalls[layout].append(done.stall)
            ratios.append(got["subvolume"].tps / got["file"].tps)
            print(f"{r:<6}" + "".join(
                f"{got[n].tps:>15.0f}{got[n].snapshot or 0:>8.0f}{got[n].stall:>8.0f}"
                f"{got[n].p99:>6.0f}" for n in LAYOUTS) + f"{ratios[-1]:>7.3f}", flush=True)
        last = {layout: extents(pool) for layout, pool in pools.items()}
        for layout in LAYOUTS:
            line = (f"{layout}: TPS median {statistics.median(tps[layout]):.0f}; backing file "
                    f"{first[layout]} -> {last[layout]} extents; transaction latency p99 "
                    f"{statistics.median(tails[layout]):.1f} ms (median of the runs)")
            if snaps[layout]:
                line += (f"; snapshot p50 {statistics.median(snaps[layout]):.0f} ms, max "
                         f"{max(snaps[layout]):.0f} ms; stall p50 "
                         f"{statistics.median(stalls[layout]):.0f} ms, max "
                         f"{max(stalls[layout]):.0f} ms")
            print(line)
        ratio = statistics.median(ratios)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
    finally:
        for pg in pgs.values():
            pg.close()
        for pool in pools.values():
            for snap in pool.list_snapshots():
                pool.delete_snapshot(snap.name)
        second = pools.get("subvolume")
        if second is not None:
            try:
                cleanup_pool(node, second)
            except Exception as exc:  # keep cleaning: report, then fall through
                print(f"warning: {second.name}: {exc}", file=sys.stderr)
        cleanup(node, pools.get("file"), home, [VOLUME])
    print(f"ratio={ratio:.3f}")


def cleanup_pool(node: Node, pool: Pool) -> None:
    """The second pool's volume and the pool itself; :func:`benchhome.cleanup` does the
    first pool, the node and whatever loop device is left under the home."""
    if not any(v.name == VOLUME for v in pool.list_volumes()):
        node.destroy_pool(pool.name)
        return
    for target in pool.get_volume(VOLUME).mounts:
        pool.unmount(VOLUME, Path(target))
    pool.detach(VOLUME)
    pool.delete_volume(VOLUME)
    node.destroy_pool(pool.name)


if __name__ == "__main__":
    main()
