"""Who may drive a node's part of a group across nodes (agent/groupfreeze.py), on a real
engine home without pools: the refusals come before anything is frozen."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.agent.groupfreeze import ABORTED, Caller, GroupFreezes
from statehold.engine.groups import Member
from statehold.engine.node import Node
from statehold.errors import InvalidArgument, PermissionDenied

ID = "0123456789abcdef0123456789abcdef"
MEMBERS = [Member("pa", "va", "g-va")]


@pytest.fixture
def freezes(tmp_path: Path) -> GroupFreezes:
    return GroupFreezes(Node(tmp_path / "home"), "n1")


def test_a_node_may_prepare_only_a_group_it_takes_part_in(freezes: GroupFreezes) -> None:
    with pytest.raises(PermissionDenied):
        freezes.prepare(Caller("n3", "node"), ID, "g", MEMBERS, ["n1", "n2"], 5.0)


def test_a_group_that_does_not_name_this_node_is_refused(freezes: GroupFreezes) -> None:
    with pytest.raises(InvalidArgument):
        freezes.prepare(Caller("n2", "node"), ID, "g", MEMBERS, ["n2", "n3"], 5.0)


@pytest.mark.parametrize("attempt, lease", [("not-hex", 5.0), (ID, 0.0), (ID, 601.0)])
def test_bad_ids_and_leases_are_refused(freezes: GroupFreezes, attempt: str, lease: float) -> None:
    with pytest.raises(InvalidArgument):
        freezes.prepare(Caller("n1", "node"), attempt, "g", MEMBERS, ["n1"], lease)


def test_an_abort_that_overtakes_its_prepare_keeps_the_prepare_from_freezing(
        freezes: GroupFreezes) -> None:
    coordinator = Caller("n2", "node")
    assert freezes.abort(coordinator, ID, "g").state == ABORTED
    late = freezes.prepare(coordinator, ID, "g", MEMBERS, ["n1", "n2"], 5.0)
    assert late.state == ABORTED and late.frozen == 0
    # and nobody else may decide it
    with pytest.raises(PermissionDenied):
        freezes.commit(Caller("n3", "node"), ID, "g", 0.0)
    assert freezes.commit(Caller("op", "controller"), ID, "g", 0.0).state == ABORTED
