"""The Kube facade contract, run against every implementation (see tests/fixtures/kube.py).

Every run is always on; the real-server run uses the session control plane
(tests/fixtures/controlplane.py) or the cluster STATEHOLD_TEST_KUBECONFIG names.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from statehold.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from statehold.kube.execs import ExecCall
from statehold.kube.facade import ExecResult, Kube
from statehold.kube.kinds import CONFIG_MAP, EVENT, PVC
from statehold.kube.memory import MemoryKube


def cm(ns: str, name: str, data: dict[str, str] | None = None, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": data or {}}


def pvc(ns: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "statehold-contract",
                     "resources": {"requests": {"storage": "1Gi"}}}}


def test_create_then_get_returns_the_object_with_server_fields(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    made = kube.create(cm(ns, "a", {"k": "v"}))
    got = kube.get(CONFIG_MAP, "a", ns)
    assert got["data"] == {"k": "v"}
    assert got["metadata"]["uid"] == made["metadata"]["uid"]
    assert got["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]
    assert got["metadata"]["creationTimestamp"]


def test_get_missing_is_not_found(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    with pytest.raises(NotFound):
        kube.get(CONFIG_MAP, "nope", ns)


def test_create_taken_name_is_already_exists_and_keeps_the_first(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    kube.create(cm(ns, "a", {"k": "1"}))
    with pytest.raises(AlreadyExists):
        kube.create(cm(ns, "a", {"k": "2"}))
    assert kube.get(CONFIG_MAP, "a", ns)["data"] == {"k": "1"}


def test_generate_name_gives_a_fresh_name(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    obj = cm(ns, "")
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "gen-"
    a, b = kube.create(obj), kube.create(obj)
    assert a["metadata"]["name"].startswith("gen-")
    assert a["metadata"]["name"] != b["metadata"]["name"]


def test_returned_objects_are_copies(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    made = kube.create(cm(ns, "a", {"k": "v"}))
    made["data"]["k"] = "changed"
    kube.get(CONFIG_MAP, "a", ns)["data"]["k"] = "changed"
    assert kube.get(CONFIG_MAP, "a", ns)["data"] == {"k": "v"}


def test_list_filters_by_label_selector(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    kube.create(cm(ns, "a", app="db", tier="x"))
    kube.create(cm(ns, "b", app="db"))
    kube.create(cm(ns, "c", app="web"))

    def names(sel: object) -> list[str]:
        return sorted(o["metadata"]["name"] for o in kube.list(CONFIG_MAP, ns, label_selector=sel))  # type: ignore[arg-type]

    assert names({"app": "db"}) == ["a", "b"]
    assert names("app in (db,web),!tier") == ["b", "c"]
    assert names("app!=db") == [n for n in names(None) if n not in ("a", "b")]
    assert names("tier") == ["a"]


def test_bad_label_selector_is_invalid_argument(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    with pytest.raises(InvalidArgument):
        kube.list(CONFIG_MAP, ns, label_selector="app in db)(")


def test_patch_merges_and_bumps_resource_version(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    made = kube.create(cm(ns, "a", {"k": "v", "gone": "x"}))
    patched = kube.patch(CONFIG_MAP, "a", {"data": {"n": "1", "gone": None}}, ns)
    assert patched["data"] == {"k": "v", "n": "1"}
    assert patched["metadata"]["resourceVersion"] != made["metadata"]["resourceVersion"]


def test_patch_with_stale_resource_version_is_aborted_and_changes_nothing(
        kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    made = kube.create(cm(ns, "a", {"k": "v"}))
    kube.patch(CONFIG_MAP, "a", {"data": {"k": "w"}}, ns)
    stale = {"metadata": {"resourceVersion": made["metadata"]["resourceVersion"]}, "data": {"k": "x"}}
    with pytest.raises(Aborted):
        kube.patch(CONFIG_MAP, "a", stale, ns)
    assert kube.get(CONFIG_MAP, "a", ns)["data"] == {"k": "w"}


def test_replace_with_stale_resource_version_is_aborted(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    first = kube.create(cm(ns, "a", {"k": "v"}))
    second = dict(first, data={"k": "mine"})
    kube.replace(second)
    with pytest.raises(Aborted):
        kube.replace(dict(first, data={"k": "theirs"}))
    assert kube.get(CONFIG_MAP, "a", ns)["data"] == {"k": "mine"}


def test_patch_missing_is_not_found(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    with pytest.raises(NotFound):
        kube.patch(CONFIG_MAP, "nope", {"data": {"k": "v"}}, ns)
    with pytest.raises(NotFound):
        kube.delete(CONFIG_MAP, "nope", ns)


def test_status_is_only_written_through_patch_status(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    kube.create(pvc(ns, "data"))
    kube.patch(PVC, "data", {"metadata": {"labels": {"x": "1"}}, "status": {"phase": "Lost"}}, ns)
    assert kube.get(PVC, "data", ns).get("status", {}).get("phase") != "Lost"
    got = kube.patch_status(PVC, "data", {"phase": "Lost"}, ns)
    assert got["status"]["phase"] == "Lost"
    assert got["metadata"]["labels"] == {"x": "1"}


def test_delete_with_finalizer_waits_for_the_finalizer(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    obj = cm(ns, "a")
    obj["metadata"]["finalizers"] = ["statehold.io/test"]
    kube.create(obj)
    kube.delete(CONFIG_MAP, "a", ns)
    assert kube.get(CONFIG_MAP, "a", ns)["metadata"]["deletionTimestamp"]
    kube.patch(CONFIG_MAP, "a", {"metadata": {"finalizers": None}}, ns)
    with pytest.raises(NotFound):
        kube.get(CONFIG_MAP, "a", ns)


def test_watch_from_a_resource_version_yields_later_writes_in_order(
        kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    start = kube.create(cm(ns, "before", test="watch"))["metadata"]["resourceVersion"]
    kube.create(cm(ns, "a", {"k": "1"}, test="watch"))
    kube.patch(CONFIG_MAP, "a", {"data": {"k": "2"}}, ns)
    kube.delete(CONFIG_MAP, "a", ns)
    seen = []
    # only this test's objects: on a real cluster kube-controller-manager adds its
    # kube-root-ca.crt ConfigMap to every new namespace whenever it gets to it
    for ev in kube.watch(CONFIG_MAP, ns, label_selector={"test": "watch"}, resource_version=start,
                         timeout=2):
        seen.append((ev.type, ev.object["metadata"]["name"], ev.object.get("data", {}).get("k")))
        if len(seen) == 3:
            break
    assert seen == [("ADDED", "a", "1"), ("MODIFIED", "a", "2"), ("DELETED", "a", "2")]


def test_watch_without_resource_version_starts_with_existing_objects(
        kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    kube.create(cm(ns, "a", app="db"))
    kube.create(cm(ns, "b", app="web"))
    seen = []
    for ev in kube.watch(CONFIG_MAP, ns, label_selector={"app": "db"}, timeout=1):
        seen.append((ev.type, ev.object["metadata"]["name"]))
        break
    assert seen == [("ADDED", "a")]


def test_record_event_twice_counts_instead_of_duplicating(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    obj = kube.create(cm(ns, "a"))
    kube.record_event(obj, type="Warning", reason="MissingSecret", message="secret s not found")
    ev = kube.record_event(obj, type="Warning", reason="MissingSecret", message="secret s not found")
    assert ev["count"] == 2
    mine = [e for e in kube.list(EVENT, ns)
            if e["involvedObject"].get("uid") == obj["metadata"]["uid"]]
    assert [(e["reason"], e["type"], e["count"]) for e in mine] == [("MissingSecret", "Warning", 2)]


def test_secret_string_data_is_stored_as_base64_data(kube_impl: tuple[Kube, str]) -> None:
    from statehold.kube.kinds import SECRET

    kube, ns = kube_impl
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": ns},
                 "stringData": {"password": "hunter2"}})
    got = kube.get(SECRET, "s", ns)
    assert got["data"] == {"password": "aHVudGVyMg=="}
    assert "stringData" not in got


def test_replace_status_is_a_compare_and_set_of_the_status_only(
        kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    made = kube.create(pvc(ns, "cas"))
    read = kube.patch_status(PVC, "cas", {"phase": "Pending"}, ns)
    mine = dict(read, status={"phase": "Lost"}, spec={**read["spec"], "volumeName": "ignored"})
    written = kube.replace_status(mine)
    assert written["status"]["phase"] == "Lost"
    assert written["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]
    assert kube.get(PVC, "cas", ns)["spec"] == made["spec"]  # only .status is written
    # a second writer holding the same (now stale) reading is refused and changes nothing
    with pytest.raises(Aborted):
        kube.replace_status(dict(read, status={"phase": "Bound"}))
    assert kube.get(PVC, "cas", ns)["status"]["phase"] == "Lost"
    with pytest.raises(NotFound):
        kube.replace_status(dict(pvc(ns, "nope"), status={"phase": "Lost"},
                                 metadata={"name": "nope", "namespace": ns,
                                           "resourceVersion": read["metadata"]["resourceVersion"]}))


# -- exec ---------------------------------------------------------------------------------

def pod(ns: str, name: str, *containers: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"automountServiceAccountToken": False, "containers": [
                {"name": c, "image": "registry.invalid/statehold-contract:1"}
                for c in containers or ("main",)]}}


def create_pod(kube: Kube, obj: dict) -> dict:
    """Create a pod; on a real server a fresh namespace's ``default`` ServiceAccount may not
    exist yet (the admission refuses the pod): wait for it to be added, then create."""
    from statehold.errors import PermissionDenied
    from statehold.kube.kinds import Kind

    try:
        return kube.create(obj)
    except PermissionDenied:
        ns = obj["metadata"]["namespace"]
        accounts = Kind("v1", "ServiceAccount", "serviceaccounts", namespaced=True,
                        status_subresource=False)
        for ev in kube.watch(accounts, ns, timeout=60):
            if ev.type == "ADDED" and ev.object["metadata"]["name"] == "default":
                break
        return kube.create(obj)


def test_exec_in_a_missing_pod_is_not_found(kube_impl: tuple[Kube, str]) -> None:
    kube, ns = kube_impl
    with pytest.raises(NotFound):
        kube.exec("nope", ns, ["true"])


def test_exec_in_a_pod_that_is_not_running_is_failed_precondition(
        kube_impl: tuple[Kube, str]) -> None:
    from statehold.errors import FailedPrecondition

    kube, ns = kube_impl
    create_pod(kube, pod(ns, "waiting", "main", "side"))  # no node runs it: Pending
    with pytest.raises(FailedPrecondition):
        kube.exec("waiting", ns, ["true"])
    with pytest.raises(NotFound):  # the container is checked first
        kube.exec("waiting", ns, ["true"], container="absent")


@pytest.fixture(params=["memory", "http"])
def exec_impl(request: pytest.FixtureRequest) -> Iterator[tuple[Kube, MemoryKube]]:
    """(the facade under test, the MemoryKube whose on_exec stands in for the kubelet):
    a real API server needs a kubelet to exec, and the test control plane has none."""
    memory = MemoryKube()
    if request.param == "memory":
        yield memory, memory
        return
    import kubernetes

    from statehold.kube.client import ApiKube
    from tests.unit.kube.apiserver import serve

    with serve(memory) as url:
        cfg = kubernetes.client.Configuration()
        cfg.host = url
        yield ApiKube(kubernetes.client.ApiClient(cfg), request_timeout=10), memory


def running_pod(memory: MemoryKube, name: str, *containers: str) -> None:
    from statehold.kube.kinds import POD

    memory.create(pod("contract", name, *containers))
    memory.patch_status(POD, name, {"phase": "Running", "containerStatuses": [
        {"name": c, "state": {"running": {}}} for c in containers or ("main",)]}, "contract")


def test_exec_returns_exit_code_and_output_of_the_chosen_container(
        exec_impl: tuple[Kube, MemoryKube]) -> None:
    kube, memory = exec_impl
    running_pod(memory, "db", "postgres", "sidecar")
    calls: list[ExecCall] = []

    def handler(call: ExecCall) -> ExecResult:
        calls.append(call)
        if call.command[0] == "fail":
            return ExecResult(3, "", "it went wrong\n")
        return ExecResult(0, f"ran {' '.join(call.command[1:])} in {call.container}\n", "")

    memory.on_exec(handler)
    got = kube.exec("db", "contract", ["echo", "CHECKPOINT", "ünï"])
    assert (got.exit_code, got.stdout, got.stderr) == (0, "ran CHECKPOINT ünï in postgres\n", "")
    assert not got.timed_out
    bad = kube.exec("db", "contract", ["fail"], container="sidecar")
    assert (bad.exit_code, bad.stderr) == (3, "it went wrong\n")
    assert [(c.pod, c.container, c.command) for c in calls] == [
        ("db", "postgres", ("echo", "CHECKPOINT", "ünï")), ("db", "sidecar", ("fail",))]


def test_exec_keeps_the_tail_of_a_long_output(exec_impl: tuple[Kube, MemoryKube]) -> None:
    from statehold.kube.facade import EXEC_OUTPUT_LIMIT

    kube, memory = exec_impl
    running_pod(memory, "chatty")
    memory.on_exec(lambda call: ExecResult(0, "x" * (3 * EXEC_OUTPUT_LIMIT) + "THE END", ""))
    got = kube.exec("chatty", "contract", ["talk"])
    assert got.stdout.endswith("x" * 100 + "THE END")
    assert got.stdout.startswith("[") and len(got.stdout) < EXEC_OUTPUT_LIMIT + 100


def test_exec_still_running_at_the_timeout_returns_no_exit_code(
        exec_impl: tuple[Kube, MemoryKube]) -> None:
    import threading

    kube, memory = exec_impl
    running_pod(memory, "slow")
    release = threading.Event()

    def handler(call: ExecCall) -> ExecResult:
        # the memory facade hands the timeout to the container's stand-in, which keeps it;
        # over HTTP the client gives up on its own while this still blocks
        if not release.wait(call.timeout):
            return ExecResult(None, "partial\n", "")
        return ExecResult(0, "", "")

    memory.on_exec(handler)
    try:
        got = kube.exec("slow", "contract", ["sleep", "forever"], timeout=0.5)
    finally:
        release.set()
    assert got.timed_out and got.exit_code is None


def test_may_answers_an_access_review_for_the_callers_own_identity(
        kube_impl: tuple[Kube, str]) -> None:
    # every implementation runs as an identity that may manage ConfigMaps (the suite does)
    kube, ns = kube_impl
    assert kube.may("create", CONFIG_MAP, ns) is True
    assert kube.may("list", PVC, ns) is True
