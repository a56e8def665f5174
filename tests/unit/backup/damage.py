"""Damaging a repository the way a disk, a store or an attacker would: through the store
contract only, so the same helpers serve the memory, directory and S3 stores."""

from __future__ import annotations

from statehold.backup.packs import chunk_key
from statehold.backup.repository import Repository, manifest_key
from statehold.backup.store import Store


def flip_byte(store: Store, key: str, at: int = -1) -> bytes:
    """Invert one byte of the object at ``key``; returns the damaged bytes stored."""
    blob = bytearray(store.get(key))
    blob[at] ^= 0xFF
    store.put(key, bytes(blob))
    return bytes(blob)


def damage_manifest(repo: Repository, backup_id: str) -> bytes:
    return flip_byte(repo.store, manifest_key(backup_id), 20)


def damage_chunk(repo: Repository, cid: bytes) -> bytes:
    return flip_byte(repo.store, chunk_key(cid))


def swap_chunk_content(repo: Repository, cid: bytes, other: bytes) -> None:
    """Store ``other`` under ``cid``'s key as a valid blob: it authenticates, but its
    content is not the chunk the id names (what only the key holder could do)."""
    repo.put_blob(chunk_key(cid), other)
