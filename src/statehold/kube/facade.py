"""The Kube facade: the one interface through which Statehold talks to a Kubernetes API.

Contract (held by both implementations and checked by one shared test suite,
``tests/unit/kube/test_facade_contract.py``):

* Objects are plain ``dict`` (the API's JSON); every call returns a deep copy, so callers
  may mutate what they get.
* ``get`` / ``patch`` / ``patch_status`` / ``replace`` / ``delete`` of a missing object
  raise :class:`statehold.errors.NotFound`.
* ``create`` of a taken name raises :class:`statehold.errors.AlreadyExists`.
* Every write that changes an object gives it a new ``metadata.resourceVersion``. A write
  that carries a stale ``metadata.resourceVersion`` (``replace`` always carries one; a
  ``patch`` may) raises :class:`statehold.errors.Aborted` (HTTP 409 Conflict): re-read and
  retry. A patch that changes nothing changes no resourceVersion and emits no event.
* For kinds with a status subresource, ``patch``/``replace`` ignore ``.status`` and
  ``patch_status``/``replace_status`` change only ``.status``.
* ``replace_status`` is the compare-and-set of a status (a ``PUT`` of the status
  subresource): it always carries the ``metadata.resourceVersion`` the caller read, so a
  write in between makes it raise Aborted and nothing changes. Decisions that must never
  be taken twice from two readings (a replicated volume's epoch and primary) go through it.
* ``delete`` of an object with finalizers only sets ``metadata.deletionTimestamp``; the
  object goes away when a patch empties ``metadata.finalizers``.
* ``watch`` yields :class:`WatchEvent` (``ADDED``/``MODIFIED``/``DELETED``) in the order the
  writes happened. Without ``resource_version`` it first yields ``ADDED`` for every
  existing object; with one, only events after it. It returns after ``timeout`` seconds
  without events. A resourceVersion the server no longer remembers (HTTP 410 Gone) raises
  Aborted: list again and watch from the list's version.
* A rejected object (schema, validation) raises :class:`statehold.errors.InvalidArgument`;
  forbidden raises :class:`PermissionDenied`; an unreachable server :class:`Unavailable`.
* ``exec`` runs a command (an argument list, no shell) in a container of a running pod,
  as ``kubectl exec`` does, and waits for it at most ``timeout`` seconds. A missing pod or
  container raises NotFound; a pod that is not ``Running`` (or a container that is not
  running) FailedPrecondition, before anything runs. A command that ran returns an
  :class:`ExecResult` whatever its exit code; one still running at the timeout returns
  ``exit_code=None`` with the output so far (the API cannot kill it: it may go on in the
  container). Each stream keeps its last :data:`EXEC_OUTPUT_LIMIT` characters.
* ``may`` asks the API server whether the facade's own identity may do a verb on a kind
  (a SelfSubjectAccessReview): True or False, never PermissionDenied for a refusal (any
  authenticated identity may ask about itself); an unreachable server is Unavailable. It
  is advice for a user interface (show a button or not): the write itself is still
  authorized by the API server.

Implementations: :class:`statehold.kube.memory.MemoryKube` (in memory, for tests and for
other areas' tests) and :class:`statehold.kube.client.ApiKube` (the official client, from
a kubeconfig or in-cluster). The contract suite runs against MemoryKube, against ApiKube
talking HTTP to a MemoryKube (``tests/unit/kube/apiserver.py``), and against a real API
server when ``STATEHOLD_TEST_KUBECONFIG`` is set. This module imports no Kubernetes library, so any adapter
may type against it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from statehold.kube.kinds import Kind

Obj = dict[str, Any]
"""A Kubernetes object as JSON."""

ObjList = list[Obj]

Selector = str | Mapping[str, str] | None
"""A label selector: the API's string form (``"a=b,c in (x,y)"``) or an equality mapping."""

EventType = Literal["ADDED", "MODIFIED", "DELETED"]

EXEC_OUTPUT_LIMIT = 65536
"""Characters of each output stream an exec keeps (the last ones: errors come last)."""


def tail(text: str, limit: int = EXEC_OUTPUT_LIMIT) -> str:
    """The last ``limit`` characters of text, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters cut]" + text[-limit:]


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What a command run by :meth:`Kube.exec` left: its exit code (None: still running at
    the timeout) and the (tails of) its output streams."""

    exit_code: int | None
    stdout: str = ""
    stderr: str = ""

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: Obj


class Kube(Protocol):
    """Typed access to the Kubernetes API for the kinds in :mod:`statehold.kube.kinds`."""

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        """The object, or NotFound."""
        ...

    def list(self, kind: Kind, namespace: str | None = None, *,
             label_selector: Selector = None) -> ObjList:
        """Objects of kind (all namespaces when namespace is None), sorted by namespace/name."""
        ...

    def watch(self, kind: Kind, namespace: str | None = None, *, label_selector: Selector = None,
              resource_version: str | None = None, timeout: float = 60.0) -> Iterator[WatchEvent]:
        """Changes in write order; see the module contract."""
        ...

    def create(self, obj: Obj) -> Obj:
        """Create obj (its kind from apiVersion/kind); AlreadyExists if the name is taken.
        ``metadata.generateName`` without a name gets a fresh name."""
        ...

    def replace(self, obj: Obj) -> Obj:
        """Write the whole object (not status); Aborted when its resourceVersion is stale."""
        ...

    def patch(self, kind: Kind, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        """JSON merge patch (RFC 7386) of everything but status."""
        ...

    def patch_status(self, kind: Kind, name: str, status: Obj,
                     namespace: str | None = None) -> Obj:
        """JSON merge patch of ``.status`` only (``status`` is the patch of the status)."""
        ...

    def replace_status(self, obj: Obj) -> Obj:
        """Write obj's whole ``.status`` (nothing else) if its ``metadata.resourceVersion``
        is still current; Aborted otherwise (compare-and-set). InvalidArgument without one."""
        ...

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        """Delete (or mark for deletion when finalizers remain); NotFound if absent."""
        ...

    def record_event(self, involved: Obj, *, type: Literal["Normal", "Warning"], reason: str,
                     message: str, component: str = "statehold") -> Obj:
        """Record a core/v1 Event about involved (in its namespace, else ``default``)."""
        ...

    def exec(self, pod: str, namespace: str, command: Sequence[str], *,
             container: str | None = None, timeout: float = 30.0) -> ExecResult:
        """Run command in the pod's container (default: its first); see the module
        contract. NotFound, FailedPrecondition, PermissionDenied, Unavailable."""
        ...

    def may(self, verb: str, kind: Kind, namespace: str | None = None) -> bool:
        """Whether this identity may ``verb`` objects of kind (in namespace): a
        SelfSubjectAccessReview. See the module contract."""
        ...
