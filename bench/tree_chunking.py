"""Tree backups of shifted content: content-defined chunking (format 2) against aligned
slices (format 1) and restic, on the same shared-volume tree and the same day of edits.

    .venv/bin/python bench/tree_chunking.py      (as root: it makes its own XFS loop fixture)

The tree is shaped like what sits on a shared volume and changes by shifting: a plain-SQL
dump (rows inserted into and deleted from the middle of its tables every day), a tar archive
of a directory one of whose early members grew (everything after it moves), an application
log that is appended to, and files that do not change. Both of ours use 256 KiB chunks, so
the difference between them is the chunking alone.

Measured per tool: the full backup's time, the next day's incremental time and how much the
repository grew with it (bytes a user pays for in the target). Last line:
``ratio=<repository growth of our content-defined incremental / restic's>`` (lower is
better: 1 matches restic, which also cuts by content); the aligned-slice growth is printed
beside it, as is the full backup's speed-up over restic.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup import PASSWORD, MiB, _noise, du, restic, xfs_fixture

KiB = 1 << 10
CHUNK = 256 * KiB
TABLES = ("orders", "order_items", "customers", "events")


def _row(rnd: random.Random, table: str, n: int) -> bytes:
    return (f"{n}\t{table[:3]}-{rnd.randrange(10**9):09d}\t{rnd.randrange(10**6)}\t"
            f"2026-11-{rnd.randint(1, 30):02d} {rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}\t"
            f"{'x' * rnd.randint(10, 90)}\t{rnd.random():.6f}\n").encode()


def make_dump(rows_per_table: int, seed: int, inserted: dict[tuple[str, int], int],
              deleted: set[tuple[str, int]]) -> bytes:
    """A pg_dump-like plain SQL file: COPY blocks of tab-separated rows. ``inserted`` adds
    that many new rows after row (table, i); ``deleted`` leaves rows out."""
    out = io.BytesIO()
    out.write(b"-- PostgreSQL database dump\nSET statement_timeout = 0;\n")
    for t, table in enumerate(TABLES):
        rnd = random.Random(seed * 1000 + t)
        extra = random.Random(seed * 1000 + t + 500)
        out.write(f"\nCOPY public.{table} (id, ref, amount, at, note, score) FROM stdin;\n".encode())
        for i in range(rows_per_table):
            row = _row(rnd, table, i)  # drawn even when deleted: later rows stay the same
            if (table, i) not in deleted:
                out.write(row)
            for k in range(inserted.get((table, i), 0)):
                out.write(_row(extra, table, rows_per_table + i * 100 + k))
        out.write(b"\\.\n")
    return out.getvalue()


def make_tar(path: Path, grown: int) -> None:
    """An archive of 40 members of 2 MiB (noise); the third member is ``grown`` bytes longer."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(40):
            body = _noise(2 * MiB + (grown if i == 2 else 0), 700 + i)
            info = tarfile.TarInfo(f"site/assets/part{i:02d}.bin")
            info.size, info.mtime = len(body), 1_764_000_000
            tar.addfile(info, io.BytesIO(body))


def build_day(root: Path, day: int) -> None:
    rnd = random.Random(42)
    rows = 600_000
    inserted: dict[tuple[str, int], int] = {}
    deleted: set[tuple[str, int]] = set()
    if day > 0:
        for _ in range(60):  # new rows in 60 places, a few hundred deleted
            inserted[(rnd.choice(TABLES), rnd.randrange(rows))] = rnd.randint(5, 60)
        deleted = {(rnd.choice(TABLES), rnd.randrange(rows)) for _ in range(300)}
    (root / "dumps").mkdir(exist_ok=True)
    (root / "dumps" / "shop.sql").write_bytes(make_dump(rows, 1, inserted, deleted))
    make_tar(root / "site.tar", 10 * KiB if day > 0 else 0)
    log = root / "app.log"
    with open(log, "ab") as f:
        f.write(_noise(24 * MiB, 900 + day).hex().encode()[: 24 * MiB])  # a day of log lines
    static = root / "static"
    if day == 0:
        static.mkdir()
        for i in range(8):
            (static / f"img{i}.jpg").write_bytes(_noise(4 * MiB, 800 + i))
    os.sync()


