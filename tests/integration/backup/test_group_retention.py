"""Group backups as units of retention on a real directory repository (formats 1 and 2):
after a prune every remaining group restores, each member byte for byte; gc keeps every
chunk a remaining group's members name; a group forgotten as a whole frees its chunks at
the next gc; the CLI refuses to forget a member alone and forgets a whole group."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from statehold.backup.collecting import forget, forget_group, gc, prune
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.groupmanifest import (
    ClaimTemplate,
    GroupManifest,
    Member,
    group_ids,
    groups,
    missing_members,
    new_group_id,
    save_group,
)
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.cli.main import build_app
from statehold.errors import FailedPrecondition

MiB = 1 << 20
DAY = 86400.0
T0 = 1767600000.0
NIGHTLY = "schedule/db/nightly"
ENV = {"STATEHOLD_REPO_PASSWORD": "s3cret"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image(path: Path) -> Path:
    """2 MiB, its first 768 KiB random: chunks no other image shares."""
    with open(path, "wb") as f:
        f.truncate(2 * MiB)
        f.write(os.urandom(768 << 10))
    return path


def group_backup(repo: Repository, work: Path, day: int, *, origin: str = NIGHTLY,
                 replicas: int = 3) -> tuple[GroupManifest, dict[str, str]]:
    """A set's group as the operator writes it: members first (origin and member labels),
    then the group manifest. Returns it and each member's checksum."""
    created = T0 + day * DAY
    gid = new_group_id(created, key=f"uid-{day}-{origin}")
    members, sums = [], {}
    for o in range(replicas):
        img = image(work / f"pg-{day}-{o}-{origin.replace('/', '_')}")
        m = create_backup(repo, img, volume=f"fast/data-pg-{o}", origin=origin,
                          labels={"namespace": "db", "statefulset": "pg", "group": gid,
                                  "statefulsetbackup": f"nightly-pg-{day}"})
        members.append(Member(o, "data", f"data-pg-{o}", m.backup_id, m.size, f"fast/data-pg-{o}"))
        sums[m.backup_id] = sha(img)
    g = GroupManifest(group_id=gid, created=created, namespace="db", set_name="pg",
                      replicas=replicas, ordinals_start=0,
                      templates=(ClaimTemplate("data", "statehold-local", storage="2Mi"),),
                      members=tuple(members), origin=origin)
    save_group(repo, g)
    return g, sums


def restores(repo: Repository, g: GroupManifest, sums: dict[str, str], out: Path) -> None:
    """Every member of ``g`` is present and restores to the bytes that were backed up."""
    assert missing_members(repo, g) == []
    for m in g.members:
        target = out / f"restored-{m.backup_id}"
        restore_image(repo, m.backup_id, target)
        assert sha(target) == sums[m.backup_id], m.claim
        target.unlink()


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()
               and (p.relative_to(root).parts[0] in ("chunks", "packs")))


@pytest.mark.parametrize("version", [1, 2])
def test_after_a_prune_every_remaining_group_restores_and_a_forgotten_one_frees_its_chunks(
        tmp_path: Path, version: int) -> None:
    root = tmp_path / "repo"
    repo = Repository.init(DirectoryStore(root), "s3cret", version=version)
    sums: dict[str, str] = {}
    made: list[GroupManifest] = []
    for day in range(5):
        g, s = group_backup(repo, tmp_path, day)
        made.append(g)
        sums |= s
    by_hand, s = group_backup(repo, tmp_path, 1, origin="")  # not the schedule's: never judged
    sums |= s

    done = prune(repo, Policy(keep_last=2, weekly=2), statefulset=("db", "pg"), origin=NIGHTLY)
    assert set(done.groups_removed) == {g.group_id for g in made} - set(done.groups_kept)
    assert done.groups_removed and by_hand.group_id in group_ids(repo)
    remaining = list(groups(repo))
    assert {g.group_id for g in remaining} == set(done.groups_kept) | {by_hand.group_id}
    named = {b for g in remaining for b in g.backup_ids}
    assert set(repo.backup_ids()) == named  # no member outlived its group, none went alone
    r = gc(repo, grace=0)
    assert r.chunks_deleted > 0 and not r.damaged  # the pruned groups' chunks went
    for g in remaining:
        restores(repo, g, sums, tmp_path)

    doomed = next(g for g in remaining if g.group_id != by_hand.group_id)
    with pytest.raises(FailedPrecondition, match=doomed.group_id):
        forget(repo, doomed.members[0].backup_id)
    before = stored_bytes(root)
    forget_group(repo, doomed.group_id)
    r = gc(repo, grace=0)
    freed = before - stored_bytes(root)
    # three members of 768 KiB of random data each (compression gains nothing on them)
    assert r.chunks_deleted > 0 and freed >= 3 * (700 << 10), (r, freed)
    for g in groups(repo):
        restores(repo, g, sums, tmp_path)


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(build_app(), [*args, "--home", str(home)], env=ENV)


def test_the_cli_forgets_a_group_whole_and_never_a_member_alone(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "repo"
    home.mkdir()
    assert run(home, "target", "add", "t1", "--path", str(root)).exit_code == 0
    repo = Repository.open(DirectoryStore(root), "s3cret")
    old, _ = group_backup(repo, tmp_path, 0)
    new, _ = group_backup(repo, tmp_path, 1)

    refused = run(home, "backup", "forget", old.members[1].backup_id, "-t", "t1")
    assert refused.exit_code != 0
    assert old.group_id in refused.stderr and "--group" in refused.stderr
    assert missing_members(repo, old) == []

    pruned = run(home, "backup", "prune", "-t", "t1", "--keep-last", "1", "--statefulset", "db/pg")
    assert pruned.exit_code == 0, pruned.stderr
    assert old.group_id in pruned.stdout and "groups: 1 kept, 1 removed" in pruned.stdout
    assert group_ids(repo) == [new.group_id]

    gone = run(home, "backup", "forget", "--group", new.group_id, "-t", "t1")
    assert gone.exit_code == 0, gone.stderr
    assert "3 member backup(s)" in gone.stdout
    assert group_ids(repo) == [] and repo.backup_ids() == []
