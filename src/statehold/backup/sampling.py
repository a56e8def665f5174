"""Verify a slice of a repository's stored data (``verify --read-data-subset``).

A deep verify reads every chunk a backup names: on a large repository that is days of
reading. A subset reads a part of the stored objects in full, so the whole repository is
checked a slice at a time:

* ``n/m``: the objects whose id hashes to slice ``n`` of ``m`` (``1/5`` .. ``5/5`` are
  disjoint and together read every object exactly once, whatever was added between the
  runs: an object's slice depends on its id only);
* ``N%``: N percent of the objects (rounded, at least one), chosen by a seeded hash of
  each id, so the same ``--seed`` picks the same objects again and another seed others.

The objects are packs in format 2 (format §11.2) and chunk objects in format 1 (§2). A
chosen pack is read whole: its header is decoded, every chunk blob in it decrypted and
re-hashed against its id (and against the length a backup expects, when one names it),
and the index's entries for its chunks compared with the header, so damage is found
whether or not a backup still needs the data. Each finding names the object and the
backups it breaks.

Memory stays flat: the selection holds only the chosen objects (plus a margin, never the
whole listing), each worker holds one ranged read of at most :data:`MAX_RANGE` bytes.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from statehold.backup import chunkstore
from statehold.backup.packs import PACK_PREFIX, Entry, blob_key, decode_header, header_length, pack_id_of
from statehold.backup.repository import Repository
from statehold.backup.store import ObjectInfo
from statehold.errors import Corrupt, InvalidArgument, NotFound

MAX_RANGE = 8 << 20
"""Largest ranged read of one pack (one chunk blob larger than that is read alone)."""

Found = Callable[[str, str, str, tuple[str, ...], str], None]
"""found(what, name, detail, backups, quarantined): one damaged object (verify's Problem)."""
Progress = Callable[[int, int], None]

_SLICE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class Subset:
    """Which stored objects a verify reads: slice ``part`` of ``parts``, or ``percent``."""

    part: int = 0
    parts: int = 0
    percent: float = 0.0
    seed: int | None = None
    """For ``percent``: the hash seed (None: a random one, reported so a run can be repeated)."""

    @classmethod
    def parse(cls, text: str, seed: int | None = None) -> Subset:
        """``n/m`` (1 ≤ n ≤ m) or ``N%`` (0 < N ≤ 100); InvalidArgument otherwise."""
        if m := _SLICE.match(text):
            part, parts = int(m.group(1)), int(m.group(2))
            if not 1 <= part <= parts:
                raise InvalidArgument(f"subset {text!r}: n/m needs 1 <= n <= m")
            if seed is not None:
                raise InvalidArgument("--seed applies to a percentage, not to a slice n/m "
                                      "(slices are fixed by the objects' ids)")
            return cls(part=part, parts=parts)
        if m := _PERCENT.match(text):
            percent = float(m.group(1))
            if not 0 < percent <= 100:
                raise InvalidArgument(f"subset {text!r}: a percentage must be in (0, 100]")
            return cls(percent=percent, seed=seed)
        raise InvalidArgument(f"subset {text!r} is neither n/m (e.g. 2/5) nor N% (e.g. 10%)")

    def resolved(self) -> Subset:
        """This subset with a seed fixed (a random one when a percentage has none)."""
        if self.parts or self.seed is not None:
            return self
        return Subset(percent=self.percent, seed=secrets.randbits(32))

    def describe(self) -> str:
        if self.parts:
            return f"{self.part}/{self.parts}"
        return f"{self.percent:g}%" + (f" (seed {self.seed})" if self.seed is not None else "")

    def slice_of(self, oid: bytes) -> int:
        """The 1-based slice of ``m`` an object id falls in (fixed by the id alone)."""
        digest = hashlib.blake2b(oid, digest_size=8, person=b"sh-verify-slice").digest()
        return int.from_bytes(digest, "big") % self.parts + 1

    def score(self, oid: bytes) -> float:
        """A uniform number in [0, 1) per (seed, id): the lowest scores are chosen."""
        salt = (self.seed or 0).to_bytes(8, "big", signed=False)
        digest = hashlib.blake2b(oid, digest_size=8, salt=salt, person=b"sh-verify-pct").digest()
        return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Sampled:
    """What a subset verify read."""

    subset: str
    """As given, with the seed used (``10% (seed 1234)``)."""
    objects: str
    """``packs`` (format 2) or ``chunks`` (format 1)."""
    total: int
    """Objects in the repository when listed."""
    read: int
    """Objects chosen and read."""
    bytes_read: int
    """Stored bytes of the objects read."""
    chunks_checked: int
    plain_bytes: int
    """Plaintext bytes decrypted and re-hashed."""


Item = tuple[bytes, ObjectInfo]


def choose(subset: Subset, listing: Callable[[], Iterable[Item]]) -> tuple[list[Item], int]:
    """The chosen ``(id, object)`` pairs of ``listing()`` and how many it listed.

    A slice filters while listing. A percentage needs the count before it knows how many
    to keep: it keeps the candidates scoring below a margin over the share (about 1.2 times the
    objects it will read) while counting, then the lowest-scoring ``k``; in the rare case
    the margin held too few it lists again keeping the ``k`` lowest (a heap of ``k``)."""
    if subset.parts:
        total = 0
        out: list[Item] = []
        for item in listing():
            total += 1
            if subset.slice_of(item[0]) == subset.part:
                out.append(item)
        return out, total
    share = subset.percent / 100.0
    margin = min(1.0, share * 1.2 + 0.02)
    total = 0
    candidates: list[tuple[float, bytes, ObjectInfo]] = []
    for oid, info in listing():
        total += 1
        s = subset.score(oid)
        if s < margin:
            candidates.append((s, oid, info))
    k = min(total, max(1, round(share * total))) if total else 0
    if len(candidates) < k:
        candidates = heapq.nsmallest(k, ((subset.score(o), o, i) for o, i in listing()))
    return [(o, i) for _, o, i in heapq.nsmallest(k, candidates)], total


def packs_listed(repo: Repository) -> Iterator[Item]:
    for info in repo.store.list(PACK_PREFIX):
        try:
            yield pack_id_of(info.key), info
        except Corrupt:
            continue  # not a pack key: quick verify and gc ignore it too


def chunks_listed(repo: Repository) -> Iterator[Item]:
    for info in repo.store.list("chunks/"):
        try:
            yield bytes.fromhex(info.key.rpartition("/")[2]), info
        except ValueError:
            continue


def read_subset(repo: Repository, subset: Subset, users: Mapping[bytes, Sequence[str]],
                lengths: Mapping[bytes, int], found: Found, *, parallel: int = 8,
                progress: Progress | None = None, quarantine: bool = False,
                on_damaged_blob: Callable[[Entry], None] | None = None) -> Sampled:
    """Read the subset's objects of ``repo`` in full (the caller holds a lock and, in
    format 2, synced the index cache); report each damaged object through ``found``.
    ``users``/``lengths``: the backups naming each chunk and its plaintext length.
    ``quarantine`` moves damaged chunk objects (format 1) aside; a damaged blob inside a
    pack (format 2) cannot be moved alone, so its header entry goes to ``on_damaged_blob``
    (from the workers) for the caller to unindex once every read is done."""
    subset = subset.resolved()
    packed = chunkstore.packed(repo)
    chosen, total = choose(subset, (lambda: packs_listed(repo)) if packed else (lambda: chunks_listed(repo)))
    todo = sum(info.size for _, info in chosen)
    tally = _Tally(progress, todo)

    def backups(cid: bytes) -> tuple[str, ...]:
        return tuple(sorted(set(users.get(cid, ()))))

    def check(cid: bytes, blob: bytes | memoryview, where: str, live: Callable[[], bool]) -> int:
        """One chunk blob: decrypted, re-hashed; its plaintext length, DAMAGED, or DEAD for
        a damaged copy that no index entry places here. No backup reads a dead copy (one
        whose entry a quarantine dropped, the chunk since stored again elsewhere, or a
        duplicate): reporting it would name backups that restore fine and fail every
        verify until gc happened to rewrite its pack."""
        problem = ""
        try:
            data = repo.codec.decode(blob_key(cid), bytes(blob))
        except Corrupt as exc:
            problem = f"{where}: {exc}"
        else:
            got = repo.codec.chunk_id(data)
            want = lengths.get(cid)
            if got != cid or (want is not None and len(data) != want):
                problem = (f"{where}: content does not match its id: expected "
                           f"{want if want is not None else 'any'} bytes with id {cid.hex()}, got "
                           f"{len(data)} bytes with id {got.hex()}")
        if not problem:
            return len(data)
        if not live():
            return DEAD
        found("corrupt", cid.hex(), problem, backups(cid), "")
        return DAMAGED

    def one_chunk(item: Item) -> None:
        cid, info = item
        try:
            blob = repo.store.get(info.key)
        except NotFound:
            found("missing", cid.hex(), f"chunk object {info.key} vanished while verifying",
                  backups(cid), "")
            tally.add(info.size, 0, 0)
            return
        try:
            data = repo.codec.decode(info.key, blob)
        except Corrupt as exc:
            moved = repo.quarantine(info.key) if quarantine else ""
            found("corrupt", cid.hex(), str(exc), backups(cid), moved)
            tally.add(info.size, 0, 0)
            return
        got = repo.codec.chunk_id(data)
        want = lengths.get(cid)
        if got != cid or (want is not None and len(data) != want):
            moved = repo.quarantine(info.key) if quarantine else ""
            found("corrupt", cid.hex(), f"content does not match its id: expected "
                  f"{want if want is not None else 'any'} bytes with id {cid.hex()}, got "
                  f"{len(data)} bytes with id {got.hex()}", backups(cid), moved)
            tally.add(info.size, 0, 0)
            return
        tally.add(info.size, 1, len(data))

    def one_pack(item: Item) -> None:
        pid, info = item
        key, size = info.key, info.size
        try:
            entries = read_header(repo, key, size)
        except (Corrupt, NotFound) as exc:
            hit = _indexed_chunks(repo, pid)
            found("pack", pid.hex(), f"{key}: {exc}" if isinstance(exc, NotFound) else str(exc),
                  tuple(sorted({b for c in hit for b in users.get(c, ())})), "")
            tally.add(size, 0, 0)
            return
        _check_index(repo, pid, key, entries, found, backups)
        chunks = plain = 0
        for start, end, group in blob_ranges(entries):
            try:
                data = memoryview(repo.store.get_range(key, start, end - start))
            except NotFound:
                found("pack", pid.hex(), f"{key} vanished while verifying", (), "")
                break
            for e in group:
                n = check(e.cid, data[e.offset - start : e.offset - start + e.length], f"pack {key}",
                          live=functools.partial(_indexed_here, repo, pid, e))
                if n >= 0:
                    chunks += 1
                    plain += n
                elif n == DAMAGED and on_damaged_blob is not None:
                    on_damaged_blob(e)
        tally.add(size, chunks, plain)

    work: Callable[[Item], None] = one_pack if packed else one_chunk
    if progress is not None:
        progress(0, todo)
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="verify-subset") as pool:
        for _ in pool.map(work, chosen):
            pass
    return Sampled(subset.describe(), "packs" if packed else "chunks", total, len(chosen),
                   tally.stored, tally.chunks, tally.plain)


