"""Expedited RCU grace periods while filesystems are being frozen.

FIFREEZE takes a superblock's three freeze levels one after the other; each is a per-CPU
rwsem whose writer waits for an RCU grace period (``rcu_sync_enter`` ->
``synchronize_rcu``). A normal grace period lasts until every CPU has passed a quiescent
state, about 12 ms on the development VM, so a FIFREEZE costs ~36 ms even with nothing to
write, and that is most of a group snapshot's freeze window. An *expedited* grace period
interrupts the CPUs instead of waiting for them and ends in microseconds: with
``/sys/kernel/rcu_expedited`` = 1 the same FIFREEZE takes ~1.5 ms (docs/benchmarks.md,
"Group snapshots").

The knob is one integer for the whole host, and expediting costs every CPU an interrupt
per grace period, so it is turned on only for as long as FIFREEZE runs and put back
afterwards. Several processes of a node may freeze at once (two groups, a single
snapshot), so they share a small registry under ``flock``: who holds the knob (pids) and
what it was before the first of them turned it on. The last holder to leave restores
that value. Rules that keep a mistake harmless:

* a process that finds the knob already on (an administrator's choice, or a holder that
  registers elsewhere, such as another container with its own ``/run``) changes nothing
  and restores nothing;
* a holder that dies (SIGKILL) stays in the registry until the next process that enters or
  leaves finds its pid gone; the knob stays on until then, which costs interrupts, never
  correctness;
* a knob that cannot be written (read-only ``/sys`` in an unprivileged container, an old
  kernel) means a normal freeze, just slower;
* a registry whose lock stays taken for more than ``LOCK_WAIT`` (a holder stopped in the
  middle of its few microseconds under it) means a normal freeze too: this optimisation
  never makes a freeze wait.

Registry (JSON, one object, rewritten in place under an exclusive ``flock``, never removed
so that every process locks the same inode): ``{"holders": [pid, ...], "saved": "0"}``;
``saved`` is present only while a holder changed the knob.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statehold.engine.files import flock_within

log = logging.getLogger(__name__)

KNOB = Path("/sys/kernel/rcu_expedited")
REGISTRY = Path("/run/statehold/rcu-expedited.json")


@dataclass(frozen=True, slots=True)
class Expedite:
    """Where the host's knob and the node's registry of its holders are."""

    knob: Path = KNOB
    registry: Path = REGISTRY


def _alive(pid: object) -> bool:
    """Whether ``pid`` names a live process (anything else in the registry does not)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**22 + 1:
        return False  # pid_max is at most 2**22: a larger number, 0 or -1 is no holder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_WAIT = 0.2
"""Seconds to wait for the registry's lock. Holders keep it for microseconds; one stopped
while holding it (SIGSTOP) must not stall a freeze, which then runs without expediting."""


def _lock(fd: int, path: Path) -> None:
    if not flock_within(fd, LOCK_WAIT, poll=0.001):
        raise OSError(errno.EWOULDBLOCK, f"{path} stayed locked for {LOCK_WAIT} s")


@contextlib.contextmanager
def _registry(path: Path) -> Iterator[dict[str, Any]]:
    """The registry's content, locked; what the block leaves in the dict is written back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _lock(fd, path)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        try:
            state = json.loads(raw) if raw.strip() else {}
        except ValueError:
            state = {}  # a torn write cannot happen under the lock; a foreign file can
        if not isinstance(state, dict):
            state = {}
        holders = state.get("holders")
        state["holders"] = [p for p in holders if _alive(p)] if isinstance(holders, list) else []
        if not (isinstance(state.get("saved"), str) and state["saved"].isdigit()):
            state.pop("saved", None)  # only a value this module saved is ever written back
        yield state
        data = json.dumps(state, sort_keys=True).encode()
        if data != raw:  # every keeper's start reads it: rewrite only what changed
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, data)
    finally:
        os.close(fd)  # releases the flock


def _read(knob: Path) -> str:
    return knob.read_text().strip()


def _write(knob: Path, value: str) -> None:
    knob.write_text(value + "\n")


def _enter(policy: Expedite) -> bool:
    """Register this process as a holder and turn the knob on; False when it cannot be."""
    try:
        with _registry(policy.registry) as state:
            current = _read(policy.knob)
            if current != "1":
                _write(policy.knob, "1")
                if "saved" not in state:  # a dead holder's saved value is the true one
                    state["saved"] = current
            state["holders"].append(os.getpid())
    except OSError as exc:
        log.info("event=rcu_expedite_unavailable knob=%s error=%s", policy.knob, exc)
        return False
    return True


def _release(policy: Expedite, pid: int | None) -> None:
    """Drop ``pid`` from the holders (dead ones are dropped on reading); when none is left,
    put the saved value back."""
    with _registry(policy.registry) as state:
        holders: list[int] = state["holders"]
        if pid in holders:
            holders.remove(pid)
        if not holders and "saved" in state:
            _write(policy.knob, str(state.pop("saved")))


def _leave(policy: Expedite) -> None:
    """Drop this process from the holders; the last one puts the saved value back."""
    try:
        _release(policy, os.getpid())
    except OSError as exc:
        log.warning("event=rcu_expedite_restore_failed knob=%s error=%s", policy.knob, exc)


@contextlib.contextmanager
def expedited(policy: Expedite | None) -> Iterator[bool]:
    """Expedited grace periods for the block (when ``policy`` is given and the knob can be
    written); yields whether they are."""
    if policy is None:
        yield False
        return
    held = _enter(policy)
    try:
        yield held
    finally:
        if held:
            _leave(policy)


def settle(policy: Expedite) -> None:
    """Put the knob back if every holder has died (a SIGKILLed keeper); else nothing."""
    with contextlib.suppress(OSError):
        if policy.registry.exists():
            _release(policy, None)
