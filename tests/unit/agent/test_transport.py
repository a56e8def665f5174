"""The agent as a transport, over real TCP and mutual TLS on 127.0.0.1, with an in-memory
replication core (opaque frames): streams, cut streams, one stream per volume, fencing
errors as codes, the replication loop's status and metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from statehold import errors
from statehold.agent import pki
from statehold.agent.book import Peer
from statehold.agent.client import AgentClient
from statehold.agent.copies import Applied, CopyView, VolumeRef
from statehold.agent.server import AgentServer
from tests.fixtures.netns import wait_for
from tests.unit.agent.memory_copies import MemoryCopies

DATA = bytes(range(256)) * 4096  # 1 MiB: 16 data frames of 64 KiB
NEW = CopyView(role="seeding", epoch=0, point="")


def client_of(server: AgentServer, bundle: pki.Bundle) -> AgentClient:
    return AgentClient(f"127.0.0.1:{server.port}", bundle)


def test_lag_is_reported_only_for_replicas_streamed_from_here_now(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    primary = MemoryCopies()
    vol = primary.add("pool/db", "primary", DATA, epoch=3)
    a = agents("n1", primary)
    b, c = agents("n2", MemoryCopies()), agents("n3", MemoryCopies())
    with client_of(a, bundle_for("ctl", role="controller")) as ctl:
        ctl.set_replicas(vol, [Peer("n2", f"127.0.0.1:{b.port}"), Peer("n3", f"127.0.0.1:{c.port}")],
                         rpo_seconds=15)
        assert a.replicator.cycle() == 2
        registry = a.replicator.metrics.registry

        def lag(node: str) -> float | None:
            value: float | None = registry.get_sample_value(
                "statehold_replication_lag_seconds", {"volume": "pool/db", "replica": node})
            return value

        assert lag("n2") is not None and lag("n3") is not None
        ctl.set_replicas(vol, [Peer("n2", f"127.0.0.1:{b.port}")], rpo_seconds=15)
        assert lag("n3") is None and lag("n2") is not None  # a released replica: no growing age
        primary.demote(vol, 4)  # fenced: another node is the primary now
        assert a.replicator.cycle() == 0
        assert lag("n2") is None  # the new primary reports its replicas' lag, not this node
        assert registry.get_sample_value("statehold_replication_rpo_seconds", {"volume": "pool/db"}) is None


def test_ping_names_the_agent_and_the_verified_caller(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    server = agents("n1", MemoryCopies())
    with client_of(server, bundle_for("n2")) as c:
        reply = c.ping()
    assert (reply.node, reply.caller) == ("n1", "node/n2")
    with client_of(server, bundle_for("ctl", role="controller")) as c:
        assert c.ping().caller == "controller/ctl"


def test_replication_cycle_copies_the_volume_and_reports_lag_and_bytes(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    primary, replica = MemoryCopies(), MemoryCopies()
    vol = primary.add("pool/db", "primary", DATA, epoch=3)
    a = agents("n1", primary)
    b = agents("n2", replica)
    with client_of(a, bundle_for("ctl", role="controller")) as ctl:
        ctl.set_replicas(vol, [Peer("n2", f"127.0.0.1:{b.port}")])
    assert a.replicator.cycle() == 1
    copy = replica.copies[vol]  # created by the loop (CreateCopy), then seeded
    assert (copy.data, copy.epoch, copy.point) == (DATA, 3, "p1")
    assert primary.acked == [(vol, "p1")]
    with client_of(a, bundle_for("ctl", role="controller")) as ctl:
        status = ctl.copy_status(vol)
    assert (status.role, status.epoch, list(status.wire_versions)) == ("primary", 3, [1])
    [r] = status.replicas
    assert (r.node, r.point, r.last_error) == ("n2", "p1", "")
    assert r.sent_bytes > len(DATA) and r.acknowledged_at > 0 and r.lag_seconds >= 0
    registry = a.replicator.metrics.registry
    labels = {"volume": "pool/db", "replica": "n2"}
    assert registry.get_sample_value("statehold_replication_lag_seconds", labels) >= 0
    assert registry.get_sample_value("statehold_replication_sent_bytes_total", labels) == r.sent_bytes
    assert b"statehold_replication_lag_seconds" in a.replicator.metrics.exposition()
    # no RPO given (an older controller): none exported, so no alert compares with a guess
    assert registry.get_sample_value("statehold_replication_rpo_seconds", {"volume": "pool/db"}) is None
    with client_of(a, bundle_for("ctl", role="controller")) as ctl:
        ctl.set_replicas(vol, [Peer("n2", f"127.0.0.1:{b.port}")], rpo_seconds=45)
    assert registry.get_sample_value("statehold_replication_rpo_seconds", {"volume": "pool/db"}) == 45


def test_one_cycle_brings_every_replica_to_the_same_point(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    primary, r2, r3 = MemoryCopies(), MemoryCopies(), MemoryCopies()
    vol = primary.add("pool/db", "primary", DATA)
    a, b, c = agents("n1", primary), agents("n2", r2), agents("n3", r3)
    a.book.set(vol, (Peer("n2", f"127.0.0.1:{b.port}"), Peer("n3", f"127.0.0.1:{c.port}")))
    assert a.replicator.cycle() == 2
    assert r2.copies[vol].point == r3.copies[vol].point == "p1"
    assert primary.acked == [(vol, "p1"), (vol, "p1")]


def test_replica_that_is_not_primary_is_not_streamed_from(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    copies = MemoryCopies()
    vol = copies.add("pool/db", "replica", DATA)
    a = agents("n1", copies)
    a.book.set(vol, (Peer("n2", "127.0.0.1:1"),))
    assert a.replicator.cycle() == 0
    assert a.replicator.report(vol)[0].sent_bytes == 0


def test_unreachable_replica_is_an_error_in_status_not_a_crash(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    copies = MemoryCopies()
    vol = copies.add("pool/db", "primary", DATA)
    a = agents("n1", copies)
    a.book.set(vol, (Peer("n2", "127.0.0.1:1"),))
    assert a.replicator.cycle() == 0
    [r] = a.replicator.report(vol)
    assert r.last_error.startswith("Unavailable") and r.point == ""


def frames_then(fail_after: int, source: Iterator[bytes], applied: Callable[[], bool]) -> Iterator[bytes]:
    """The source's first ``fail_after`` frames, then (once ``applied()``) a failure."""
    for i, data in enumerate(source):
        if i == fail_after:
            wait_for(applied)
            raise ConnectionError("the primary died mid-stream")
        yield data


