"""Application hooks around a group snapshot: commands run in the set's pods through the
Kubernetes exec API (:meth:`statehold.kube.facade.Kube.exec`).

The order is the point (issue 13; Velero #4509 asks for exactly this): **every** pre-hook,
in every pod, runs before the first filesystem is frozen, and **every** post-hook runs
after the last one is thawed. :func:`capture` holds that order around the one call that
freezes, snapshots and thaws (``take``):

1. pre-hooks, in spec order, each in its pods in ordinal order. A failure of a hook whose
   ``onError`` is ``Fail`` stops here: nothing is frozen.
2. ``take()`` (the group snapshot), only if no pre-hook failed that way.
3. post-hooks, in spec order, each in its pods in ordinal order: always, even when a
   pre-hook failed or ``take`` raised, because a pre-hook that did run (in some pods) may
   have left the application in a state only its post-hook ends. One failing never stops
   the others.

A hook that fails (non-zero exit, timeout, pod not running, exec refused) is recorded with
its outcome and the tail of its output; ``Continue`` records it and goes on, and the
backup is then only crash-consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from statehold.errors import StateholdError
from statehold.kube.facade import Kube

T = TypeVar("T")
Phase = Literal["pre", "post"]
Outcome = Literal["Succeeded", "Failed", "TimedOut", "Error"]

OUTPUT_LIMIT = 1024
"""Characters of a hook's output kept in status (the last ones)."""
EVENT_OUTPUT_LIMIT = 300
DEFAULT_TIMEOUT = 30


@dataclass(frozen=True, slots=True)
class Hook:
    name: str
    command: tuple[str, ...]
    container: str | None = None
    ordinals: tuple[int, ...] | None = None
    """Pods to run in, by ordinal; None: every pod of the set."""
    timeout: float = DEFAULT_TIMEOUT
    on_error: Literal["Fail", "Continue"] = "Fail"


def parse_hooks(spec: dict[str, Any] | None) -> tuple[list[Hook], list[Hook]]:
    """(pre, post) from a ``hooks`` object of the CRDs (schema-checked already)."""
    spec = spec or {}

    def one(h: dict[str, Any]) -> Hook:
        ordinals = h.get("ordinals")
        return Hook(name=str(h["name"]), command=tuple(str(a) for a in h["command"]),
                    container=h.get("container") or None,
                    ordinals=None if ordinals is None else tuple(sorted({int(o) for o in ordinals})),
                    timeout=float(h.get("timeoutSeconds") or DEFAULT_TIMEOUT),
                    on_error="Continue" if h.get("onError") == "Continue" else "Fail")

    return [one(h) for h in spec.get("pre") or []], [one(h) for h in spec.get("post") or []]


@dataclass(frozen=True, slots=True)
class HookRun:
    phase: Phase
    hook: str
    pod: str
    container: str
    outcome: Outcome
    exit_code: int | None
    output: str
    on_error: Literal["Fail", "Continue"]

    @property
    def failed(self) -> bool:
        return self.outcome != "Succeeded"

    @property
    def fatal(self) -> bool:
        return self.failed and self.on_error == "Fail"

    def status(self) -> dict[str, Any]:
        """The entry of ``status.hooks``."""
        out: dict[str, Any] = {"phase": self.phase, "name": self.hook, "pod": self.pod,
                               "container": self.container, "outcome": self.outcome,
                               "onError": self.on_error, "output": self.output}
        if self.exit_code is not None:
            out["exitCode"] = self.exit_code
        return out

    def describe(self) -> str:
        what = {"Succeeded": "succeeded", "Failed": f"exited {self.exit_code}",
                "TimedOut": "timed out", "Error": "could not run"}[self.outcome]
        text = f"{self.phase}-hook {self.hook} in pod {self.pod}"
        text += f" (container {self.container})" if self.container else ""
        text += f" {what}"
        if self.output.strip():
            text += f": {clip(self.output.strip(), EVENT_OUTPUT_LIMIT)}"
        return text


