"""The freeze keeper: a child process that holds filesystems frozen, and always thaws them.

A frozen filesystem stays frozen when the process that froze it dies: the kernel keeps no
owner, and every writer of that filesystem blocks until someone thaws it. So a group
snapshot never freezes in the engine's own process. It takes a keeper (one small process
per snapshot or group snapshot, started ahead of need: below) and asks it, over two pipes,
to freeze each member; the keeper thaws everything it froze, last frozen first, as soon as
one of these happens:

* the parent asks (``thaw``);
* its deadline passes, ``timeout`` seconds after the first FIFREEZE began (the watchdog):
  later requests are answered ``error expired``, and ``thaw`` reports ``expired 1``, so
  the parent knows the freeze ended before it finished and discards what it made;
* its stdin reaches end of file: the parent closed the pipe or died, SIGKILL included
  (the kernel closes a dead process's descriptors; nobody else holds the pipe's write end,
  because Python makes descriptors close-on-exec and ``subprocess`` closes the rest);
* SIGTERM or SIGHUP. SIGINT is ignored: a Ctrl-C to the process group leaves the parent to
  thaw in order.

If the keeper itself dies, the parent sees end of file on its answers and thaws every path
it asked to freeze. If both die at once (the whole container is killed), the filesystems
stay frozen until the pool is opened again: recovery thaws the ``frozen`` mount point of
every unfinished ``snapshot`` intent (docs/design/group-snapshots.md).

Protocol, one line each way, request then answer (times are CLOCK_MONOTONIC seconds, the
same clock in every process of the host)::

    (start)                    -> ready
    timeout <seconds>          -> ok | error failed <text>   (before the first freeze only)
    freeze <path>[\0<path>...] -> frozen <began> <done>   | error <busy|expired|failed> <text>
    thaw                       -> thawed <first> <last> <expired>   (then the keeper exits)

Starting an interpreter costs more than the rest of a subvolume pool's frozen snapshot, so
a process that used a keeper keeps the next one started and idle (:mod:`spare`); ``timeout``
gives a spare started for another caller this caller's window. A keeper leaves with
``os._exit`` once it has thawed and answered, without the interpreter's clean-up: the
parent waits for its exit.

The paths of one ``freeze`` are frozen side by side, one thread each: a FIFREEZE waits for
RCU grace periods (tens of milliseconds here), and those overlap. While they run, the keeper
asks the kernel for expedited grace periods (:mod:`rcu`), which takes a FIFREEZE from
~36 ms to ~1.5 ms on the development VM; :func:`configure` turns that off for a process.

Run as ``python -m statehold.engine.freezekeeper TIMEOUT [KNOB REGISTRY]`` (without the two
paths, no expediting).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from statehold.engine import freeze as freezing
from statehold.engine import rcu
from statehold.engine.spare import Spare
from statehold.errors import FailedPrecondition, InvalidArgument, StateholdError, Temporary, Unavailable

STARTED_WITH = 10.0
"""The watchdog timeout a keeper starts with; a caller that wants another sends ``timeout``
before its first freeze (a spare is started before anyone knows what it will be asked)."""
ANSWER_GRACE = 60.0
"""Seconds beyond the freeze timeout the parent waits for any one answer before it gives
the keeper up (kills it and thaws by itself): a FIFREEZE stuck in the kernel."""


_EXPEDITE: rcu.Expedite | None = rcu.Expedite()


def configure(expedite: rcu.Expedite | None) -> None:
    """Whether (and through which knob and registry) the keepers this process starts from
    now on expedite RCU grace periods while freezing; None: never. Called once by the entry
    point from its settings (``STATEHOLD_FREEZE_EXPEDITE_RCU``), or by tests."""
    global _EXPEDITE
    _EXPEDITE = expedite


# -- the keeper (child) ------------------------------------------------------------------------

class _Stop(Exception):
    """SIGTERM or SIGHUP: thaw and leave."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _one_line(text: object) -> str:
    return str(text).replace("\n", " ")


