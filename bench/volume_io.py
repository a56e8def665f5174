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

Usage: ``.venv/bin/python bench/volume_io.py [--runtime 2] [--pairs 9] [--image-dir DIR]
[--no-tune]``. Runs as root; everything lives under its own home in /var/tmp (and the
pool image in ``--image-dir`` when given) and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchhome import cleanup

from statehold.engine.node import Node
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


def tune(device: str) -> dict[str, str]:
    """Queue settings the engine controls on its loop devices; returns what was set."""
    queue = Path("/sys/block") / device.removeprefix("/dev/") / "queue"
    done: dict[str, str] = {}
    # no elevator (the pool filesystem below schedules), no merge attempts for what the
    # filesystem above already sized, no per-device accounting, completions on the submitter
    knobs = (("scheduler", "none"), ("nomerges", "2"), ("iostats", "0"), ("rq_affinity", "2"))
    for knob, value in knobs:
        path = queue / knob
        try:
            path.write_text(value)
            done[knob] = path.read_text().strip()
        except OSError as exc:
            done[knob] = f"unchanged ({exc.strerror})"
    return done


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
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="statehold-bench-io-", dir="/var/tmp"))
    node = Node(home)
    pool = None
    try:
        image_dir = Path(args.image_dir) if args.image_dir else home / "disks"
        image = image_dir / f"{home.name}-pool.img"  # unique: named after our own home
        pool = node.create_pool(PoolSpec(name="bench", images=(str(image),), image_size=4 * GiB))
        print(f"pool: XFS on {image} (sparse image, loop-attached by the engine)")
        pool.create_volume("io", SIZE, mode=VolumeMode.BLOCK, fs=None)
        device = pool.attach("io")
        settings = {} if args.no_tune else tune(device)
        baseline = str(pool.mountpoint / "baseline.img")
        print(f"volume: {device} (block-mode volume, direct I/O, 4096-byte sectors) {settings}")
        print(f"baseline: {baseline} (plain file in the pool filesystem, O_DIRECT)")
        for target in (device, baseline):
            fill(target)

        ratios: dict[str, float] = {}
        print(f"{'job':<20}{'volume':>14}{'baseline':>14}{'ratio':>8}   (median of {args.pairs} pairs)")
        for job in JOBS:
            vols, bases, pair_ratios = [], [], []
            for i in range(args.pairs):
                # adjacent in time, order alternating: drift of the host disk cancels out
                order = (device, baseline) if i % 2 == 0 else (baseline, device)
                got = {t: fio(t, job, args.runtime) for t in order}
                vols.append(got[device])
                bases.append(got[baseline])
                pair_ratios.append(got[device] / got[baseline])
            vol, base = statistics.median(vols), statistics.median(bases)
            ratios[job.name] = statistics.median(pair_ratios)
            unit = "IOPS" if job.metric == "iops" else "MiB/s"
            scale = 1.0 if job.metric == "iops" else 1 / 1024
            print(f"{job.name:<20}{vol * scale:>9.0f} {unit:<5}{base * scale:>8.0f} {unit:<5}"
                  f"{ratios[job.name]:>8.3f}   pairs: "
                  + " ".join(f"{r:.2f}" for r in pair_ratios), flush=True)
    finally:
        cleanup(node, pool, home, ["io"])
    print(f"ratio={min(ratios.values()):.3f}")



if __name__ == "__main__":
    main()
