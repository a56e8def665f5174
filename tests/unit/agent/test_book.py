"""The replica book: persisted, replaced atomically, checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.agent.book import Peer, ReplicaBook
from statehold.agent.copies import VolumeRef
from statehold.errors import Corrupt, InvalidArgument

V = VolumeRef("pool", "db")


def test_set_get_and_reload(tmp_path: Path) -> None:
    book = ReplicaBook(tmp_path / "agent" / "replicas.json")
    book.set(V, (Peer("n2", "10.0.0.2:7443"),))
    again = ReplicaBook(tmp_path / "agent" / "replicas.json")
    assert again.get(V) == (Peer("n2", "10.0.0.2:7443"),)
    again.set(V, ())
    assert ReplicaBook(tmp_path / "agent" / "replicas.json").items() == []


def test_a_node_twice_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        ReplicaBook(tmp_path / "r.json").set(V, (Peer("n2", "a:1"), Peer("n2", "b:1")))


def test_peer_parse() -> None:
    assert Peer.parse("n2@10.0.0.2:7443") == Peer("n2", "10.0.0.2:7443")
    with pytest.raises(InvalidArgument):
        Peer.parse("10.0.0.2:7443")


def test_an_unreadable_book_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(Corrupt):
        ReplicaBook(tmp_path / "r.json")


def test_a_replica_may_live_in_a_pool_of_another_name() -> None:
    peer = Peer.parse("n3:ssd@10.0.0.3:7443")
    assert peer == Peer("n3", "10.0.0.3:7443", "ssd")
    assert peer.volume(V) == VolumeRef("ssd", "db")
    assert Peer.parse("n2@10.0.0.2:7443").volume(V) == V


def test_the_rpo_the_controller_gave_is_kept_with_the_replicas_and_goes_with_them(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "replicas.json"
    book = ReplicaBook(path)
    book.set(V, (Peer("n2", "10.0.0.2:7443"),), rpo_seconds=30)
    assert ReplicaBook(path).rpo(V) == 30
    book.set(V, (Peer("n2", "10.0.0.2:7443"),))  # a controller that does not say: none
    assert ReplicaBook(path).rpo(V) is None
    book.set(V, (Peer("n2", "10.0.0.2:7443"),), rpo_seconds=30)
    book.set(V, ())  # a forgotten volume has no RPO left behind
    assert (ReplicaBook(path).rpo(V), ReplicaBook(path).items()) == (None, [])
    with pytest.raises(InvalidArgument):
        book.set(V, (Peer("n2", "a:1"),), rpo_seconds=-1)


def test_a_book_written_before_the_rpo_existed_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"version": 1, "volumes": {"pool/db": [{"node": "n2", "address": "a:1"}]}}')
    book = ReplicaBook(path)
    assert (book.get(V), book.rpo(V)) == ((Peer("n2", "a:1"),), None)


def test_a_bad_rpo_in_the_book_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"version": 1, "volumes": {"pool/db": [{"node": "n2", "address": "a:1"}]},'
                    ' "rpo": {"pool/db": "soon"}}')
    with pytest.raises(Corrupt):
        ReplicaBook(path)
