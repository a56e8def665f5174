"""One mapping between the error tree and gRPC codes, both ways."""

from __future__ import annotations

import grpc
import pytest

from statehold import errors
from statehold.grpcerrors import code_for, error_from, status_of


class FailedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("cls", [errors.NotFound, errors.AlreadyExists, errors.InvalidArgument,
                                 errors.OutOfRange, errors.OutOfCapacity, errors.FailedPrecondition,
                                 errors.Aborted, errors.Unavailable, errors.PermissionDenied,
                                 errors.Corrupt])
def test_a_code_comes_back_as_the_error_it_was(cls: type[errors.StateholdError]) -> None:
    code = code_for(cls("x"))
    back = error_from(FailedCall(code, "boom"), "Ping on 10.0.0.2:7443")
    assert type(back) is cls and str(back) == "Ping on 10.0.0.2:7443: boom"


def test_unexpected_exceptions_are_internal_with_their_type_and_damage_is_data_loss() -> None:
    assert status_of(KeyError("k")) == (grpc.StatusCode.INTERNAL, "KeyError: 'k'")
    assert status_of(errors.Corrupt("bad hash")) == (grpc.StatusCode.DATA_LOSS, "bad hash")
    assert type(error_from(FailedCall(grpc.StatusCode.INTERNAL, "bug"))) is errors.StateholdError


def test_transport_codes_are_retryable_errors() -> None:
    assert isinstance(error_from(FailedCall(grpc.StatusCode.DEADLINE_EXCEEDED, "")), errors.Unavailable)
    assert isinstance(error_from(FailedCall(grpc.StatusCode.UNAUTHENTICATED, "")), errors.PermissionDenied)