class _Tally:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.stored = self.chunks = self.plain = 0
        self.lock = threading.Lock()

    def add(self, stored: int, chunks: int, plain: int) -> None:
        with self.lock:
            self.stored += stored
            self.chunks += chunks
            self.plain += plain
            if self.progress is not None:
                self.progress(self.stored, self.total)


def read_header(repo: Repository, key: str, size: int) -> list[Entry]:
    """A pack's header entries through two ranged reads (its length, then the header);
    Corrupt naming the pack when it fails format §11.2 (verify subsets, rebuild-index)."""
    tail = repo.store.get_range(key, max(0, size - 4), 4) if size >= 4 else b""
    hlen = header_length(tail, key, size)
    blob = repo.store.get_range(key, size - 4 - hlen, hlen)
    if len(blob) != hlen:
        raise Corrupt(f"{key}: shorter than its listing says ({size} bytes)")
    return decode_header(repo.codec, key, blob, size)


def blob_ranges(entries: list[Entry]) -> Iterator[tuple[int, int, list[Entry]]]:
    """Consecutive header entries grouped into reads of at most :data:`MAX_RANGE` bytes:
    ``(start, end, entries)`` (a whole pack read with few requests)."""
    group: list[Entry] = []
    start = end = 0
    for e in entries:
        if group and e.offset + e.length - start > MAX_RANGE:
            yield start, end, group
            group = []
        if not group:
            start = e.offset
        group.append(e)
        end = e.offset + e.length
    if group:
        yield start, end, group