def test_cut_stream_keeps_the_previous_point_and_resumes_next_time(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    primary, replica = MemoryCopies(), MemoryCopies()
    vol = primary.add("pool/db", "primary", DATA, epoch=1)
    replica.add("pool/db", "replica", b"old", epoch=1)
    replica.copies[vol].point = "p0"
    b = agents("n2", replica)
    with client_of(b, bundle_for("n1")) as c:
        out = primary.stream(vol, epoch=1, remote=c.state(vol)[0] or NEW, peer="n2")
        with pytest.raises(errors.StateholdError):
            c.replicate(vol, frames_then(6, out.frames, lambda: replica.copies[vol].applied_frames == 5))
        copy = replica.copies[vol]
        assert (copy.data, copy.point) == (b"old", "p0")

        def resume() -> tuple[CopyView, Applied] | None:
            """The replica kept what it staged; the next stream resumes there. The client
            sees the cut before the replica has unwound it, and until then a new stream
            is refused (Aborted), as a primary that retries at once would see."""
            state, _ = c.state(vol)
            assert state is not None
            assert state.point == "p0" and 0 < state.resume_offset < len(DATA)
            out = primary.stream(vol, epoch=1, remote=state, peer="n2")
            try:
                return state, c.replicate(vol, out.frames)
            except errors.Aborted:
                return None

        state, ack = wait_for(resume, 30.0, "the replica to release the cut stream")
    assert replica.copies[vol].data == DATA and ack.point == replica.copies[vol].point
    assert ack.bytes == len(DATA) - state.resume_offset


def test_stream_that_ends_without_its_end_frame_is_not_applied(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    replica = MemoryCopies()
    vol = replica.add("pool/db", "replica", b"old")
    b = agents("n2", replica)
    with client_of(b, bundle_for("n1")) as c, pytest.raises(errors.Unavailable):
        c.replicate(vol, iter([b"H1:px", b"Dabc"]))
    assert replica.copies[vol].data == b"old"


def test_a_second_stream_into_the_same_volume_is_aborted(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    primary, replica = MemoryCopies(), MemoryCopies()
    vol = primary.add("pool/db", "primary", DATA)
    replica.add("pool/db", "seeding")
    replica.gate.clear()  # the first stream's writer waits before its first frame
    b = agents("n2", replica)
    results: list[object] = []
    with client_of(b, bundle_for("n1")) as c:
        first = threading.Thread(target=lambda: results.append(
            c.replicate(vol, primary.stream(vol, epoch=1, remote=NEW, peer="n2").frames)))
        first.start()
        assert replica.applying.wait(20)
        with pytest.raises(errors.Aborted, match="already in progress"):
            c.replicate(vol, primary.stream(vol, epoch=1, remote=NEW, peer="n2").frames)
        replica.gate.set()
        first.join(30)
    assert len(results) == 1 and replica.copies[vol].data == DATA


def test_core_errors_arrive_as_their_statehold_errors(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    replica = MemoryCopies()
    vol = replica.add("pool/db", "replica", b"x", epoch=5)
    b = agents("n2", replica)
    with client_of(b, bundle_for("n1")) as c:
        with pytest.raises(errors.FailedPrecondition, match="older"):
            c.replicate(vol, iter([b"H4:p", b"E"]))
        with pytest.raises(errors.NotFound):
            c.copy_status(VolumeRef("pool", "nope"))
        assert c.state(VolumeRef("pool", "nope")) == (None, (1,))
        with pytest.raises(errors.InvalidArgument):
            c.replicate(VolumeRef("pool", "x"), iter([]))
    with client_of(b, bundle_for("ctl", role="controller")) as c:
        with pytest.raises(errors.FailedPrecondition):
            c.promote(vol, 5)
        assert c.promote(vol, 6).role == "primary"
        assert c.demote(vol, 6).role == "replica"


def test_bad_volume_names_and_self_replicas_are_invalid(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    a = agents("n1", MemoryCopies())
    with client_of(a, bundle_for("ctl", role="controller")) as c:
        with pytest.raises(errors.InvalidArgument):
            c.set_replicas(VolumeRef("pool", "v"), [Peer("n1", "127.0.0.1:1")])
        with pytest.raises(errors.InvalidArgument):
            c.set_replicas(VolumeRef("pool", "v"), [Peer("n2", "")])
    with pytest.raises(errors.InvalidArgument):
        VolumeRef.parse("no-pool")


def test_replicas_survive_an_agent_restart(agents, bundle_for, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a: AgentServer = agents("n1", MemoryCopies())
    vol = VolumeRef("pool", "v")
    with client_of(a, bundle_for("ctl", role="controller")) as c:
        c.set_replicas(vol, [Peer("n2", "10.0.0.2:7443"), Peer("n3", "10.0.0.3:7443", "other")])
    a.stop(grace=0)
    again: AgentServer = agents("n1", MemoryCopies())
    assert again.book.get(vol) == (Peer("n2", "10.0.0.2:7443"), Peer("n3", "10.0.0.3:7443", "other"))


Factory = Callable[..., AgentServer]


def test_a_replica_speaking_another_wire_version_is_not_streamed_to(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    primary, replica = MemoryCopies(), MemoryCopies()
    vol = primary.add("pool/db", "primary", DATA)
    replica.wire_versions = (2,)  # type: ignore[misc]
    a, b = agents("n1", primary), agents("n2", replica)
    a.book.set(vol, (Peer("n2", f"127.0.0.1:{b.port}"),))
    assert a.replicator.cycle() == 0
    assert "wire versions [2]" in a.replicator.report(vol)[0].last_error
    assert vol not in replica.copies


def test_sync_streams_now_and_reports_each_replica(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    primary, replica = MemoryCopies(), MemoryCopies()
    vol = primary.add("pool/db", "primary", DATA, epoch=2)
    a, b = agents("n1", primary), agents("n2", replica)
    a.book.set(vol, (Peer("n2", f"127.0.0.1:{b.port}"), Peer("n3", "127.0.0.1:1")))
    with client_of(a, bundle_for("ctl", role="controller")) as c:
        n2, n3 = c.sync(vol)
        assert (n2.node, n2.point, n2.last_error) == ("n2", "p1", "")
        assert n3.node == "n3" and n3.last_error.startswith("Unavailable")
        primary.copies[vol].role = "replica"
        with pytest.raises(errors.FailedPrecondition, match="not the primary"):
            c.sync(vol)
    assert replica.copies[vol].data == DATA


def test_only_a_controller_certificate_may_change_roles_or_data_placement(agents, bundle_for) -> None:  # type: ignore[no-untyped-def]
    copies = MemoryCopies()
    vol = copies.add("pool/db", "replica", DATA, epoch=1)
    server = agents("n1", copies)
    with client_of(server, bundle_for("n2")) as node:
        assert node.copy_status(vol).role == "replica"  # what agents ask of each other still works
        for call in (lambda: node.promote(vol, 2), lambda: node.demote(vol, 2),
                     lambda: node.set_replicas(vol, []), lambda: node.sync(vol)):
            with pytest.raises(errors.PermissionDenied, match="only the controller"):
                call()
    assert (copies.copies[vol].role, copies.copies[vol].epoch) == ("replica", 1)  # nothing changed
    with client_of(server, bundle_for("ctl", role="controller")) as ctl:
        assert ctl.promote(vol, 2).role == "primary"
