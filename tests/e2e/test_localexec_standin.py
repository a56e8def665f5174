"""The kubelet stand-in of ``tests/fixtures/localexec.py`` keeps the facade's exec contract
(``statehold.kube.facade``), so what the StatefulSet e2e proves with it holds for the exec
a kubelet runs: real processes, as the pod's user.

* a command that ran returns its exit code and both streams, whatever the code;
* one still running at the timeout returns ``exit_code=None`` with the output so far, and
  the stand-in kills what it started (its own process group, children included);
* nothing runs when the pod is not running (FailedPrecondition) or when the API server's
  answer is that the caller may not exec there (PermissionDenied).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.errors import FailedPrecondition, PermissionDenied
from statehold.kube.kinds import POD
from statehold.kube.memory import MemoryKube
from tests.e2e.statefulset_pg import until
from tests.fixtures.localexec import Container, LocalExecKube, ProcessExec

pytestmark = [pytest.mark.root]

NS = "apps"


def pod(kube: MemoryKube, name: str, *, running: bool = True) -> None:
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
                 "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    if running:
        kube.patch_status(POD, name, {"phase": "Running", "containerStatuses": [
            {"name": "app", "state": {"running": {}}}]}, NS)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_exit_code_and_output_of_a_real_process_as_the_pods_user(scratch: Path) -> None:
    kube, runner = MemoryKube(), ProcessExec()
    pod(kube, "web-0")
    runner.add(NS, "web-0", Container("nobody", {"PATH": "/usr/bin:/bin", "WHO": "web-0"}))
    got = LocalExecKube(kube, runner).exec(
        "web-0", NS, ["sh", "-c", 'id -un; echo "$WHO" >&2; exit 3'], timeout=60)
    assert (got.exit_code, got.stdout, got.stderr) == (3, "nobody\n", "web-0\n")
    assert [(r.call.pod, r.call.container) for r in runner.ran] == [("web-0", "app")]


def test_a_command_past_its_timeout_is_none_and_killed_with_its_children(scratch: Path) -> None:
    kube, runner = MemoryKube(), ProcessExec()
    pod(kube, "web-0")
    pidfile = scratch / "child.pid"
    scratch.chmod(0o777)
    runner.add(NS, "web-0", Container("nobody", {"PATH": "/usr/bin:/bin"}))
    got = LocalExecKube(kube, runner).exec(
        "web-0", NS, ["sh", "-c", f"sleep 600 & echo $! > {pidfile}; echo started; wait"],
        timeout=2)
    assert got.timed_out and got.stdout == "started\n"
    child = int(pidfile.read_text())
    until(lambda: not alive(child), f"the command's child {child} killed", timeout=30)


def test_nothing_runs_in_a_pod_not_running_or_where_exec_is_refused(scratch: Path) -> None:
    kube, runner = MemoryKube(), ProcessExec()
    pod(kube, "web-0", running=False)
    pod(kube, "web-1")
    marker = scratch / "ran"
    for p in ("web-0", "web-1"):
        runner.add(NS, p, Container("root", {"PATH": "/usr/bin:/bin"}))
    refused = LocalExecKube(kube, runner, authorized=lambda call: call.pod != "web-1")
    with pytest.raises(FailedPrecondition):
        refused.exec("web-0", NS, ["touch", str(marker)])
    with pytest.raises(PermissionDenied):
        refused.exec("web-1", NS, ["touch", str(marker)])
    assert runner.ran == [] and not os.path.exists(marker)
