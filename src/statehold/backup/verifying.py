"""Verify a repository: quick (every chunk a manifest names exists) or deep (every chunk
downloaded, decrypted and re-hashed). Problems are reported with the backups they break:
a manifest that cannot be read (or was quarantined), a missing chunk, a corrupt chunk
(naming the check that failed: authentication, or the id and length expected and got).

With ``quarantine`` (under the exclusive lock instead of the shared one) verify also moves
the damaged objects it finds to ``quarantine/`` (format §9.1): damaged manifests, and with
``deep`` the chunks that fail their check. A quarantined chunk is no longer known, so the
next backup that reads the same data stores it again, and every backup naming that id
is whole again.

Format 2 (format §11.6): a chunk is present when the index names it and its pack is
listed; deep reads go through :mod:`.packreader` (several chunks per request); damaged
index objects are problems of their own (``index``). A corrupt chunk inside a pack cannot
be moved alone (it is one blob of a pack); with ``quarantine`` its index entry is dropped
instead (:func:`.rebuildindex.drop_entries`: the index objects naming that copy are
rewritten without it), so the chunk is no longer known and the next backup of the same
data stores it again, as with a quarantined chunk object.

With ``subset`` (:mod:`.sampling`, ``--read-data-subset``) the quick checks run as usual
and then a slice of the stored objects (packs, or format 1 chunk objects) is read in full;
with ``quarantine`` the damaged blobs it finds in packs lose their index entries exactly as
with ``deep`` (one function, :func:`_unindex`), and damaged chunk objects are moved.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from statehold.backup import chunkstore, packreader, sampling
from statehold.backup.locks import Lock
from statehold.backup.packs import PACK_PREFIX, Entry, chunk_key, pack_id_of, pack_key
from statehold.backup.rebuildindex import drop_entries
from statehold.backup.repository import Repository
from statehold.errors import Corrupt, InvalidArgument, NotFound, StateholdError

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Problem:
    what: str
    """'missing' or 'corrupt' (a chunk), 'manifest' (a backup that cannot be read),
    'quarantined' (a backup whose manifest was moved to quarantine/), or 'index' (format
    2: an index object that cannot be read, or whose entries disagree with a pack's
    header), or 'pack' (a pack whose header cannot be read: every chunk in it is lost)."""
    name: str
    """Chunk id (hex) or backup id."""
    detail: str
    backups: tuple[str, ...]
    quarantined: str = ""
    """What this verify did with the object (``quarantine``), else empty: where it moved it
    (``quarantine/<key>``), or, for a damaged chunk inside a pack (format 2), which index
    objects its entry was dropped from."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    deep: bool
    backups: int
    chunks: int
    bytes_checked: int
    problems: list[Problem] = field(default_factory=list)
    subset: sampling.Sampled | None = None
    """What ``--read-data-subset`` read (its plaintext is counted in bytes_checked)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def affected(self) -> list[str]:
        return sorted({b for p in self.problems for b in p.backups})


def verify(repo: Repository, *, deep: bool = False, parallel: int = 8,
           progress: Progress | None = None, quarantine: bool = False,
           subset: sampling.Subset | None = None) -> VerifyReport:
    problems: list[Problem] = []
    if deep and subset is not None:
        raise InvalidArgument("a deep verify reads every chunk already; give a subset or deep")
    guard = threading.Lock()

    def found(what: str, name: str, detail: str, backups: tuple[str, ...], moved: str) -> None:
        with guard:
            problems.append(Problem(what, name, detail, backups, moved))

    def sample() -> sampling.Sampled | None:
        if subset is None:
            return None
        damaged: list[Entry] = []

        def blob(e: Entry) -> None:
            with guard:
                damaged.append(e)
        sampled = sampling.read_subset(
            repo, subset, users, lengths, found, parallel=parallel, progress=progress,
            quarantine=quarantine, on_damaged_blob=blob if quarantine else None)
        _unindex(repo, damaged, problems)  # every read done: as the deep verify's
        return sampled
    with Lock(repo, "exclusive" if quarantine else "shared"):
        users: dict[bytes, list[str]] = {}
        lengths: dict[bytes, int] = {}
        listing = repo.scan(parallel=parallel)
        for d in listing.damaged:
            moved = repo.quarantine(d.key) if quarantine and d.state == "damaged" else ""
            what = "quarantined" if d.state == "quarantined" else "manifest"
            problems.append(Problem(what, d.backup_id, d.reason, (d.backup_id,), moved))

        count = 0
        for m in listing.manifests:
            count += 1
            for off, cid in m.entries():
                users.setdefault(cid, []).append(m.backup_id)
                lengths[cid] = m.chunk_length(off)
            for entry in m.tree or ():
                for _off, cid, length in m.file_chunks(entry):
                    users.setdefault(cid, []).append(m.backup_id)
                    lengths[cid] = length
        if chunkstore.packed(repo):
            checked = _verify_packed(repo, users, lengths, problems, deep=deep, parallel=parallel,
                                     progress=progress, quarantine=quarantine)
            sampled = sample()
            return VerifyReport(deep, count, len(users), checked + (sampled.plain_bytes if sampled else 0),
                                problems, sampled)
        present = repo.known_chunks()
        for cid in sorted(users):
            if cid not in present:
                problems.append(Problem("missing", cid.hex(), "chunk object not in the store",
                                        tuple(sorted(set(users[cid])))))
        checked = 0
        if deep:
            todo = [cid for cid in users if cid in present]
            total = sum(lengths[c] for c in todo)
            done = 0
            lock = threading.Lock()
            if progress is not None:
                progress(0, total)

            def check(cid: bytes) -> None:
                nonlocal done
                try:
                    chunkstore.read_chunk(repo, cid, lengths[cid])
                except (Corrupt, NotFound) as exc:
                    kind = "missing" if isinstance(exc, NotFound) else "corrupt"
                    moved = ""
                    if quarantine and kind == "corrupt":
                        moved = repo.quarantine(chunk_key(cid))
                    with lock:
                        problems.append(Problem(kind, cid.hex(), str(exc), tuple(sorted(set(users[cid]))),
                                                moved))
                except StateholdError:
                    raise
                with lock:
                    done += lengths[cid]
                    if progress is not None:
                        progress(done, total)

            with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="verify") as pool:
                step = 64 * max(1, parallel)  # bounded: a million chunks are not a million futures
                for start in range(0, len(todo), step):
                    list(pool.map(check, todo[start : start + step]))
            checked = done
        sampled = sample()
        return VerifyReport(deep, count, len(users), checked + (sampled.plain_bytes if sampled else 0),
                            problems, sampled)


def _verify_packed(repo: Repository, users: dict[bytes, list[str]], lengths: dict[bytes, int],
                   problems: list[Problem], *, deep: bool, parallel: int,
                   progress: Progress | None, quarantine: bool = False) -> int:
    """Format 2: every needed chunk indexed, in a listed pack; with ``deep`` read and
    re-hashed through ranged reads; with ``quarantine`` (exclusive lock) the index entries
    of the damaged copies are dropped once every read is done. Returns the plaintext bytes
    checked."""
    chunkstore.known_chunks(repo)  # the cache synced under the caller's lock
    index = chunkstore.index_of(repo)
    for key, why in sorted(index.damaged.items()):
        problems.append(Problem("index", key, why, ()))
    packs: set[bytes] = set()
    for info in repo.store.list(PACK_PREFIX):
        try:
            packs.add(pack_id_of(info.key))
        except Corrupt:
            continue
    todo: list[bytes] = []
    for cid in sorted(users):
        loc = index.lookup(cid)
        if loc is None:
            detail = "chunk not in the index"
        elif loc.pack not in packs:
            detail = f"its pack {loc.pack.hex()} is missing"
        else:
            todo.append(cid)
            continue
        problems.append(Problem("missing", cid.hex(), detail, tuple(sorted(set(users[cid])))))
    if not deep:
        return 0
    total = sum(lengths[c] for c in todo)
    done = 0
    lock = threading.Lock()
    if progress is not None:
        progress(0, total)

    def ok(cid: bytes, data: bytes) -> None:
        nonlocal done
        with lock:
            done += len(data)
            if progress is not None:
                progress(done, total)

    damaged: dict[bytes, Entry] = {}

    def bad(cid: bytes, exc: Exception) -> None:
        kind = "missing" if isinstance(exc, NotFound) else "corrupt"
        with lock:
            problems.append(Problem(kind, cid.hex(), str(exc), tuple(sorted(set(users[cid])))))
            loc = index.lookup(cid) if quarantine and kind == "corrupt" else None
            if loc is not None:  # the copy the reader read: the cache is unchanged meanwhile
                damaged[cid] = loc

    packreader.fetch(repo, ((cid, lengths[cid], cid) for cid in todo), ok, parallel=parallel, on_error=bad)
    _unindex(repo, damaged.values(), problems)  # after every read: the index is not changed under the reader
    return done


def _unindex(repo: Repository, damaged: Iterable[Entry], problems: list[Problem]) -> None:
    """Format 2 quarantine of damaged blobs inside packs (format §11.7), for ``--deep`` and
    ``--read-data-subset`` alike: drop the index entries placing a chunk at one of the
    ``damaged`` locations (:func:`.rebuildindex.drop_entries`, under the exclusive lock,
    after every read) and say so in each ``corrupt`` problem of that chunk. An entry the
    index does not hold at that place (a copy only a pack header names) drops nothing and
    its problem stays unannotated: another copy may be the one backups read."""
    entries = list(damaged)
    if not entries:
        return
    where: dict[bytes, set[str]] = {}
    for e in entries:
        where.setdefault(e.cid, set()).add(pack_key(e.pack))
    dropped = drop_entries(repo, entries)
    for i, p in enumerate(problems):
        cid = bytes.fromhex(p.name) if p.what == "corrupt" else b""
        if cid in dropped:
            problems[i] = dataclasses.replace(p, quarantined=(
                f"unindexed: entry dropped from {', '.join(dropped[cid])} (the blob stays in "
                f"{', '.join(sorted(where[cid]))})"))