def _freeze_together(fds: list[int], paths: list[str]) -> list[StateholdError | None]:
    """FIFREEZE every descriptor at once, one thread each: a freeze waits for RCU grace
    periods (tens of ms) that overlap when the freezes run side by side."""
    errors: list[StateholdError | None] = [None] * len(fds)

    def one(i: int) -> None:
        try:
            freezing.freeze_fd(fds[i], paths[i])
        except StateholdError as exc:
            errors[i] = exc

    if len(fds) == 1:
        one(0)
        return errors
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(fds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def serve(timeout: float, rfd: int = 0, wfd: int = 1,
          expedite: rcu.Expedite | None = None) -> int:
    """The keeper's loop: answer requests on ``rfd``/``wfd`` until thawed or orphaned;
    FIFREEZEs run with expedited grace periods when ``expedite`` names the knob."""
    frozen: list[tuple[int, str]] = []
    first = last = 0.0
    deadline: float | None = None
    expired = False
    pending = b""

    def retime(arg: str) -> str:
        nonlocal timeout
        if deadline is not None:
            return "error failed the window has begun: its timeout is set"
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            return f"error failed not a timeout: {_one_line(arg)!r}"
        timeout = value
        return "ok"

    def thaw_all() -> None:
        nonlocal last
        while frozen:
            fd, _ = frozen.pop()
            freezing.thaw_fd(fd)
            os.close(fd)
            last = time.monotonic()

    def answer(line: str) -> None:
        os.write(wfd, (line + "\n").encode())  # shorter than PIPE_BUF: one atomic write

    def freeze(paths: list[str]) -> str:
        nonlocal deadline, first, expired
        if expired:
            return "error expired the freeze window had already ended"
        began = time.monotonic()
        if deadline is None:
            first, deadline = began, began + timeout
        fds: list[int] = []
        for path in paths:
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                return f"error failed cannot open {_one_line(exc)}"
        with rcu.expedited(expedite):
            errors = _freeze_together(fds, paths)
        for fd, path, err in zip(fds, paths, errors, strict=True):
            if err is None:
                frozen.append((fd, path))
            else:
                os.close(fd)
        failed = [e for e in errors if e is not None]
        if failed:
            kind = "busy" if isinstance(failed[0], FailedPrecondition) else "failed"
            return f"error {kind} {_one_line(failed[0])}"
        done = time.monotonic()
        if done > deadline:  # the FIFREEZEs themselves outlasted the window
            thaw_all()
            expired = True
            return "error expired freezing the filesystems outlasted the window"
        return f"frozen {began:.9f} {done:.9f}"

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if expedite is not None:
        rcu.settle(expedite)  # a keeper SIGKILLed while freezing left the knob on
    try:
        answer("ready")
        while True:
            wait = None if deadline is None or not frozen else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([rfd], [], [], wait)
            if not readable:  # the watchdog: the window is over, whatever the parent does
                thaw_all()
                expired = True
                continue
            chunk = os.read(rfd, 4096)
            if not chunk:  # the parent closed the pipe, or died
                return 0
            pending += chunk
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                verb, _, arg = raw.decode(errors="replace").partition(" ")
                if verb == "freeze":
                    answer(freeze(arg.split("\0")))
                elif verb == "timeout":
                    answer(retime(arg))
                elif verb == "thaw":
                    thaw_all()
                    answer(f"thawed {first:.9f} {last:.9f} {int(expired)}")
                    return 0
                else:
                    answer(f"error failed unknown request {verb!r}")
    except (_Stop, OSError):  # a signal, or the parent's end of a pipe is gone
        return 0
    finally:
        thaw_all()


# -- the parent's handle ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    """How long the filesystems were frozen: first FIFREEZE began -> last FITHAW returned."""

    first_freeze: float      # CLOCK_MONOTONIC seconds
    last_thaw: float
    expired: bool            # the watchdog thawed before the parent asked
    all_frozen: float = 0.0  # when the last FIFREEZE returned (0: unknown)

    @property
    def seconds(self) -> float:
        return max(0.0, self.last_thaw - self.first_freeze)

    @property
    def freezing(self) -> float:
        """The part of the window spent in FIFREEZE itself."""
        return max(0.0, self.all_frozen - self.first_freeze) if self.all_frozen else 0.0


def check_timeout(timeout: float, *, most: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not math.isfinite(timeout) or not 0 < timeout <= most:
        raise InvalidArgument(f"freeze timeout must be more than 0 and at most {most} s, "
                              f"got {timeout!r}")
    return float(timeout)


class FreezeKeeper:
    """A running keeper. Use as a context manager: leaving the block thaws everything."""

    def __init__(self, timeout: float, *, wait_ready: bool = True) -> None:
        """Take the idle spare keeper, or start one. ``wait_ready=False`` returns at once
        and waits for its ``ready`` before the first request instead: when there was no
        spare, the 60-140 ms an interpreter takes to start then overlap the caller's own
        work (a single snapshot's early copy, a subvolume pool's flushes)."""
        self.timeout = float(timeout)
        self._asked: list[str] = []
        self._window: Window | None = None
        self._all_frozen = 0.0
        self._pending = b""
        self._key: tuple[str, ...] = ()
        if _EXPEDITE is not None:
            self._key = (str(_EXPEDITE.knob), str(_EXPEDITE.registry))
        self._start(*_SPARE.take(self._key))
        if wait_ready:
            self._wait_ready()

    def _start(self, proc: subprocess.Popen[bytes], spare: bool) -> None:
        self._proc = proc
        self._spare = spare
        assert proc.stdin is not None and proc.stdout is not None
        self._to = proc.stdin.fileno()
        self._from = proc.stdout.fileno()
        self._ready = False

    def _wait_ready(self) -> None:
        if self._ready:
            return
        try:
            try:
                self._expect("ready")
            except StateholdError:
                if not self._spare:
                    raise
                # a spare that died while idle: a fresh keeper, once
                self._give_up()
                self._start(_spawn(self._key), False)
                self._expect("ready")
            if self.timeout != STARTED_WITH:
                verb, rest = self._ask(f"timeout {self.timeout!r}")
                if verb != "ok":
                    raise StateholdError(f"freeze keeper {self.pid} refused timeout "
                                         f"{self.timeout:g}: {rest}")
        except BaseException:
            self._give_up()  # the keeper in hand: asked nothing yet, nothing to thaw
            raise
        self._ready = True

    def _give_up(self) -> None:
        """Kill a keeper that was asked nothing yet (nothing to thaw) and reap it."""
        self._proc.kill()
        self._reap(restock=False)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __enter__(self) -> FreezeKeeper:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------
    def freeze(self, targets: Sequence[str], *, sent: Callable[[], None] = lambda: None) -> None:
        """Freeze the filesystems mounted at ``targets``, all at once; ``sent`` runs once the
        request is on its way (a fault point). FailedPrecondition if one is frozen already,
        Temporary if the window is over, StateholdError if the kernel refuses; what did get
        frozen stays so until :meth:`thaw` or :meth:`close`."""
        for target in targets:
            if not target or "\n" in target or "\0" in target:
                raise InvalidArgument(f"cannot freeze {target!r}: not a usable path")
        targets = [os.path.abspath(t) for t in targets]  # the keeper runs in "/"
        self._wait_ready()
        self._asked += targets  # first: if the keeper dies now, we thaw them ourselves
        verb, rest = self._ask("freeze " + "\0".join(targets), sent)
        if verb == "frozen":
            self._all_frozen = float(rest.split()[1])
            return
        why, _, text = rest.partition(" ")
        if why == "expired":
            raise Temporary(f"freeze window of {self.timeout:g} s ended: {text}")
        if why == "busy":
            raise FailedPrecondition(text)
        raise StateholdError(text)

    def thaw(self) -> Window:
        """Thaw everything (idempotent); says whether the watchdog had thawed first."""
        if self._window is not None:
            return self._window
        self._wait_ready()
        verb, rest = self._ask("thaw")
        if verb != "thawed":
            self._fallback()
            raise StateholdError(f"freeze keeper answered {verb} {rest} to thaw")
        first, last, expired = rest.split()
        self._window = Window(float(first), float(last), expired == "1", self._all_frozen)
        self._reap()
        return self._window

    def close(self) -> None:
        """Thaw (by the keeper, or here if it is gone) and reap the keeper. Never raises."""
        if self._window is None and self._ready and self._proc.poll() is None:
            with contextlib.suppress(StateholdError):
                self.thaw()
        if self._window is None:
            self._fallback()
        self._reap()

    # -- plumbing -------------------------------------------------------------------------
    def _ask(self, line: str, sent: Callable[[], None] = lambda: None) -> tuple[str, str]:
        data = (line + "\n").encode()
        try:
            while data:
                data = data[os.write(self._to, data):]
        except OSError as exc:
            self._fallback()
            raise Unavailable(f"freeze keeper {self.pid} is gone: {exc}") from exc
        try:
            sent()
        except BaseException:
            with contextlib.suppress(StateholdError):
                self._line()  # the answer still comes: keep request and answer in step
            raise
        verb, _, rest = self._line().partition(" ")
        return verb, rest

    def _expect(self, wanted: str) -> None:
        got = self._line()
        if got != wanted:
            raise StateholdError(f"freeze keeper {self.pid} said {got!r}, expected {wanted!r}")

    def _line(self) -> str:
        deadline = time.monotonic() + self.timeout + ANSWER_GRACE
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            readable = select.select([self._from], [], [], max(0.0, left))[0] if left > 0 else []
            if not readable:
                self._proc.kill()
                self._fallback()
                raise Unavailable(f"freeze keeper {self.pid} did not answer in time")
            chunk = os.read(self._from, 4096)
            if not chunk:
                self._fallback()
                raise Unavailable(f"freeze keeper {self.pid} died (exit {self._proc.poll()})")
            self._pending += chunk
        raw, self._pending = self._pending.split(b"\n", 1)
        return raw.decode(errors="replace")

    def _fallback(self) -> None:
        """The keeper cannot thaw (it died or hangs): thaw what we asked it to freeze."""
        while self._asked:
            freezing.thaw(self._asked.pop())

    def _reap(self, *, restock: bool = True) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()  # EOF: a keeper still waiting thaws and exits
        try:
            self._proc.wait(ANSWER_GRACE)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if restock:
            _SPARE.restock(self._key)


def _spawn(key: tuple[str, ...]) -> subprocess.Popen[bytes]:
    # cwd "/": an idle spare must not pin whatever directory its parent was in (a mount
    # point would stay busy); every path it is given is absolute (FreezeKeeper.freeze)
    return subprocess.Popen([sys.executable, "-m", __name__, repr(STARTED_WITH), *key],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                            cwd="/")


_SPARE = Spare(_spawn)


def spare_pid() -> int | None:
    """The pid of the idle keeper this process keeps started, if any."""
    return _SPARE.pid()


def drop_spare() -> None:
    """End the idle keeper, if any: the next keeper starts cold (a benchmark's baseline)."""
    _SPARE.drop()


def main(argv: list[str]) -> int:
    expedite = rcu.Expedite(Path(argv[2]), Path(argv[3])) if len(argv) >= 4 else None
    return serve(float(argv[1]), expedite=expedite)


if __name__ == "__main__":
    os._exit(main(sys.argv))  # thawed and answered: nothing left worth a clean-up
