"""The controller's Agents port over the agents' gRPC API (AgentFleet), on real TCP and
mutual TLS on 127.0.0.1, with in-memory replication cores: copies found by name in pools
named per node, a new copy made like the primary's volume, a final sync refused while the
volume is in use, release, and the errors the reconciler tells apart (NotFound: no copy;
Unavailable: no answer or no address)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from statehold import errors
from statehold.agent import pki
from statehold.agent.book import Peer
from statehold.agent.copies import VolumeRef
from statehold.agent.fleet import AgentFleet
from statehold.agent.server import AgentServer
from statehold.controller.replicas import Agents
from statehold.replication.cluster import CopyTarget
from tests.unit.agent.memory_copies import MemoryCopies

DATA = bytes(range(256)) * 1024
VOLUME = "pool-a/db"  # the CSI handle: made in n1's pool "pool-a"


class Directory:
    def __init__(self) -> None:
        self.addresses: dict[str, str] = {}
        self.primaries: dict[str, str] = {}

    def address(self, node: str) -> str:
        try:
            return self.addresses[node]
        except KeyError:
            raise errors.NotFound(f"no node {node}") from None

    def primary(self, volume: str) -> str | None:
        return self.primaries.get(volume)


@pytest.fixture
def world(agents, bundle_for):  # type: ignore[no-untyped-def]
    """n1 holds the primary in pool-a, n2 a replica in pool-b; n3 has no copy."""
    cores = {"n1": MemoryCopies(), "n2": MemoryCopies(), "n3": MemoryCopies()}
    cores["n1"].add(VOLUME, "primary", DATA, epoch=2)
    cores["n2"].add("pool-b/db", "replica", DATA, epoch=2)
    cores["n2"].copies[VolumeRef("pool-b", "db")].point = "p7"
    servers = {n: agents(n, c) for n, c in cores.items()}
    directory = Directory()
    directory.addresses = {n: f"127.0.0.1:{s.port}" for n, s in servers.items()}
    directory.primaries[VOLUME] = "n1"
    fleet = AgentFleet(bundle_for("statehold-operator", role="controller"), directory, timeout=5)
    yield cores, servers, directory, fleet
    fleet.close()


World = tuple[dict[str, MemoryCopies], dict[str, AgentServer], Directory, AgentFleet]


def test_the_fleet_is_the_controllers_agents_port(world: World) -> None:
    agents: Agents = world[3]  # checked by mypy: the port is implemented structurally
    assert agents is world[3]


def test_copy_state_finds_the_copy_in_the_nodes_own_pool(world: World) -> None:
    _cores, _servers, _directory, fleet = world
    primary = fleet.copy_state("n1", VOLUME)
    assert (primary.node, primary.pool, primary.role, primary.epoch) == ("n1", "pool-a", "primary", 2)
    replica = fleet.copy_state("n2", VOLUME)
    assert (replica.pool, replica.role, replica.point) == ("pool-b", "replica", "p7")
    with pytest.raises(errors.NotFound):
        fleet.copy_state("n3", VOLUME)


def test_no_address_or_no_answer_is_unavailable_never_not_found(world: World,
                                                               bundle_for: Callable[..., pki.Bundle]) -> None:
    _cores, servers, directory, fleet = world
    with pytest.raises(errors.Unavailable):
        fleet.copy_state("n9", VOLUME)  # the cluster knows no address for it
    port = servers["n3"].port
    servers["n3"].stop(grace=0)
    directory.addresses["n3"] = f"127.0.0.1:{port}"
    with pytest.raises(errors.Unavailable):
        fleet.copy_state("n3", VOLUME)


def test_a_server_whose_certificate_names_another_node_is_refused(world: World) -> None:
    _cores, _servers, directory, fleet = world
    directory.addresses["n3"] = directory.addresses["n1"]  # n1's agent answers for "n3"
    with pytest.raises(errors.Unavailable):
        fleet.copy_state("n3", VOLUME)


def test_create_copy_is_made_like_the_primarys_volume(world: World) -> None:
    cores, _servers, _directory, fleet = world
    fleet.create_copy("n3", VOLUME, pool="pool-c", size=4096)
    made = VolumeRef("pool-c", "db")
    assert cores["n3"].copies[made].role == "seeding"
    report = fleet.copy_state("n3", VOLUME)
    assert (report.pool, report.role, report.epoch) == ("pool-c", "seeding", 0)


def test_create_copy_without_a_recorded_primary_is_refused(world: World) -> None:
    _cores, _servers, directory, fleet = world
    directory.primaries.clear()
    with pytest.raises(errors.FailedPrecondition):
        fleet.create_copy("n3", VOLUME, pool="pool-c", size=4096)


def test_set_replicas_gives_the_primary_each_replicas_address_and_pool(world: World) -> None:
    _cores, servers, directory, fleet = world
    fleet.set_replicas("n1", VOLUME, [CopyTarget("n2", "pool-b"), CopyTarget("n9", "x")])
    assert servers["n1"].book.get(VolumeRef.parse(VOLUME)) == (
        Peer("n2", directory.addresses["n2"], "pool-b"),)  # n9 has no address: left out


def test_promote_and_demote_reach_the_copy_where_it_is(world: World) -> None:
    cores, _servers, _directory, fleet = world
    fleet.promote("n2", VOLUME, 3)
    fleet.demote("n1", VOLUME, 3)
    assert (cores["n2"].copies[VolumeRef("pool-b", "db")].role,
            cores["n1"].copies[VolumeRef.parse(VOLUME)].role) == ("primary", "replica")
    with pytest.raises(errors.FailedPrecondition):
        fleet.promote("n1", VOLUME, 2)  # an epoch the copy already saw


def test_final_sync_waits_while_the_volume_is_in_use_then_returns_the_point(world: World) -> None:
    cores, _servers, _directory, fleet = world
    fleet.set_replicas("n1", VOLUME, [CopyTarget("n2", "pool-b")])
    cores["n1"].in_use_volumes.add(VolumeRef.parse(VOLUME))
    with pytest.raises(errors.Aborted):
        fleet.final_sync("n1", VOLUME, "n2")
    assert cores["n2"].copies[VolumeRef("pool-b", "db")].point == "p7"  # nothing was sent
    cores["n1"].in_use_volumes.clear()
    point = fleet.final_sync("n1", VOLUME, "n2")
    assert cores["n2"].copies[VolumeRef("pool-b", "db")].point == point != "p7"
    with pytest.raises(errors.FailedPrecondition):
        fleet.final_sync("n1", VOLUME, "n3")  # not one of its replicas


def test_release_deletes_the_copy_and_its_replica_list_and_is_idempotent(world: World) -> None:
    cores, servers, _directory, fleet = world
    servers["n2"].book.set(VolumeRef("pool-b", "db"), (Peer("n3", "127.0.0.1:1"),))
    fleet.release("n2", VOLUME)
    assert VolumeRef("pool-b", "db") not in cores["n2"].copies
    assert servers["n2"].book.get(VolumeRef("pool-b", "db")) == ()
    fleet.release("n2", VOLUME)  # already gone: a success
    with pytest.raises(errors.NotFound):
        fleet.copy_state("n2", VOLUME)


def test_the_primary_is_never_released(world: World) -> None:
    cores, _servers, _directory, fleet = world
    with pytest.raises(errors.FailedPrecondition):
        fleet.release("n1", VOLUME)
    assert VolumeRef.parse(VOLUME) in cores["n1"].copies


def test_delete_copy_takes_even_the_primary_but_never_one_in_use(world: World) -> None:
    """A reclaimed PV's copies (controller/reclaim.py): Release with ``whole``."""
    cores, servers, _directory, fleet = world
    ref = VolumeRef.parse(VOLUME)
    servers["n1"].book.set(ref, (Peer("n2", "127.0.0.1:1", "pool-b"),))
    cores["n1"].in_use_volumes.add(ref)
    with pytest.raises(errors.FailedPrecondition):
        fleet.delete_copy("n1", VOLUME)
    assert ref in cores["n1"].copies
    cores["n1"].in_use_volumes.clear()
    fleet.delete_copy("n1", VOLUME)
    assert ref not in cores["n1"].copies and servers["n1"].book.get(ref) == ()
    fleet.delete_copy("n1", VOLUME)  # already gone: a success
    fleet.delete_copy("n2", VOLUME)  # a replica goes the same way
    assert VolumeRef("pool-b", "db") not in cores["n2"].copies
    fleet.delete_copy("n3", VOLUME)  # never held one: a success


def test_a_replicas_lag_is_measured_from_when_the_primary_took_its_point(world: World) -> None:
    _cores, _servers, _directory, fleet = world
    fleet.set_replicas("n1", VOLUME, [CopyTarget("n2", "pool-b")])
    point = fleet.final_sync("n1", VOLUME, "n2")
    fleet.copy_state("n1", VOLUME)  # the primary says when it took the replica's point
    report = fleet.copy_state("n2", VOLUME)
    assert report.point == point and report.point_time is not None and report.point_time > 0
