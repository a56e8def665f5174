"""One error mapping: every Statehold error class answers with the spec's gRPC code."""

from __future__ import annotations

import threading

import grpc
import pytest

from statehold import errors
from statehold.csi.status import VolumeLocks, code_for, rpc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.OutOfRange("x"), grpc.StatusCode.OUT_OF_RANGE),
        (errors.OutOfCapacity("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Aborted("x"), grpc.StatusCode.ABORTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.Temporary("x", 2.0), grpc.StatusCode.UNAVAILABLE),
        (errors.Corrupt("x"), grpc.StatusCode.DATA_LOSS),
        (errors.CommandError(["mkfs"], 1, "boom"), grpc.StatusCode.INTERNAL),
        (ValueError("bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_error_maps_to_spec_code(exc: Exception, code: grpc.StatusCode) -> None:
    assert code_for(exc) == code


class Aborting(Exception):
    pass


class FakeContext:
    """Records context.abort the way grpc does it: by raising."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborting


class Servicer:
    def __init__(self) -> None:
        self.locks = VolumeLocks()
        self.entered = threading.Event()
        self.release = threading.Event()

    @rpc(lock=lambda r: r)
    def Slow(self, request: str, context: object) -> str:
        self.entered.set()
        assert self.release.wait(10)
        return "done"

    @rpc()
    def Fails(self, request: Exception, context: object) -> str:
        raise request


def test_rpc_turns_errors_into_abort_with_code() -> None:
    ctx = FakeContext()
    with pytest.raises(Aborting):
        Servicer().Fails(errors.NotFound("no volume v"), ctx)  # type: ignore[arg-type]
    assert ctx.code == grpc.StatusCode.NOT_FOUND and "no volume v" in ctx.details


def test_unexpected_exception_is_internal_not_a_crash() -> None:
    ctx = FakeContext()
    with pytest.raises(Aborting):
        Servicer().Fails(KeyError("oops"), ctx)  # type: ignore[arg-type]
    assert ctx.code == grpc.StatusCode.INTERNAL


def test_second_call_on_same_volume_while_first_in_flight_is_aborted() -> None:
    s = Servicer()
    results: list[str] = []
    t = threading.Thread(target=lambda: results.append(s.Slow("pool/v1", FakeContext())))  # type: ignore[arg-type]
    t.start()
    assert s.entered.wait(10)
    ctx = FakeContext()
    with pytest.raises(Aborting):
        s.Slow("pool/v1", ctx)  # type: ignore[arg-type]
    assert ctx.code == grpc.StatusCode.ABORTED
    s.release.set()
    t.join(10)
    assert results == ["done"]
    assert s.locks.busy() == frozenset()
    assert s.Slow("pool/v1", FakeContext()) == "done"  # type: ignore[arg-type]  # lock released


def test_other_volumes_are_not_blocked() -> None:
    locks = VolumeLocks()
    with locks.hold("pool/a"), locks.hold("pool/b"):
        assert locks.busy() == {"pool/a", "pool/b"}
        with pytest.raises(errors.Aborted), locks.hold("pool/a"):
            pass


def test_probe_fails_precondition_when_a_tool_is_missing() -> None:
    from statehold.csi.gen import csi_pb2
    from statehold.csi.identity import IdentityServicer, missing_tools

    assert missing_tools(("sh",)) == ""
    assert "no-such-tool-xyz" in missing_tools(("sh", "no-such-tool-xyz"))
    ctx = FakeContext()
    sick = IdentityServicer(health=lambda: missing_tools(("no-such-tool-xyz",)))
    with pytest.raises(Aborting):
        sick.Probe(csi_pb2.ProbeRequest(), ctx)  # type: ignore[arg-type]
    assert ctx.code == grpc.StatusCode.FAILED_PRECONDITION
    healthy = IdentityServicer(health=lambda: "")
    assert healthy.Probe(csi_pb2.ProbeRequest(), FakeContext()).ready.value  # type: ignore[arg-type]