def clip(text: str, limit: int) -> str:
    """The last ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def pod_name(set_name: str, ordinal: int) -> str:
    return f"{set_name}-{ordinal}"


def run_hook(kube: Kube, namespace: str, set_name: str, hook: Hook, ordinal: int,
             phase: Phase) -> HookRun:
    pod = pod_name(set_name, ordinal)
    container = hook.container or ""
    try:
        got = kube.exec(pod, namespace, hook.command, container=hook.container,
                        timeout=hook.timeout)
    except StateholdError as exc:  # no such pod or container, not running, exec refused
        return HookRun(phase, hook.name, pod, container, "Error", None, clip(str(exc), OUTPUT_LIMIT),
                       hook.on_error)
    sep = "\n" if got.stdout and got.stderr and not got.stdout.endswith("\n") else ""
    output = got.stdout + sep + got.stderr
    outcome: Outcome = ("TimedOut" if got.timed_out else
                        "Succeeded" if got.exit_code == 0 else "Failed")
    return HookRun(phase, hook.name, pod, container, outcome, got.exit_code,
                   clip(output, OUTPUT_LIMIT), hook.on_error)


def run_phase(kube: Kube, namespace: str, set_name: str, ordinals: Sequence[int],
              hooks: Sequence[Hook], phase: Phase, *, stop_on_fatal: bool,
              report: Callable[[HookRun], None]) -> list[HookRun]:
    """Run ``hooks`` in spec order, each in its pods in ordinal order; ``report`` each run
    as it ends. With ``stop_on_fatal``, the first failure of a ``Fail`` hook ends the phase."""
    runs: list[HookRun] = []
    for hook in hooks:
        for ordinal in sorted(hook.ordinals if hook.ordinals is not None else ordinals):
            run = run_hook(kube, namespace, set_name, hook, ordinal, phase)
            runs.append(run)
            report(run)
            if stop_on_fatal and run.fatal:
                return runs
    return runs


@dataclass(frozen=True, slots=True)
class Capture(Generic[T]):
    """What :func:`capture` did: the snapshot (None if not taken), the error that stopped
    it, and every hook run."""

    taken: T | None
    error: StateholdError | None
    pre: tuple[HookRun, ...]
    post: tuple[HookRun, ...]

    @property
    def runs(self) -> tuple[HookRun, ...]:
        return self.pre + self.post

    @property
    def fatal(self) -> HookRun | None:
        """The first hook failure that fails the backup (onError Fail)."""
        return next((r for r in self.runs if r.fatal), None)

    @property
    def consistency(self) -> Literal["Application", "Crash"]:
        """Application: hooks ran and every one succeeded; Crash otherwise."""
        return "Application" if self.runs and not any(r.failed for r in self.runs) else "Crash"


def capture(kube: Kube, namespace: str, set_name: str, ordinals: Sequence[int],
            pre: Sequence[Hook], post: Sequence[Hook], take: Callable[[], T], *,
            report: Callable[[HookRun], None] = lambda run: None) -> Capture[T]:
    """Pre-hooks, then ``take()`` (only if no pre-hook failed fatally), then post-hooks,
    always. A StateholdError of ``take`` is returned, not raised; anything else propagates
    after the post-hooks ran."""
    taken: T | None = None
    error: StateholdError | None = None
    pre_runs: list[HookRun] = []
    try:
        pre_runs = run_phase(kube, namespace, set_name, ordinals, pre, "pre",
                             stop_on_fatal=True, report=report)
        if not any(r.fatal for r in pre_runs):
            try:
                taken = take()
            except StateholdError as exc:
                error = exc
    finally:
        post_runs = run_phase(kube, namespace, set_name, ordinals, post, "post",
                              stop_on_fatal=False, report=report)
    return Capture(taken, error, tuple(pre_runs), tuple(post_runs))
