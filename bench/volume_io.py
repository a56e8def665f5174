"""Volume I/O: fio on a Statehold volume versus the same fio on a plain file, same pool.

What is compared (same run, same pool filesystem, same fio job file):

* volume:   the block device of a block-mode volume (``/dev/loopN``, attached by the
            engine with direct I/O and 4096-byte logical blocks), 1 GiB of it;
* baseline: a plain 1 GiB file in the pool's own filesystem, opened by fio with O_DIRECT.

Jobs: 4k random read and 4k random write at iodepth 32 (libaio, direct=1) and 1 MiB
sequential write. Both targets are filled with data first (so neither pays for block
allocation). The host's virtual disk drifts by tens of percent within seconds, so each job
runs as many short volume/baseline pairs, adjacent in time with alternating order, and
the job's ratio is the median of the pair ratios. Prints both sides (medians), every pair
ratio, and last ``ratio=<min of the job ratios>``.

With ``--layout subvolume`` the pool is btrfs on two images, of the opt-in ``subvolume``
layout (the volume's file alone in a btrfs subvolume, engine/layouts.py); the baseline is
still a plain file in that (btrfs) pool filesystem, and a second baseline, a plain file in
an XFS pool beside it (what the default layout's volumes sit on), is run in the same
rounds: ``vs XFS file`` is what choosing the layout costs.

With ``--snapshots`` every round starts with a fresh snapshot of each target (the engine's
snapshot of the volume, a reflink of each baseline file; the previous one deleted): the
shape of a volume under scheduled snapshots, where a write to a block the snapshot shares
copies it first, on XFS and on btrfs alike.

Usage: ``.venv/bin/python bench/volume_io.py [--runtime 2] [--pairs 9] [--image-dir DIR]
[--no-tune] [--layout file|subvolume] [--snapshots]``. Runs as root; everything lives under its own home
in /var/tmp (and the pool images in ``--image-dir`` when given) and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchhome import cleanup

from statehold.engine.ficlone import reflink
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import GiB, PoolSpec, VolumeMode
from statehold.runner import run

SIZE = 1 * GiB


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    rw: str
    bs: str
    iodepth: int
    metric: str  # "iops" or "bw" (KiB/s)


JOBS = (
    Job("randread-4k-qd32", "randread", "4k", 32, "iops"),
    Job("randwrite-4k-qd32", "randwrite", "4k", 32, "iops"),
    Job("seqwrite-1m", "write", "1M", 8, "bw"),
)


def fio(target: str, job: Job, runtime: int) -> float:
    """Run one fio job on target; return IOPS or bandwidth (KiB/s) of the job's direction."""
    argv = [
        "fio", "--name", job.name, "--filename", target, "--size", str(SIZE),
        "--ioengine=libaio", "--direct=1", f"--rw={job.rw}", f"--bs={job.bs}",
        f"--iodepth={job.iodepth}", "--numjobs=1", "--time_based", f"--runtime={runtime}",
        "--ramp_time=500ms", "--randrepeat=0", "--norandommap", "--group_reporting",
        "--output-format=json",
    ]
    out = json.loads(run(argv, timeout=runtime + 120).stdout)
    side = out["jobs"][0]["read" if "read" in job.rw else "write"]
    return float(side[job.metric])


def fill(target: str) -> None:
    """Write every block once so later jobs measure I/O, not allocation."""
    run(["fio", "--name", "fill", "--filename", target, "--size", str(SIZE), "--rw=write",
         "--bs=4M", "--ioengine=libaio", "--iodepth=4", "--direct=1", "--output-format=json"],
        timeout=600)


def _queue_dir(device: str) -> Path:
    return Path("/sys/block") / device.removeprefix("/dev/") / "queue"


def _queue_value(text: str) -> str:
    """A queue knob's value as it can be written back (``[none] mq-deadline`` -> ``none``)."""
    text = text.strip()
    if "[" in text:
        return text[text.index("[") + 1:text.index("]")]
    return text


def untune(device: str, previous: dict[str, str]) -> None:
    """Put the device's queue settings back: they outlive the detach, and the next volume
    on this loop device must not inherit them (iostats=0 would freeze its I/O counters)."""
    queue = _queue_dir(device)
    for knob, value in previous.items():
        with contextlib.suppress(OSError):  # a knob this kernel refuses stays as it is
            (queue / knob).write_text(value)


def tune(device: str, previous: dict[str, str] | None = None) -> dict[str, str]:
    """Queue settings the engine controls on its loop devices; returns what was set and
    records the settings it replaced in ``previous`` (for :func:`untune`)."""
    queue = _queue_dir(device)
    done: dict[str, str] = {}
    # no elevator (the pool filesystem below schedules), no merge attempts for what the
    # filesystem above already sized, no per-device accounting, completions on the submitter
    knobs = (("scheduler", "none"), ("nomerges", "2"), ("iostats", "0"), ("rq_affinity", "2"))
    for knob, value in knobs:
        path = queue / knob
        try:
            if previous is not None:
                previous[knob] = _queue_value(path.read_text())
            path.write_text(value)
            done[knob] = path.read_text().strip()
        except OSError as exc:
            done[knob] = f"unchanged ({exc.strerror})"
    return done


SNAPSHOT = "io-snap"


