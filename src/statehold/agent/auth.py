"""Every call is authenticated: a server interceptor that checks the caller's certificate.

The TLS handshake (``require_client_auth``) has already refused a client without a
certificate chaining to the cluster CA. This interceptor then reads the verified peer
certificate from the call's auth context and requires it to be a Statehold node or
controller certificate issued directly by the cluster CA (:func:`pki.identify`), before
any servicer code runs. The identity is available to the servicer through
:func:`caller`.

Then the caller's role must be allowed the method: the calls that change who is primary
or where a volume's data goes (Promote, Demote, SetReplicas, Sync, Release), and the
export of a retired pool (ExportPool), are the controller's alone. A node certificate is
enough for what agents ask of each other (Ping, CopyStatus, CreateCopy, Replicate), so a
compromised node can stream its own data to the replicas it was given but cannot promote
itself, demote another node's primary or export another node's pool (PERMISSION_DENIED).

The group-snapshot calls (PrepareGroupSnapshot, CommitGroupSnapshot, AbortGroupSnapshot,
GroupSnapshotPart) are open to node certificates: the coordinator of a group across nodes
is the CSI plugin of a node, with that node's certificate. Their finer rules need the
request, so :mod:`statehold.agent.groupfreeze` applies them: a node may prepare (or delete)
only a group whose node list names it, and only whoever prepared an attempt may decide it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from statehold.agent import pki
from statehold.errors import PermissionDenied, StateholdError

log = logging.getLogger("statehold.agent")

_PEM_KEY = "x509_pem_cert"

CONTROLLER_ONLY = frozenset({"Promote", "Demote", "SetReplicas", "Sync", "Release",
                             "ExportPool"})
"""Methods (by name) only a ``controller`` certificate may call."""

GROUP_CALLS = frozenset({"PrepareGroupSnapshot", "CommitGroupSnapshot", "AbortGroupSnapshot",
                         "GroupSnapshotPart"})
"""Methods a ``node`` certificate may call as a group's coordinator (checked further by
``groupfreeze`` against the request)."""


def allowed(role: str, method: str) -> bool:
    """Whether ``role`` may call the gRPC ``method`` (``/package.Service/Name``)."""
    return role == "controller" or method.rsplit("/", 1)[-1] not in CONTROLLER_ONLY


def caller(context: grpc.ServicerContext, ca: bytes) -> pki.Identity:
    """The verified identity of the peer of ``context``; PermissionDenied if it has none."""
    pems = context.auth_context().get(_PEM_KEY) or []
    if not pems:
        raise PermissionDenied("no client certificate")
    return _identify(pems[0], ca)


@functools.lru_cache(maxsize=256)
def _identify(pem: bytes, ca: bytes) -> pki.Identity:
    return pki.identify(pem, ca)


class Authenticator(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses (UNAUTHENTICATED) any call whose peer is not one of ours."""

    def __init__(self, ca: bytes) -> None:
        self.ca = ca

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def guard(behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            @functools.wraps(behaviour)
            def checked(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    who = caller(context, self.ca)
                except StateholdError as exc:
                    log.warning("refused call method=%s peer=%s reason=%s", method, context.peer(), exc)
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
                    raise AssertionError("unreachable: abort raises") from exc  # pragma: no cover
                if not allowed(who.role, method):
                    log.warning("refused call method=%s caller=%s/%s reason=role", method, who.role,
                                who.name)
                    context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{who.role} {who.name!r} may not call {method.rsplit('/', 1)[-1]}: "
                                  "only the controller may")
                    raise AssertionError("unreachable: abort raises")  # pragma: no cover
                log.debug("call method=%s caller=%s/%s", method, who.role, who.name)
                return behaviour(request, context)

            return checked

        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attr, make in kinds:
            behaviour = getattr(handler, attr)
            if behaviour is not None:
                return make(guard(behaviour), request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler  # pragma: no cover - every handler has one behaviour
