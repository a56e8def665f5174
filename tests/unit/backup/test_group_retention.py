"""Groups as units of retention (format §9): prune decides on a StatefulSet's groups by their
manifests' time and removes a group with all its members; a member is never judged, pruned
or forgotten alone; a schedule prunes only its own groups. Table cases, then hypothesis:
random sets of groups and single backups under random policies and scopes never leave a
group partial, and every backup goes or stays with its group."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.backup.collecting import forget, forget_group, prune
from statehold.backup.groupmanifest import (
    ClaimTemplate,
    GroupManifest,
    Member,
    group_ids,
    group_key,
    groups,
    missing_members,
    new_group_id,
    save_group,
)
from statehold.backup.manifest import Manifest
from statehold.backup.repository import Repository, manifest_key, new_backup_id
from statehold.backup.retention import Policy
from statehold.backup.store import MemoryStore
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound

DAY = 86400.0
T0 = 1767600000.0  # 2026-01-05T08:00:00Z
NIGHTLY = "schedule/db/nightly"


@pytest.fixture(scope="module")
def shared_repo() -> Repository:
    return Repository.init(MemoryStore(), "pw")


@pytest.fixture
def repo(shared_repo: Repository) -> Iterator[Repository]:
    empty(shared_repo)
    yield shared_repo


def empty(repo: Repository) -> None:
    for prefix in ("manifests/", "groups/", "quarantine/", "locks/"):
        for info in list(repo.store.list(prefix)):
            repo.store.delete(info.key)


def backup(repo: Repository, volume: str, created: float, *, origin: str = "",
           labels: dict[str, str] | None = None) -> str:
    bid = new_backup_id(created)
    repo.save_manifest(Manifest(backup_id=bid, volume=volume, size=1 << 20, chunk_size=1 << 20,
                                created=created, offsets=array("Q"), ids=b"", origin=origin,
                                labels=labels or {}))
    return bid


def group(repo: Repository, set_name: str, created: float, *, ns: str = "db", origin: str = "",
          replicas: int = 2, save: bool = True) -> GroupManifest:
    gid = new_group_id(created, key=f"{ns}/{set_name}/{created}/{origin}")
    labels = {"namespace": ns, "statefulset": set_name, "statefulsetbackup": f"b-{created}",
              "group": gid}
    members = tuple(Member(o, "data", f"data-{set_name}-{o}",
                           backup(repo, f"fast/{ns}-{set_name}-{o}", created + o, origin=origin,
                                  labels=labels), 1 << 20) for o in range(replicas))
    g = GroupManifest(group_id=gid, created=created, namespace=ns, set_name=set_name,
                      replicas=replicas, ordinals_start=0,
                      templates=(ClaimTemplate("data", storage="1Gi"),), members=members,
                      origin=origin, labels=labels)
    if save:
        save_group(repo, g)
    return g


def stored(repo: Repository) -> set[str]:
    return set(repo.backup_ids())


def test_prune_removes_old_groups_with_every_member_and_keeps_new_ones(repo: Repository) -> None:
    old, mid, new = (group(repo, "pg", T0 + d * DAY) for d in range(3))
    done = prune(repo, Policy(keep_last=2))
    assert set(done.groups_kept) == {mid.group_id, new.group_id}
    assert done.groups_removed == {old.group_id: tuple(old.backup_ids)}
    assert done.kept == {} and done.removed == []  # members are never judged as singles
    assert set(group_ids(repo)) == {mid.group_id, new.group_id}
    assert stored(repo) == set(mid.backup_ids) | set(new.backup_ids)


def test_a_volume_prune_never_touches_a_member(repo: Repository) -> None:
    g = group(repo, "pg", T0)                       # old members of fast/db-pg-0 ...
    later = [backup(repo, "fast/db-pg-0", T0 + d * DAY) for d in (1, 2, 3)]  # ... and singles
    done = prune(repo, Policy(keep_last=1), volume="fast/db-pg-0")
    assert done.removed == sorted(later[:2]) and list(done.kept) == [later[2]]
    assert done.groups_kept == {} and done.groups_removed == {}
    assert missing_members(repo, g) == []


def test_calendar_rules_judge_groups_by_their_manifests_time(repo: Repository) -> None:
    # two groups a day for four days; keepDaily=2 keeps the newest of the last two days
    made = [group(repo, "pg", T0 + d * DAY + h * 3600) for d in range(4) for h in (0, 5)]
    done = prune(repo, Policy(daily=2), statefulset=("db", "pg"))
    assert set(done.groups_kept) == {made[7].group_id, made[5].group_id}
    for g in made:
        assert (g.group_id in group_ids(repo)) == (g.group_id in done.groups_kept)
        assert all((b in stored(repo)) == (g.group_id in done.groups_kept) for b in g.backup_ids)
    within = prune(repo, Policy(within=DAY - 3600), statefulset=("db", "pg"))  # 23 h: the newest
    assert set(within.groups_kept) == {made[7].group_id}


def test_a_schedule_prunes_only_its_own_groups(repo: Repository) -> None:
    mine = [group(repo, "pg", T0 + d * DAY, origin=NIGHTLY) for d in range(3)]
    by_hand = [group(repo, "pg", T0 + d * DAY + 60) for d in range(3)]
    other_set = [group(repo, "mq", T0 + d * DAY, origin=NIGHTLY) for d in range(3)]
    done = prune(repo, Policy(keep_last=1), statefulset=("db", "pg"), origin=NIGHTLY)
    assert list(done.groups_kept) == [mine[2].group_id]
    assert set(done.groups_removed) == {mine[0].group_id, mine[1].group_id}
    left = set(group_ids(repo))
    assert {g.group_id for g in by_hand + other_set} <= left
    manual = prune(repo, Policy(keep_last=1), origin="")  # `backup prune --origin manual`
    assert set(manual.groups_removed) == {by_hand[0].group_id, by_hand[1].group_id}
    assert {g.group_id for g in other_set} <= set(group_ids(repo))


def test_dry_run_removes_nothing(repo: Repository) -> None:
    made = [group(repo, "pg", T0 + d * DAY) for d in range(3)]
    before = stored(repo)
    done = prune(repo, Policy(keep_last=1), dry_run=True)
    assert len(done.groups_removed) == 2 and done.dry_run
    assert stored(repo) == before and len(group_ids(repo)) == len(made)


def test_volume_and_statefulset_scopes_are_exclusive(repo: Repository) -> None:
    with pytest.raises(InvalidArgument):
        prune(repo, Policy(keep_last=1), volume="p/v", statefulset=("db", "pg"))


def test_members_left_by_a_cut_short_group_backup_are_judged_with_their_set(repo: Repository) -> None:
    orphan = group(repo, "pg", T0, save=False)  # members stored, group manifest never written
    done_groups = [group(repo, "pg", T0 + d * DAY) for d in (1, 2)]
    stray = backup(repo, "fast/db-pg-0", T0 - DAY)  # not the set's (no labels): out of scope
    done = prune(repo, Policy(keep_last=1), statefulset=("db", "pg"))
    assert list(done.groups_kept) == [done_groups[1].group_id]
    # the orphans are singles of their volumes, newest of each: kept, judged, not grouped
    assert set(done.kept) == set(orphan.backup_ids) and done.removed == []
    assert stray in stored(repo)


def test_an_unreadable_group_protects_every_backup_that_may_be_its_member(repo: Repository) -> None:
    g = group(repo, "pg", T0)
    later = [backup(repo, "fast/db-pg-0", T0 + d * DAY) for d in (1, 2)]
    raw = bytearray(repo.store.get(group_key(g.group_id)))
    raw[-1] ^= 1
    repo.store.put(group_key(g.group_id), bytes(raw))
    done = prune(repo, Policy(keep_last=1))
    assert done.groups_unreadable == (g.group_id,)
    assert set(g.backup_ids) <= stored(repo)  # labelled with that group: left alone
    assert done.removed == [later[0]]          # the volume's other backups are judged


def test_forget_refuses_a_member_and_forgets_a_whole_group(repo: Repository) -> None:
    g, other = group(repo, "pg", T0), group(repo, "pg", T0 + DAY)
    with pytest.raises(FailedPrecondition, match=rf"{g.group_id}.*forget --group"):
        forget(repo, g.members[1].backup_id)
    assert missing_members(repo, g) == []
    r = forget_group(repo, g.group_id)
    assert r.removed[0] == group_key(g.group_id)  # the group first, then its members
    assert set(r.removed[1:]) == {manifest_key(b) for b in g.backup_ids}
    assert [x.group_id for x in groups(repo)] == [other.group_id]
    assert stored(repo) == set(other.backup_ids)
    with pytest.raises(NotFound):
        forget_group(repo, g.group_id)
    single = backup(repo, "p/v", T0)
    assert forget(repo, single).removed == (manifest_key(single),)


# -- hypothesis -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Made:
    groups: list[GroupManifest]
    singles: dict[str, tuple[str, str]]
    """backup id -> (volume, origin)."""


ORIGINS = ("", NIGHTLY, "schedule/db/hourly")
SETS = (("db", "pg"), ("db", "mq"), ("staging", "pg"))

group_specs = st.lists(st.tuples(st.sampled_from(SETS), st.integers(0, 90 * 24),
                                 st.sampled_from(ORIGINS), st.integers(1, 3)), max_size=12)
single_specs = st.lists(st.tuples(st.sampled_from(("fast/db-pg-0", "fast/db-mq-1", "p/v")),
                                  st.integers(0, 90 * 24), st.sampled_from(ORIGINS)), max_size=10)
policies = st.builds(Policy, keep_last=st.integers(0, 3), hourly=st.integers(0, 3),
                     daily=st.integers(0, 3), weekly=st.integers(0, 2),
                     monthly=st.integers(0, 2), yearly=st.integers(0, 1),
                     within=st.sampled_from((0.0, 3600.0, 3 * DAY))).filter(lambda p: not p.empty())
scopes = st.sampled_from(({}, {"volume": "fast/db-pg-0"}, {"statefulset": ("db", "pg")},
                          {"statefulset": ("staging", "pg")}))


def make(repo: Repository, gspecs: list[tuple[tuple[str, str], int, str, int]],
         sspecs: list[tuple[str, int, str]]) -> Made:
    made: list[GroupManifest] = []
    for i, ((ns, name), hours, origin, replicas) in enumerate(gspecs):
        made.append(group(repo, name, T0 + hours * 3600.0 + i, ns=ns, origin=origin,
                          replicas=replicas))
    singles = {backup(repo, vol, T0 + hours * 3600.0 + 0.5, origin=origin): (vol, origin)
               for vol, hours, origin in sspecs}
    return Made(made, singles)


@settings(max_examples=150, deadline=None)
@given(group_specs, single_specs, policies, scopes, st.sampled_from((None, *ORIGINS)))
def test_no_group_is_ever_left_partial(shared_repo: Repository,
                                       gspecs: list[tuple[tuple[str, str], int, str, int]],
                                       sspecs: list[tuple[str, int, str]], policy: Policy,
                                       scope: dict[str, object], origin: str | None) -> None:
    repo = shared_repo
    empty(repo)
    made = make(repo, gspecs, sspecs)
    done = prune(repo, policy, origin=origin, **scope)  # type: ignore[arg-type]
    left_groups = set(group_ids(repo))
    left = stored(repo)
    for g in made.groups:
        judged = ("volume" not in scope and (origin is None or g.origin == origin)
                  and scope.get("statefulset", (g.namespace, g.set_name)) == (g.namespace, g.set_name))
        if g.group_id in left_groups:   # kept: every member present, restorable
            assert set(g.backup_ids) <= left
            assert not judged or g.group_id in done.groups_kept
        else:                           # removed: with all its members
            assert judged and g.group_id in done.groups_removed
            assert not set(g.backup_ids) & left
    for bid, (vol, o) in made.singles.items():
        assert (bid in left) == (bid not in done.removed)
        if bid in done.removed:
            assert scope.get("volume", vol) == vol and "statefulset" not in scope
            assert origin is None or o == origin
    # every judged series keeps its newest: a set never loses its last group to a policy
    for key in {(g.namespace, g.set_name) for g in made.groups}:
        series = [g for g in made.groups if (g.namespace, g.set_name) == key
                  and g.group_id in set(done.groups_kept) | set(done.groups_removed)]
        if series:
            assert max(series, key=lambda g: (g.created, g.group_id)).group_id in left_groups
