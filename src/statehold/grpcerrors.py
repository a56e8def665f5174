"""The one mapping between the Statehold error tree and gRPC status codes, both ways.

The gRPC adapters (``statehold.csi``, ``statehold.agent``) are siblings that must not import
each other; both answer errors through this module, so a NotFound is NOT_FOUND everywhere:

* :func:`code_for` / :func:`status_of`: a raised exception -> the code and message a server
  answers with (anything that is not a :class:`~statehold.errors.StateholdError` is a bug and
  becomes INTERNAL);
* :func:`error_from`: a code received by a client -> the Statehold error it stands for, so
  a ``grpc.RpcError`` never leaks past the module that made the call.
"""

from __future__ import annotations

import grpc

from statehold import errors

CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.OutOfCapacity, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Temporary, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    # bytes failed a check (a damaged chunk, frame or manifest): not a bug on our side, and
    # a client must be able to tell it from one (INTERNAL) to resend or report the damage
    (errors.Corrupt, grpc.StatusCode.DATA_LOSS),
)
"""Error class -> gRPC code; first match wins, anything else is INTERNAL."""

_ERRORS: dict[grpc.StatusCode, type[errors.StateholdError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: errors.OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.OutOfCapacity,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied,
    grpc.StatusCode.DATA_LOSS: errors.Corrupt,
    # the peer did not answer in time, or the call was cut: worth retrying
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.CANCELLED: errors.Aborted,
}
"""gRPC code received by a client -> Statehold error; anything else (INTERNAL: a bug on the
other side, UNKNOWN) is a plain :class:`~statehold.errors.StateholdError`."""


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code a Statehold error (or any exception) is answered with."""
    for cls, code in CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) a server answers ``exc`` with; an unexpected exception names its type."""
    if isinstance(exc, errors.StateholdError):
        return code_for(exc), str(exc) or type(exc).__name__
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def error_from(exc: grpc.RpcError, what: str = "") -> errors.StateholdError:
    """The Statehold error a failed call stands for (raise it ``from exc``); ``what`` names
    the call or peer for the message."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else "") or code.name
    message = f"{what}: {details}" if what else details
    return _ERRORS.get(code, errors.StateholdError)(message)