def _check_index(repo: Repository, pid: bytes, key: str, entries: list[Entry], found: Found,
                 backups: Callable[[bytes], tuple[str, ...]]) -> None:
    """Every index entry that places a chunk of this pack's header in this pack must say
    where the header does (else a restore would read the wrong bytes)."""
    index = chunkstore.index_of(repo)
    for e in entries:
        for row_pack, off, length, name in index.execute(
                "SELECT c.pack, c.off, c.len, i.name FROM chunks c JOIN indexes i ON c.idx = i.idx "
                "WHERE c.id=?", (e.cid,)):
            if row_pack == pid and (off, length) != (e.offset, e.length):
                found("index", f"index/{name}", f"places chunk {e.cid.hex()} at [{off}, +{length}) "
                      f"of {key}, whose header says [{e.offset}, +{e.length})", backups(e.cid), "")


DAMAGED, DEAD = -1, -2
"""What ``read_subset``'s blob check returns for a damaged copy the index places where it
was read, and for one it does not (dead data, not reported)."""


def _indexed_here(repo: Repository, pid: bytes, entry: Entry) -> bool:
    """Whether the index places ``entry``'s chunk at this very copy (pack, offset)."""
    return bool(chunkstore.index_of(repo).execute(
        "SELECT 1 FROM chunks WHERE id=? AND pack=? AND off=? LIMIT 1", (entry.cid, pid, entry.offset)))


def _indexed_chunks(repo: Repository, pid: bytes) -> list[bytes]:
    """The chunks the index places in pack ``pid`` (to name the backups a lost pack
    breaks); a scan of the cache, run only for a damaged pack."""
    rows = chunkstore.index_of(repo).execute("SELECT id FROM chunks WHERE pack=?", (pid,))
    return [r[0] for r in rows if isinstance(r[0], bytes)]