def ours_tree(repo: Path, version: int, root: Path, parent: str | None) -> tuple[float, str]:
    """One tree backup of ours in a child process: (seconds, backup id)."""
    start = time.monotonic()
    out = subprocess.run([sys.executable, __file__, "--child", str(repo), str(version), str(root),
                          parent or ""], check=True, capture_output=True, text=True).stdout
    return time.monotonic() - start, json.loads(out)["id"]


def child(repo_dir: str, version: str, root: str, parent: str) -> None:
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.repository import Repository
    from statehold.backup.tree import backup_tree

    store = DirectoryStore(Path(repo_dir))
    if not (Path(repo_dir) / "config").exists():
        if version == "1":
            Repository.init(store, PASSWORD, chunk_size=CHUNK)
        else:
            Repository.init(store, PASSWORD, version=2, chunk_size=CHUNK)
    repo = Repository.open(store, PASSWORD)
    m = backup_tree(repo, Path(root), volume="bench/shared",
                    parent=repo.load_manifest(parent) if parent else None)
    print(json.dumps({"id": m.backup_id}))


def main() -> None:
    targets = Path(tempfile.mkdtemp(prefix="statehold-bench-tree-", dir="/var/tmp"))
    os.environ["STATEHOLD_BACKUP_CACHE"] = str(targets / "index-cache")
    try:
        with xfs_fixture(8 << 30) as fs:
            tree = fs / "tree"
            tree.mkdir()
            build_day(tree, 0)
            size = du(tree)
            print(f"data: {size / MiB:.0f} MiB tree (dump {du(tree / 'dumps') / MiB:.0f} MiB)",
                  flush=True)
            results: dict[str, tuple[float, float, int, int]] = {}
            runs = {"restic": None, "ours, content-defined (format 2)": 2,
                    "ours, aligned slices (format 1)": 1}
            restic_repo = targets / "restic-repo"
            restic(restic_repo, "init", "--repository-version", "2")
            firsts: dict[str, str] = {}
            for name, version in runs.items():
                repo = targets / f"repo-{version}"
                if version is None:
                    full, _ = restic(restic_repo, "backup", "-q", ".", cwd=tree)
                    results[name] = (full, 0.0, du(restic_repo), 0)
                else:
                    full, firsts[name] = ours_tree(repo, version, tree, None)
                    results[name] = (full, 0.0, du(repo), 0)
            build_day(tree, 1)
            for name, version in runs.items():
                full, _, before, _ = results[name]
                if version is None:
                    inc, _ = restic(restic_repo, "backup", "-q", ".", cwd=tree)
                    after = du(restic_repo)
                else:
                    repo = targets / f"repo-{version}"
                    inc, _ = ours_tree(repo, version, tree, firsts[name])
                    after = du(repo)
                results[name] = (full, inc, before, after - before)
            print("| tool | full backup | next day's incremental | repository grew by |")
            print("|---|---|---|---|")
            for name, (full, inc, _, grew) in results.items():
                print(f"| {name} | {full:.2f} s | {inc:.2f} s | {grew / MiB:.1f} MiB |")
            r = results["restic"]
            cdc = results["ours, content-defined (format 2)"]
            fixed = results["ours, aligned slices (format 1)"]
            print(f"full backup speed-up over restic: {r[0] / cdc[0]:.2f}x (content-defined), "
                  f"{r[0] / fixed[0]:.2f}x (aligned); growth, aligned / content-defined: "
                  f"{fixed[3] / max(cdc[3], 1):.1f}x")
            print(f"ratio={cdc[3] / max(r[3], 1):.3f}")
    finally:
        shutil.rmtree(targets, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