def resnapshot(pool: Pool, baselines: dict[str, str]) -> None:
    """Replace the volume's snapshot and each baseline file's reflink copy with new ones."""
    drop_snapshots(pool, baselines)
    pool.create_snapshot("io", SNAPSHOT, freeze=False)
    for path in baselines.values():
        reflink(Path(path), Path(path + ".snap"))


def drop_snapshots(pool: Pool, baselines: dict[str, str]) -> None:
    if any(s.name == SNAPSHOT for s in pool.list_snapshots("io")):
        pool.delete_snapshot(SNAPSHOT)
    for path in baselines.values():
        Path(path + ".snap").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtime", type=int, default=2, help="seconds per fio run")
    parser.add_argument("--pairs", type=int, default=9, help="volume/baseline pairs per job")
    parser.add_argument(
        "--image-dir",
        help="where the pool's disk image lives (default: the bench home in /var/tmp; "
        "/dev/shm takes the host disk's noise out and leaves the CPU cost of the layers)",
    )
    parser.add_argument("--no-tune", action="store_true", help="leave queue settings as attached")
    parser.add_argument("--layout", choices=("file", "subvolume"), default="file",
                        help="the pool layout of the volume (subvolume: btrfs on two images)")
    parser.add_argument("--snapshots", action="store_true",
                        help="a fresh snapshot of every target before each round")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="statehold-bench-io-", dir="/var/tmp"))
    node = Node(home)
    pool = None
    xfs_pool = None
    device: str | None = None
    tuned: dict[str, str] = {}
    ratios: dict[str, float] = {}
    baselines: dict[str, str] = {}
    try:
        image_dir = Path(args.image_dir) if args.image_dir else home / "disks"
        count = 2 if args.layout == "subvolume" else 1
        images = tuple(str(image_dir / f"{home.name}-pool{i}.img") for i in range(count))
        pool = node.create_pool(PoolSpec(name="bench", images=images, image_size=4 * GiB,
                                         layout=args.layout))
        print(f"pool: {pool.fs} on {', '.join(images)} (sparse images, loop-attached by the "
              f"engine), layout {pool.layout.name}")
        pool.create_volume("io", SIZE, mode=VolumeMode.BLOCK, fs=None)
        device = pool.attach("io")
        settings = {} if args.no_tune else tune(device, tuned)
        baselines["baseline"] = str(pool.mountpoint / "baseline.img")
        print(f"volume: {device} (block-mode volume, direct I/O, 4096-byte sectors) {settings}")
        print(f"baseline: {baselines['baseline']} (plain file in the pool filesystem, O_DIRECT)")
        if args.layout == "subvolume":
            xfs_pool = node.create_pool(PoolSpec(
                name="benchxfs", images=(str(image_dir / f"{home.name}-xfs.img"),),
                image_size=4 * GiB))
            baselines["xfs file"] = str(xfs_pool.mountpoint / "baseline.img")
            print(f"xfs file: {baselines['xfs file']} (plain file in an XFS pool, O_DIRECT)")
        for target in (device, *baselines.values()):
            fill(target)

        if args.snapshots:
            print("each round starts with a fresh snapshot of every target (--snapshots)")
        print(f"{'job':<20}{'volume':>14}" + "".join(f"{n:>14}{'ratio':>8}" for n in baselines)
              + f"   (median of {args.pairs} rounds)")
        for job in JOBS:
            got_all: dict[str, list[float]] = {t: [] for t in (device, *baselines.values())}
            round_ratios: dict[str, list[float]] = {n: [] for n in baselines}
            targets = [device, *baselines.values()]
            for i in range(args.pairs):
                # adjacent in time, order rotating: drift of the host disk cancels out
                order = targets[i % len(targets):] + targets[:i % len(targets)]
                if args.snapshots:
                    resnapshot(pool, baselines)
                got = {t: fio(t, job, args.runtime) for t in order}
                for t, v in got.items():
                    got_all[t].append(v)
                for n, t in baselines.items():
                    round_ratios[n].append(got[device] / got[t])
            unit = "IOPS" if job.metric == "iops" else "MiB/s"
            scale = 1.0 if job.metric == "iops" else 1 / 1024
            line = f"{job.name:<20}{statistics.median(got_all[device]) * scale:>9.0f} {unit:<5}"
            for n, t in baselines.items():
                r = statistics.median(round_ratios[n])
                if n == "baseline":
                    ratios[job.name] = r
                else:
                    ratios[f"{job.name} vs {n}"] = r
                line += f"{statistics.median(got_all[t]) * scale:>8.0f} {unit:<5}{r:>8.3f}"
            print(line + "   rounds: " + " ".join(f"{r:.2f}" for r in round_ratios["baseline"]),
                  flush=True)
    finally:
        if pool is not None and args.snapshots:
            with contextlib.suppress(Exception):  # cleanup reports what stays behind
                drop_snapshots(pool, baselines)
        if device is not None and tuned:
            untune(device, tuned)
        if xfs_pool is not None:
            node.destroy_pool(xfs_pool.name)
        cleanup(node, pool, home, ["io"])
    if args.layout == "subvolume":
        print("vs XFS file: " + ", ".join(f"{k.split(' vs ')[0]} {v:.3f}"
                                          for k, v in ratios.items() if " vs " in k))
    print(f"ratio={min(v for k, v in ratios.items() if ' vs ' not in k):.3f}")



if __name__ == "__main__":
    main()
