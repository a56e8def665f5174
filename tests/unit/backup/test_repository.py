"""Repository keys, blob encoding and manifests (format §4-§6)."""

from __future__ import annotations

import os
from array import array

import pytest

from statehold.backup import chunkstore
from statehold.backup import manifest as manifest_mod
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.manifest import Manifest, Stats
from statehold.backup.packs import chunk_key
from statehold.backup.repository import Repository
from statehold.backup.store import MemoryStore
from statehold.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound, PermissionDenied


@pytest.fixture(scope="module")
def repo() -> Repository:
    return Repository.init(MemoryStore(), "correct horse")


def test_open_with_the_right_password_gives_the_same_keys(tmp_path: os.PathLike[str]) -> None:
    store = DirectoryStore(tmp_path / "r")  # type: ignore[operator]
    made = Repository.init(store, "pw")
    opened = Repository.open(store, "pw")
    assert opened.config == made.config
    assert opened.codec.chunk_id(b"x") == made.codec.chunk_id(b"x")
    made.put_blob("manifests/a", b"payload")
    assert opened.get_blob("manifests/a") == b"payload"


def test_wrong_password_is_permission_denied_with_a_clear_message() -> None:
    store = MemoryStore()
    Repository.init(store, "right")
    with pytest.raises(PermissionDenied, match="wrong repository password"):
        Repository.open(store, "wrong")


def test_init_twice_is_already_exists_and_keeps_the_first_config() -> None:
    store = MemoryStore()
    Repository.init(store, "pw")
    before = store.get("config")
    with pytest.raises(AlreadyExists):
        Repository.init(store, "other")
    assert store.get("config") == before


@pytest.mark.parametrize("kwargs", [{"chunk_size": 3 << 20}, {"chunk_size": 4096}, {"scrypt_n": 1 << 10}])
def test_init_rejects_bad_parameters(kwargs: dict[str, int]) -> None:
    store = MemoryStore()
    with pytest.raises(InvalidArgument):
        Repository.init(store, "pw", **kwargs)
    assert not store.exists("config")


def test_empty_password_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="password"):
        Repository.init(MemoryStore(), "")


def test_open_of_an_empty_store_is_not_found() -> None:
    with pytest.raises(NotFound):
        Repository.open(MemoryStore(), "pw")


def test_chunk_ids_are_keyed_per_repository(repo: Repository) -> None:
    other = Repository.init(MemoryStore(), "correct horse")
    data = os.urandom(1000)
    assert repo.codec.chunk_id(data) != other.codec.chunk_id(data)
    assert len(repo.codec.chunk_id(data)) == 32


def test_blobs_compress_and_never_repeat_a_nonce(repo: Repository) -> None:
    text = b"compressible " * 10000
    a = repo.codec.encode("chunks/aa/x", text)
    b = repo.codec.encode("chunks/aa/x", text)
    assert len(a) < len(text) / 10
    assert a[4:16] != b[4:16]
    assert repo.codec.decode("chunks/aa/x", a) == text
    noise = os.urandom(5000)
    assert repo.codec.decode("k", repo.codec.encode("k", noise)) == noise


def test_a_modified_blob_is_corrupt_naming_the_key(repo: Repository) -> None:
    blob = bytearray(repo.codec.encode("manifests/m1", b"data" * 100))
    blob[30] ^= 1
    with pytest.raises(Corrupt, match="manifests/m1"):
        repo.codec.decode("manifests/m1", bytes(blob))
    with pytest.raises(Corrupt):
        repo.codec.decode("manifests/m1", bytes(blob[:10]))


def test_a_blob_moved_under_another_key_is_corrupt(repo: Repository) -> None:
    blob = repo.codec.encode("manifests/m1", b"data")
    with pytest.raises(Corrupt, match="authentication"):
        repo.codec.decode("manifests/m2", blob)


def test_read_chunk_checks_content_against_the_id(repo: Repository) -> None:
    data = os.urandom(4096)
    cid = repo.codec.chunk_id(data)
    wrong = os.urandom(4096)
    repo.put_blob(chunk_key(cid), wrong)  # a validly encrypted blob with the wrong content
    with pytest.raises(Corrupt, match=cid.hex()):
        chunkstore.read_chunk(repo, cid, 4096)
    repo.put_blob(chunk_key(cid), data)
    assert chunkstore.read_chunk(repo, cid, 4096) == data
    with pytest.raises(NotFound, match="missing"):
        chunkstore.read_chunk(repo, bytes(32), 4096)


def test_manifest_round_trips_through_its_encoding() -> None:
    m = Manifest(backup_id="20260101T000000Z-00000001", volume="p/v", size=5 << 20, chunk_size=1 << 20,
                 created=1.5, offsets=array("Q", [0, 3 << 20]), ids=bytes(range(32)) + bytes(32),
                 parent="20251231T000000Z-00000000", snapshot="p/s", host="h", labels={"a": "b"},
                 stats=Stats(bytes_read=1, bytes_new=2, stored_new=3, chunks=2, chunks_new=1))
    back = manifest_mod.decode(m.encode(), "manifests/x")
    assert back == m
    assert list(back.entries()) == [(0, bytes(range(32))), (3 << 20, bytes(32))]


def test_a_truncated_manifest_is_corrupt() -> None:
    m = Manifest(backup_id="b", volume="v", size=1 << 20, chunk_size=1 << 20, created=0,
                 offsets=array("Q", [0]), ids=bytes(32))
    with pytest.raises(Corrupt):
        manifest_mod.decode(m.encode()[:-5], "manifests/b")
    with pytest.raises(Corrupt):
        manifest_mod.decode(b"\x00\x00\x00\x05{bad", "manifests/b")
