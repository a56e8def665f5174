"""Converting a version 1 repository to version 2 in place (format §11.9).

Under the exclusive lock: every ``chunks/`` object is copied, blob bytes unchanged (its
associated data is already its chunk key, which is what a pack's chunk blob is bound to),
into packs; index objects name them; then ``config`` is rewritten with version 2 (one
atomic put: the commit point) and the ``chunks/`` objects are deleted. Killed before the
config, the repository is still version 1 and a repeated migrate reuses the index objects
already put; killed after, it is version 2 with leftover ``chunks/`` objects, which a
repeated migrate packs (if not yet indexed) and deletes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from statehold.backup import chunkstore
from statehold.backup.locks import Lock
from statehold.backup.packer import Packer
from statehold.backup.packs import DEFAULT_PACK_SIZE, check_pack_size
from statehold.backup.repository import CONFIG_KEY, Repository
from statehold.errors import Corrupt, NotFound

log = logging.getLogger("statehold.backup.migrate")

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class MigrateResult:
    chunks_packed: int
    """Chunk objects copied into packs by this run."""
    chunks_removed: int
    """``chunks/`` objects deleted (each one indexed in a pack first)."""
    packs: int
    bytes_packed: int
    converted: bool
    """False when the repository already was version 2 (only leftovers were handled)."""


def _chunk_id(key: str) -> bytes | None:
    name = key.rpartition("/")[2]
    try:
        cid = bytes.fromhex(name)
    except ValueError:
        return None
    return cid if len(cid) == 32 and key == f"chunks/{name[:2]}/{name}" else None


def migrate(repo: Repository, *, pack_size: int | None = None, parallel: int = 8,
            progress: Progress | None = None, fault: Callable[[str], None] | None = None) -> MigrateResult:
    """Convert ``repo`` to version 2 (format §11.9); ``repo`` is version 2 afterwards.
    ``fault`` (tests): the packer's points, then 'converted' after the config is put."""
    size = check_pack_size(pack_size or repo.config.pack_size or DEFAULT_PACK_SIZE)
    with Lock(repo, "exclusive"):
        doc = json.loads(repo.store.get(CONFIG_KEY))
        was = int(doc["version"])
        index = chunkstore.index_of(repo)
        index.sync(repo)  # index objects of an interrupted earlier run count
        todo = []
        for info in repo.store.list("chunks/"):
            cid = _chunk_id(info.key)
            if cid is not None:
                todo.append((info.key, cid, info.size))
        total = sum(s for _, _, s in todo)
        done = 0
        if progress is not None:
            progress(0, total)
        packer = Packer(repo, index, pack_size=size, fault=fault)
        copied = 0
        try:
            def fetch(item: tuple[str, bytes, int]) -> tuple[bytes, bytes | None]:
                key, cid, _ = item
                if not packer.claim(cid):
                    return cid, None  # already in a pack
                try:
                    return cid, repo.store.get(key)
                except NotFound:
                    return cid, None

            with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="migrate") as pool:
                step = 64 * max(1, parallel)
                for start in range(0, len(todo), step):
                    batch = todo[start : start + step]
                    for (_key, _cid, sz), (cid, blob) in zip(batch, pool.map(fetch, batch), strict=True):
                        if blob is not None:
                            packer.store(cid, blob)
                            copied += 1
                        done += sz
                        if progress is not None:
                            progress(done, total)
            packer.finish()  # packs, then index objects naming them
        finally:
            packer.close()
        if was < 2:
            doc["version"] = 2
            doc["pack_size"] = size
            repo.store.put(CONFIG_KEY, json.dumps(doc, indent=1).encode())  # the commit point
            repo.config = dataclasses.replace(repo.config, version=2, pack_size=size)
            log.info("migrate repository=%s converted to format 2", repo.config.id)
            if fault is not None:
                fault("converted")
        removed = 0
        for key, cid, _ in todo:
            if cid not in index:
                raise Corrupt(f"chunk {cid.hex()} was not packed; run migrate again")
            repo.store.delete(key)
            removed += 1
        return MigrateResult(copied, removed, packer.packs, packer.bytes_stored, was < 2)
