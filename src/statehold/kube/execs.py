"""What every :meth:`Kube.exec` checks before it runs anything, and what it may call.

Shared by the implementations so that a missing container or a pod that is not running
gives the same error everywhere, before a command (or a connection to a kubelet) starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from statehold.errors import FailedPrecondition, InvalidArgument, NotFound
from statehold.kube.facade import ExecResult


@dataclass(frozen=True, slots=True)
class ExecCall:
    """One exec request, as :class:`statehold.kube.memory.MemoryKube` hands it to the
    callable a test registered."""

    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]
    timeout: float


ExecHandler = Callable[[ExecCall], ExecResult]


def exec_container(pod: dict[str, Any], container: str | None, command: Sequence[str],
                   timeout: float) -> str:
    """The container an exec runs in (``container``, or the pod's first), after checking
    that it exists and runs: NotFound, FailedPrecondition, InvalidArgument (an empty
    command, a timeout that is not positive)."""
    meta = pod.get("metadata") or {}
    where = f"pod {meta.get('namespace')}/{meta.get('name')}"
    if not command or not all(isinstance(a, str) for a in command):
        raise InvalidArgument(f"exec in {where}: the command must be a non-empty list of strings")
    if not timeout > 0:
        raise InvalidArgument(f"exec in {where}: timeout {timeout} must be positive")
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    chosen = container or (names[0] if names else None)
    if chosen is None or chosen not in names:
        raise NotFound(f"{where} has no container {container!r} (it has {', '.join(map(str, names))})")
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase != "Running":
        raise FailedPrecondition(f"{where} is {phase}, not Running: cannot exec in it")
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == chosen and "running" not in (cs.get("state") or {}):
            state = next(iter(cs.get("state") or {"unknown": None}))
            raise FailedPrecondition(f"container {chosen} of {where} is {state}, not running")
    return str(chosen)
