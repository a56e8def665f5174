"""Group manifests (format §6.4) on an in-memory repository: the round trip, damage and newer
versions refused, the ordering rule (members first), and retention per set (more in
test_group_retention.py)."""

from __future__ import annotations

import dataclasses
from array import array

import pytest

from statehold.backup.collecting import prune
from statehold.backup.groupmanifest import (
    ClaimTemplate,
    GroupManifest,
    Member,
    decode,
    group_ids,
    group_key,
    groups,
    load_group,
    missing_members,
    new_group_id,
    save_group,
)
from statehold.backup.manifest import Manifest
from statehold.backup.repository import Repository, manifest_key, new_backup_id
from statehold.backup.retention import Policy
from statehold.backup.store import MemoryStore
from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument, NotFound

T0 = 1767600000.0


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStore(), "pw", scrypt_n=1 << 15)


def member_backup(repo: Repository, volume: str, created: float) -> str:
    bid = new_backup_id(created)
    repo.save_manifest(Manifest(backup_id=bid, volume=volume, size=1 << 20, chunk_size=1 << 20,
                                created=created, offsets=array("Q"), ids=b""))
    return bid


def group(repo: Repository, set_name: str, created: float, *, ns: str = "db",
          replicas: int = 3) -> GroupManifest:
    members = tuple(Member(o, "data", f"data-{set_name}-{o}",
                           member_backup(repo, f"fast/{set_name}-{o}", created), 1 << 20,
                           f"fast/pvc-{o}") for o in range(replicas))
    g = GroupManifest(group_id=new_group_id(created, key=f"{ns}/{set_name}-{created}"), created=created,
                      namespace=ns, set_name=set_name, replicas=replicas, ordinals_start=0,
                      templates=(ClaimTemplate("data", "statehold-local", ("ReadWriteOnce",),
                                               "Filesystem", "1Gi", {"tier": "db"}),),
                      members=members, selector={"app": set_name}, consistency="application",
                      key=f"uid-{created}", host="n1", labels={"statefulsetbackup": "b"})
    save_group(repo, g)
    return g


def test_a_group_manifest_round_trips_encrypted(repo: Repository) -> None:
    g = group(repo, "pg", T0)
    assert load_group(repo, g.group_id) == g
    assert b'"origin"' not in g.encode()  # absent: made by hand, as before the field
    scheduled = dataclasses.replace(g, origin="schedule/db/n")
    assert decode(scheduled.encode(), "k").origin == "schedule/db/n"
    assert b"data-pg-0" not in repo.store.get(group_key(g.group_id))  # encrypted like the rest
    assert [x.group_id for x in groups(repo)] == [g.group_id]
    assert g.ordinals == [0, 1, 2] and g.member("data", 1).claim == "data-pg-1"
    with pytest.raises(NotFound):
        g.member("wal", 0)


def test_the_same_key_gives_the_same_id(repo: Repository) -> None:
    assert new_group_id(T0, key="k") == new_group_id(T0, key="k")
    assert new_group_id(T0, key="k") != new_group_id(T0, key="j")
    assert new_group_id(T0, key="k").startswith("20260105T")
    assert new_group_id(T0) != new_group_id(T0)


def test_a_group_is_saved_only_after_every_member(repo: Repository) -> None:
    g = group(repo, "pg", T0)
    repo.store.delete(manifest_key(g.members[1].backup_id))
    assert missing_members(repo, g) == [g.members[1]]
    with pytest.raises(FailedPrecondition, match="data-pg-1"):
        save_group(repo, g)
    with pytest.raises(InvalidArgument):
        save_group(repo, GroupManifest("x", T0, "db", "pg", 0, 0, (), ()))


def test_damaged_and_newer_group_manifests_are_refused(repo: Repository) -> None:
    g = group(repo, "pg", T0)
    raw = bytearray(repo.store.get(group_key(g.group_id)))
    raw[-1] ^= 1
    repo.store.put(group_key(g.group_id), bytes(raw))
    with pytest.raises(Corrupt):
        load_group(repo, g.group_id)
    seen: list[str] = []
    assert list(groups(repo, on_error=lambda gid, exc: seen.append(gid))) == []
    assert seen == [g.group_id]
    newer = g.encode().replace(b'"version": 1', b'"version": 2')
    with pytest.raises(FailedPrecondition):
        decode(newer, "groups/x")
    with pytest.raises(Corrupt):
        decode(b'{"format": "statehold-group", "version": 1}', "groups/x")
    with pytest.raises(NotFound):
        load_group(repo, "20260101T000000Z-00000000")


def test_prune_keeps_the_newest_groups_of_one_set_with_their_members(repo: Repository) -> None:
    old, mid, new = (group(repo, "pg", T0 + d * 86400) for d in range(3))
    other = group(repo, "mq", T0)              # another set: never touched
    elsewhere = group(repo, "pg", T0, ns="staging")  # the same name in another namespace
    done = prune(repo, Policy(keep_last=2), statefulset=("db", "pg"))
    assert set(done.groups_kept) == {new.group_id, mid.group_id}
    assert done.groups_removed == {old.group_id: tuple(m.backup_id for m in old.members)}
    assert done.kept == {} and done.removed == []
    assert set(group_ids(repo)) == {mid.group_id, new.group_id, other.group_id, elsewhere.group_id}
    for g in (mid, new, other, elsewhere):
        assert missing_members(repo, g) == []
    assert repo.backup_ids() == sorted(m.backup_id for g in (mid, new, other, elsewhere)
                                       for m in g.members)
    with pytest.raises(InvalidArgument):
        prune(repo, Policy(), statefulset=("db", "pg"))


def test_prune_spares_a_backup_a_kept_group_still_names(repo: Repository) -> None:
    old = group(repo, "pg", T0)
    shared = old.members[0]
    new = GroupManifest(group_id=new_group_id(T0 + 10, key="n"), created=T0 + 10, namespace="db",
                        set_name="pg", replicas=1, ordinals_start=0, templates=old.templates,
                        members=(shared,))
    save_group(repo, new)
    done = prune(repo, Policy(keep_last=1), statefulset=("db", "pg"))
    assert list(done.groups_removed) == [old.group_id]
    assert shared.backup_id not in done.groups_removed[old.group_id]
    assert missing_members(repo, new) == []
