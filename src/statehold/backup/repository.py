"""A repository: a store prefix plus the keys that open it (format §2, §5).

``Repository.init`` creates the master secret and writes ``config``; ``Repository.open``
unwraps it with the password. Everything else goes through the blob codec.

Damaged objects (format §9.1) never stop a listing: :meth:`Repository.manifests` yields the
readable manifests and passes the others aside; :meth:`Repository.scan` returns both, plus
the quarantined ones, for callers that must know what they cannot read (gc, verify, the
CLI's listing). :meth:`Repository.quarantine` moves an object under ``quarantine/``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from statehold.backup import manifest as manifest_mod
from statehold.backup.crypto import Codec, ScryptParams, derive_kek, unwrap, wrap
from statehold.backup.manifest import Manifest
from statehold.backup.packs import DEFAULT_PACK_SIZE, check_pack_size, chunk_key
from statehold.backup.store import Store
from statehold.errors import AlreadyExists, Corrupt, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger("statehold.backup.repository")

FORMAT = "statehold-backup"
VERSION = 2
"""The newest repository format this code reads and writes (format §5, §11)."""
DEFAULT_CHUNK_SIZE = 1 << 20
V2_CHUNK_SIZE = 256 << 10
"""Default chunk size of a new version 2 repository (format §11.8)."""
CONFIG_KEY = "config"
QUARANTINE = "quarantine/"
"""Prefix a damaged object is moved under, keeping its key and bytes (format §2, §9.1)."""


def manifest_key(backup_id: str) -> str:
    return f"manifests/{backup_id}"


def quarantine_key(key: str) -> str:
    """Where the object at ``key`` goes when quarantined: ``quarantine/<key>``."""
    return QUARANTINE + key


def new_backup_id(now: float | None = None) -> str:
    t = time.gmtime(time.time() if now is None else now)
    return time.strftime("%Y%m%dT%H%M%SZ", t) + "-" + secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class RepoConfig:
    id: str
    chunk_size: int
    created: str
    version: int = 1
    pack_size: int = 0
    """Version 2: the size at which a writer seals a pack (format §11.1)."""


DamageState = Literal["damaged", "quarantined", "unsupported"]


@dataclass(frozen=True, slots=True)
class Damaged:
    """A manifest that cannot be read. Its backup cannot be restored, and nobody can know
    which chunks it names, so gc deletes no chunk while one exists (format §9.1)."""

    backup_id: str
    key: str
    """Where its bytes are: ``manifests/<id>``, or ``quarantine/manifests/<id>``."""
    reason: str
    """Why it cannot be read (the check that failed, naming the object)."""
    state: DamageState
    """``damaged`` (fails a check, still listed), ``quarantined`` (moved aside), or
    ``unsupported`` (a newer manifest version: not damaged, never quarantined)."""

    @classmethod
    def unreadable(cls, backup_id: str, exc: Exception) -> Damaged:
        """The manifest of ``backup_id``, still under ``manifests/``, failed with ``exc``."""
        state: DamageState = "unsupported" if isinstance(exc, FailedPrecondition) else "damaged"
        return cls(backup_id, manifest_key(backup_id), str(exc), state)


@dataclass(frozen=True, slots=True)
class Listing:
    """Every backup of a repository: the readable manifests, oldest first, and the rest."""

    manifests: list[Manifest]
    damaged: list[Damaged]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class Repository:
    def __init__(self, store: Store, config: RepoConfig, master: bytes, *, level: int = 1) -> None:
        self.store = store
        self.config = config
        self.codec = Codec(master, level=level)

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @classmethod
    def init(cls, store: Store, password: str, *, chunk_size: int | None = None,
             scrypt_n: int = 1 << 15, version: int = 1, pack_size: int | None = None) -> Repository:
        if version not in (1, 2):
            raise InvalidArgument(f"repository format {version} is not 1 or 2")
        if chunk_size is None:
            chunk_size = V2_CHUNK_SIZE if version >= 2 else DEFAULT_CHUNK_SIZE
        pack_size = check_pack_size(pack_size or DEFAULT_PACK_SIZE) if version >= 2 else 0
        if not password:
            raise InvalidArgument("a repository password is required (there is no default)")
        if chunk_size & (chunk_size - 1) or not (64 << 10) <= chunk_size <= (16 << 20):
            raise InvalidArgument(f"chunk size {chunk_size} must be a power of two in 64KiB..16MiB")
        if scrypt_n < (1 << 15):
            raise InvalidArgument("scrypt n must be at least 2^15")
        if store.exists(CONFIG_KEY):
            raise AlreadyExists(f"{store.describe()} already holds a backup repository")
        repo_id = secrets.token_hex(16)
        master = os.urandom(64)
        params = ScryptParams(n=scrypt_n, salt=os.urandom(16))
        nonce, wrapped = wrap(derive_kek(password.encode(), params), master, repo_id)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc = {
            "format": FORMAT, "version": version, "id": repo_id, "chunk_size": chunk_size,
            **({"pack_size": pack_size} if version >= 2 else {}),
            "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": _b64(params.salt)},
            "key": {"nonce": _b64(nonce), "wrapped": _b64(wrapped)}, "created": created,
        }
        store.put(CONFIG_KEY, json.dumps(doc, indent=1).encode())
        return cls(store, RepoConfig(repo_id, chunk_size, created, version, pack_size), master)

    @classmethod
    def open(cls, store: Store, password: str, *, level: int = 1) -> Repository:
        try:
            raw = store.get(CONFIG_KEY)
        except NotFound:
            raise NotFound(f"no backup repository at {store.describe()} (run init / target add)") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise Corrupt(f"{store.describe()}: config is not a Statehold repository")
            if int(doc["version"]) > VERSION:
                raise FailedPrecondition(f"repository format {doc['version']} is newer than supported "
                                         f"({VERSION}); upgrade Statehold")
            kdf = doc["kdf"]
            if kdf["name"] != "scrypt":
                raise FailedPrecondition(f"unsupported key derivation {kdf['name']}")
            params = ScryptParams(int(kdf["n"]), int(kdf["r"]), int(kdf["p"]), base64.b64decode(kdf["salt"]))
            nonce = base64.b64decode(doc["key"]["nonce"])
            wrapped = base64.b64decode(doc["key"]["wrapped"])
            config = RepoConfig(str(doc["id"]), int(doc["chunk_size"]), str(doc.get("created", "")),
                                int(doc["version"]), int(doc.get("pack_size") or 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise Corrupt(f"{store.describe()}: config does not parse: {exc}") from exc
        master = unwrap(derive_kek(password.encode(), params), nonce, wrapped, config.id)
        return cls(store, config, master, level=level)

    # blobs -----------------------------------------------------------------------------
    def put_blob(self, key: str, body: bytes | bytearray | memoryview) -> int:
        blob = self.codec.encode(key, body)
        self.store.put(key, blob)
        return len(blob)

    def get_blob(self, key: str) -> bytes:
        return self.codec.decode(key, self.store.get(key))

    def read_loose_chunk(self, cid: bytes, length: int) -> bytes:
        """A format 1 chunk's plaintext (one object per chunk), checked against its id and
        expected length (Corrupt otherwise). Readers call ``chunkstore.read_chunk``, which
        also finds a format 2 chunk in its pack (format §11)."""
        key = chunk_key(cid)
        try:
            data = self.get_blob(key)
        except NotFound:
            raise NotFound(f"chunk {cid.hex()} is missing from {self.store.describe()}") from None
        got = self.codec.chunk_id(data)
        if len(data) != length or got != cid:
            raise Corrupt(f"chunk {cid.hex()}: content does not match its id: expected "
                          f"{length} bytes with id {cid.hex()}, got {len(data)} bytes with id "
                          f"{got.hex()}")
        return data

    def known_chunks(self) -> set[bytes]:
        """Ids of every chunk stored now (call only while holding a lock: format §7)."""
        out: set[bytes] = set()
        for info in self.store.list("chunks/"):
            name = info.key.rpartition("/")[2]
            try:
                out.add(bytes.fromhex(name))
            except ValueError:
                continue
        return out

    # manifests -------------------------------------------------------------------------
    def save_manifest(self, m: Manifest) -> None:
        self.put_blob(manifest_key(m.backup_id), m.encode())

    def load_manifest(self, backup_id: str) -> Manifest:
        key = manifest_key(backup_id)
        try:
            data = self.get_blob(key)
        except NotFound:
            if self.store.exists(quarantine_key(key)):
                raise Corrupt(f"backup {backup_id} is quarantined ({quarantine_key(key)}): its "
                              "manifest is damaged; `backup forget` removes it") from None
            raise NotFound(f"backup {backup_id} not found in {self.store.describe()}") from None
        return self._decode_manifest(backup_id, key, data)

    def _decode_manifest(self, backup_id: str, key: str, data: bytes) -> Manifest:
        m = manifest_mod.decode(data, key)
        if m.backup_id != backup_id:
            raise Corrupt(f"{key}: names backup {m.backup_id}")
        return m

    def examine(self, backup_id: str) -> Manifest | Damaged:
        """One backup, readable or not: its manifest, or why it cannot be read (damaged,
        quarantined, of a newer version). NotFound when there is no such backup."""
        key = manifest_key(backup_id)
        try:
            return self._decode_manifest(backup_id, key, self.get_blob(key))
        except (Corrupt, FailedPrecondition) as exc:
            return Damaged.unreadable(backup_id, exc)
        except NotFound:
            pass
        try:
            raw = self.store.get(quarantine_key(key))
        except NotFound:
            raise NotFound(f"backup {backup_id} not found in {self.store.describe()}") from None
        return Damaged(backup_id, quarantine_key(key), self._why(backup_id, raw), "quarantined")

    def backup_ids(self) -> list[str]:
        return sorted(i.key.rpartition("/")[2] for i in self.store.list("manifests/"))

    def quarantined_ids(self) -> list[str]:
        return sorted(i.key.rpartition("/")[2] for i in self.store.list(quarantine_key("manifests/")))

    def manifests(self, *, on_error: Callable[[str, Exception], None] | None = None,
                  parallel: int = 8) -> Iterator[Manifest]:
        """Every readable manifest, oldest first, loaded in parallel. One that cannot be read
        (Corrupt, or FailedPrecondition: a newer version) goes to ``on_error`` -- by default
        logged and skipped, never raised: one damaged manifest must not stop every backup
        (format §9.1). One deleted meanwhile (pruned, forgotten) is skipped silently.
        Callers that delete on the strength of a listing use :meth:`scan`, which also sees
        the quarantined manifests."""
        ids = self.backup_ids()

        def load(bid: str) -> Manifest | Exception | None:
            key = manifest_key(bid)
            try:
                return self._decode_manifest(bid, key, self.get_blob(key))
            except NotFound:
                return None  # pruned, forgotten or quarantined since the listing
            except (Corrupt, FailedPrecondition) as exc:
                return exc

        with ThreadPoolExecutor(max(1, parallel)) as pool:
            for bid, got in zip(ids, pool.map(load, ids), strict=True):
                if got is None:
                    continue
                if isinstance(got, Exception):
                    if on_error is None:
                        log.warning("manifest backup=%s unreadable, skipped: %s", bid, got)
                    else:
                        on_error(bid, got)
                    continue
                yield got

    def scan(self, *, parallel: int = 8) -> Listing:
        """The readable manifests and every manifest that cannot be read: damaged ones still
        under ``manifests/``, those of a newer version, and the quarantined ones (listed
        after ``manifests/``, so one quarantined meanwhile is seen in one place or the
        other, never in neither: quarantine puts the copy before deleting the original)."""
        damaged: list[Damaged] = []

        def unreadable(bid: str, exc: Exception) -> None:
            damaged.append(Damaged.unreadable(bid, exc))

        found = list(self.manifests(on_error=unreadable, parallel=parallel))
        damaged.extend(self.quarantined())
        return Listing(found, sorted(damaged, key=lambda d: (d.backup_id, d.key)))

    def quarantined(self) -> list[Damaged]:
        """The manifests under ``quarantine/``, each with the reason it fails now."""
        out = []
        for bid in self.quarantined_ids():
            key = quarantine_key(manifest_key(bid))
            try:
                raw = self.store.get(key)
            except NotFound:
                continue  # forgotten meanwhile
            out.append(Damaged(bid, key, self._why(bid, raw), "quarantined"))
        return out

    def _why(self, backup_id: str, raw: bytes) -> str:
        key = manifest_key(backup_id)  # the blob stays bound to the key it was written under
        try:
            self._decode_manifest(backup_id, key, self.codec.decode(key, raw))
        except (Corrupt, FailedPrecondition) as exc:
            return str(exc)
        return "reads correctly now (quarantined earlier)"

    def quarantine(self, key: str) -> str:
        """Move the object at ``key`` (a manifest or chunk) to ``quarantine/<key>`` with its
        bytes unchanged, so it stops being listed but stays for inspection. Copy, then
        delete: a crash in between leaves both, and the next call finishes the move.
        Returns the new key."""
        dest = quarantine_key(key)
        try:
            raw = self.store.get(key)
        except NotFound:
            if self.store.exists(dest):
                return dest
            raise
        self.store.put(dest, raw)
        self.store.delete(key)
        log.warning("quarantine key=%s moved to %s", key, dest)
        return dest

    def resolve(self, ref: str) -> str:
        """A backup id from a full id or a unique prefix of one (quarantined ones too)."""
        ids = sorted({*self.backup_ids(), *self.quarantined_ids()})
        if ref in ids:
            return ref
        hits = [i for i in ids if i.startswith(ref) or i.endswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise NotFound(f"backup {ref} not found in {self.store.describe()}")
        raise InvalidArgument(f"backup {ref} is ambiguous: {', '.join(hits[:5])}")
