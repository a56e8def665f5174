"""StatefulSetBackup and StatefulSetRestore on the in-memory API (with our CRD admission):
hook order around the group snapshot, assignment to the node holding every claim, refusals
reported as a condition and an Event, claim naming, and schedules that target sets."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.backups import NODE_LABEL
from statehold.controller.conditions import find
from statehold.controller.problems import Problem
from statehold.controller.schedules import reconcile_schedule
from statehold.controller.statefulset_backups import assign_set_backup, group_name, run_set_backup
from statehold.controller.statefulset_hooks import Hook, capture, parse_hooks
from statehold.controller.statefulset_restores import (
    assign_set_restore,
    member_uid,
    wanted_ordinals,
)
from statehold.controller.statefulsets import claim_name, members, ordinals, templates
from statehold.errors import InvalidArgument, Temporary
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    STATEFUL_SET_BACKUP,
    STATEFUL_SET_RESTORE,
    VOLUME_BACKUP,
)
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class
from tests.unit.controller.statefulset_cluster import (
    FakeNode,
    Recorder,
    claims,
    hook,
    running_pods,
    statefulset,
)

API = "statehold.io/v1alpha1"


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    cond = find((obj.get("status") or {}).get("conditions"), "Ready")
    assert cond is not None
    return cond


def warnings(kube: MemoryKube, obj: dict[str, Any]) -> list[str]:
    return [e["reason"] for e in kube.events_for(obj) if e["type"] == "Warning"]


def set_backup(kube: MemoryKube, name: str = "b1", **spec: Any) -> dict[str, Any]:
    return kube.create({"apiVersion": API, "kind": "StatefulSetBackup",
                        "metadata": {"name": name, "namespace": NS},
                        "spec": {k: v for k, v in ({"target": "t", "statefulSetName": "db"}
                                                  | spec).items() if v is not None}})


@pytest.fixture
def cluster(memory_kube: MemoryKube) -> MemoryKube:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    storage_class(memory_kube)
    statefulset(memory_kube)
    claims(memory_kube)
    return memory_kube


# -- naming --------------------------------------------------------------------------------

def test_claims_are_named_as_the_statefulset_controller_names_them(memory_kube: MemoryKube) -> None:
    sts = statefulset(memory_kube, "web", replicas=2, templates=("data", "wal"), start=5)
    assert ordinals(sts) == [5, 6]
    got = [(m.ordinal, m.template, m.claim) for m in members("web", ordinals(sts), templates(sts))]
    assert got == [(5, "data", "data-web-5"), (5, "wal", "wal-web-5"),
                   (6, "data", "data-web-6"), (6, "wal", "wal-web-6")]
    assert claim_name("data", "db", 0) == "data-db-0"


def test_replicas_default_to_one_as_the_api_server_defaults_them() -> None:
    assert ordinals({"spec": {}}) == [0]
    assert ordinals({"spec": {"replicas": 0}}) == []


# -- hook order (the fake group snapshot logs freeze and thaw) ---------------------------------

def hooks_around(kube: MemoryKube, rec: Recorder, pre: list[Hook], post: list[Hook],
                 take: Any) -> Any:
    kube.on_exec(rec.exec)
    return capture(kube, NS, "db", [0, 1, 2], pre, post, take)


def test_every_pre_hook_runs_before_the_first_freeze_and_every_post_after_the_last_thaw(
        memory_kube: MemoryKube) -> None:
    running_pods(memory_kube)
    rec = Recorder()
    pre, post = parse_hooks({"pre": [hook("flush", "sync"), hook("checkpoint", "psql", "CHECKPOINT",
                                                                 ordinals=[0])],
                             "post": [hook("resume", "echo", "resume")]})

    def take() -> str:
        rec.log += ["freeze", "thaw"]
        return "snap"

    cap = hooks_around(memory_kube, rec, pre, post, take)
    assert rec.log == ["exec db-0 sync", "exec db-1 sync", "exec db-2 sync",
                       "exec db-0 psql CHECKPOINT",
                       "freeze", "thaw",
                       "exec db-0 echo resume", "exec db-1 echo resume", "exec db-2 echo resume"]
    assert cap.taken == "snap" and cap.error is None and cap.consistency == "Application"
    assert [r.outcome for r in cap.runs] == ["Succeeded"] * 7


def test_a_failing_pre_hook_stops_before_any_freeze_and_post_hooks_still_run(
        memory_kube: MemoryKube) -> None:
    running_pods(memory_kube)
    rec = Recorder()
    pre, post = parse_hooks({"pre": [hook("lock", "fail", "lock", ordinals=[1]),
                                     hook("never", "echo", "never")],
                             "post": [hook("unlock", "echo", "unlock", ordinals=[0, 1])]})
    cap = hooks_around(memory_kube, rec, pre, post, lambda: rec.log.append("freeze"))
    assert rec.log == ["exec db-1 fail lock", "exec db-0 echo unlock", "exec db-1 echo unlock"]
    assert cap.taken is None and cap.fatal is not None and cap.fatal.hook == "lock"
    assert cap.fatal.exit_code == 1 and "lock failed" in cap.fatal.output


def test_a_continue_hook_failing_is_recorded_and_the_snapshot_is_crash_consistent(
        memory_kube: MemoryKube) -> None:
    running_pods(memory_kube)
    rec = Recorder()
    pre, post = parse_hooks({"pre": [hook("maybe", "fail", "maybe", onError="Continue",
                                          ordinals=[2])]})
    cap = hooks_around(memory_kube, rec, pre, post, lambda: rec.log.append("freeze") or "snap")
    assert rec.log == ["exec db-2 fail maybe", "freeze"]
    assert cap.fatal is None and cap.taken == "snap" and cap.consistency == "Crash"


def test_post_hooks_run_when_the_snapshot_fails(memory_kube: MemoryKube) -> None:
    running_pods(memory_kube)
    rec = Recorder()
    pre, post = parse_hooks({"pre": [hook("a", "echo", "a")], "post": [hook("b", "echo", "b")]})

    def take() -> None:
        rec.log += ["freeze", "thaw"]
        raise Temporary("the watchdog thawed first")

    cap = hooks_around(memory_kube, rec, pre, post, take)
    assert rec.log[3:5] == ["freeze", "thaw"] and rec.log[5:] == [
        "exec db-0 echo b", "exec db-1 echo b", "exec db-2 echo b"]
    assert isinstance(cap.error, Temporary) and cap.taken is None


def test_post_hooks_run_even_when_the_snapshot_raises_a_bug(memory_kube: MemoryKube) -> None:
    running_pods(memory_kube, ordinals=range(1))
    rec = Recorder()
    _, post = parse_hooks({"post": [hook("b", "echo", "b")]})
    memory_kube.on_exec(rec.exec)

    def take() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        capture(memory_kube, NS, "db", [0], [], post, take)
    assert rec.log == ["exec db-0 echo b"]


def test_a_hook_in_a_pod_that_is_not_running_is_an_error_outcome(memory_kube: MemoryKube) -> None:
    memory_kube.on_exec(Recorder().exec)
    pre, _ = parse_hooks({"pre": [hook("a", "echo", "a", onError="Continue", timeoutSeconds=5)]})
    cap = capture(memory_kube, NS, "db", [0], pre, [], lambda: "snap")
    (run,) = cap.runs
    assert run.outcome == "Error" and run.exit_code is None and "not found" in run.output
    assert cap.taken == "snap" and cap.consistency == "Crash"


# -- StatefulSetBackup, cluster side --------------------------------------------------------

def test_backup_is_pinned_to_the_node_holding_every_claim(cluster: MemoryKube, fake_clock: Any) -> None:
    b = set_backup(cluster)
    assert assign_set_backup(cluster, b, fake_clock).outcome == "done"
    got = cluster.get(STATEFUL_SET_BACKUP, "b1", NS)
    assert got["metadata"]["labels"][NODE_LABEL] == "n1"
    assert got["metadata"]["labels"]["statehold.io/statefulset"] == "db"
    st = got["status"]
    assert (st["phase"], st["statefulSet"], st["replicas"]) == ("Pending", "db", 3)
    assert [(m["ordinal"], m["claim"], m["volumeHandle"]) for m in st["members"]] == [
        (0, "data-db-0", "fast/pvc-data-0"), (1, "data-db-1", "fast/pvc-data-1"),
        (2, "data-db-2", "fast/pvc-data-2")]
    assert assign_set_backup(cluster, got, fake_clock).outcome == "skipped"


def test_a_selector_must_pick_exactly_one_set(cluster: MemoryKube, fake_clock: Any) -> None:
    statefulset(cluster, "db2", labels={"team": "x"})
    cluster.patch(cluster_kind("StatefulSet"), "db", {"metadata": {"labels": {"team": "x"}}}, NS)
    b = set_backup(cluster, statefulSetName=None, selector={"matchLabels": {"team": "x"}})
    assert assign_set_backup(cluster, b, fake_clock).outcome == "failed"
    got = cluster.get(STATEFUL_SET_BACKUP, "b1", NS)
    assert ready(got)["reason"] == "AmbiguousSelector" and "db, db2" in ready(got)["message"]
    assert warnings(cluster, got) == ["AmbiguousSelector"]


def cluster_kind(kind: str) -> Any:
    from statehold.kube.kinds import STATEFUL_SET

    assert kind == "StatefulSet"
    return STATEFUL_SET


def test_members_on_several_nodes_get_a_clear_condition_and_nothing_runs(
        memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    statefulset(memory_kube)
    claims(memory_kube, nodes={0: "n1", 1: "n2", 2: "n1"})
    b = set_backup(memory_kube)
    assert assign_set_backup(memory_kube, b, fake_clock).outcome == "failed"
    got = memory_kube.get(STATEFUL_SET_BACKUP, "b1", NS)
    cond = ready(got)
    assert cond["reason"] == "MembersOnSeveralNodes" and "data-db-1 on n2" in cond["message"]
    assert got["status"]["phase"] == "Failed" and NODE_LABEL not in (got["metadata"].get("labels") or {})
    assert warnings(memory_kube, got) == ["MembersOnSeveralNodes"]


def test_a_missing_claim_is_retried(memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    statefulset(memory_kube)
    claims(memory_kube, ordinals=range(2))
    assert assign_set_backup(memory_kube, set_backup(memory_kube), fake_clock).outcome == "retry"
    got = memory_kube.get(STATEFUL_SET_BACKUP, "b1", NS)
    assert ready(got)["reason"] == "ClaimNotFound" and "data-db-2" in ready(got)["message"]


def test_a_hook_naming_an_ordinal_the_set_lacks_is_refused(cluster: MemoryKube, fake_clock: Any) -> None:
    b = set_backup(cluster, hooks={"pre": [hook("x", "true", ordinals=[7])]})
    assert assign_set_backup(cluster, b, fake_clock).outcome == "failed"
    assert ready(cluster.get(STATEFUL_SET_BACKUP, "b1", NS))["reason"] == "InvalidHook"


def test_the_schema_wants_a_set_name_or_a_selector_not_both(memory_kube: MemoryKube) -> None:
    with pytest.raises(InvalidArgument, match="exactly one of statefulSetName or selector"):
        set_backup(memory_kube, selector={"matchLabels": {"a": "b"}})
    with pytest.raises(InvalidArgument, match="onError"):
        set_backup(memory_kube, hooks={"pre": [hook("x", "true", onError="Ignore")]})


# -- StatefulSetBackup, node side (fake node: the capture step) -------------------------------

def assigned(cluster: MemoryKube, fake_clock: Any, **spec: Any) -> dict[str, Any]:
    assert assign_set_backup(cluster, set_backup(cluster, **spec), fake_clock).outcome == "done"
    return cluster.get(STATEFUL_SET_BACKUP, "b1", NS)


def test_node_runs_every_pre_hook_then_the_group_snapshot_then_every_post_hook(
        cluster: MemoryKube, fake_clock: Any) -> None:
    running_pods(cluster)
    rec = Recorder()
    cluster.on_exec(rec.exec)
    b = assigned(cluster, fake_clock, hooks={"pre": [hook("checkpoint", "psql", "CHECKPOINT")],
                                             "post": [hook("done", "echo", "done")]})
    node = FakeNode(rec, fail=Temporary("the watchdog thawed first", retry_after=1))
    assert run_set_backup(cluster, b, node, "n2", fake_clock).outcome == "skipped"  # not its node
    result = run_set_backup(cluster, b, node, "n1", fake_clock)
    assert result.outcome == "retry"
    assert rec.log == ["exec db-0 psql CHECKPOINT", "exec db-1 psql CHECKPOINT",
                       "exec db-2 psql CHECKPOINT", "freeze", "thaw",
                       "exec db-0 echo done", "exec db-1 echo done", "exec db-2 echo done"]
    got = cluster.get(STATEFUL_SET_BACKUP, "b1", NS)
    assert got["status"]["phase"] == "Running"
    assert ready(got)["reason"] == "GroupSnapshotRetrying"
    assert [(h["phase"], h["pod"], h["outcome"]) for h in got["status"]["hooks"]] == [
        ("pre", "db-0", "Succeeded"), ("pre", "db-1", "Succeeded"), ("pre", "db-2", "Succeeded"),
        ("post", "db-0", "Succeeded"), ("post", "db-1", "Succeeded"), ("post", "db-2", "Succeeded")]
    assert got["status"]["hooks"][0]["output"] == "CHECKPOINT done\n"
    reasons = [e["reason"] for e in cluster.events_for(got)]
    assert reasons.count("HookSucceeded") == 2 and "GroupSnapshotRetrying" in reasons  # a hook each
    assert any("pre-hook checkpoint succeeded in pod(s) db-0, db-1, db-2" in e["message"]
               for e in cluster.events_for(got))


def test_a_failing_pre_hook_fails_the_backup_without_a_snapshot(cluster: MemoryKube,
                                                                fake_clock: Any) -> None:
    running_pods(cluster)
    rec = Recorder()
    cluster.on_exec(rec.exec)
    b = assigned(cluster, fake_clock, hooks={"pre": [hook("lock", "fail", "lock")],
                                             "post": [hook("unlock", "echo", "unlock")]})
    node = FakeNode(rec)
    assert run_set_backup(cluster, b, node, "n1", fake_clock).outcome == "failed"
    assert "freeze" not in rec.log and rec.log[-3:] == [
        "exec db-0 echo unlock", "exec db-1 echo unlock", "exec db-2 echo unlock"]
    got = cluster.get(STATEFUL_SET_BACKUP, "b1", NS)
    assert got["status"]["phase"] == "Failed" and ready(got)["reason"] == "HookFailed"
    assert "exited 1" in ready(got)["message"] and "lock failed" in ready(got)["message"]
    assert "HookFailed" in warnings(cluster, got)
    assert node.groups == {}


def test_a_failing_post_hook_fails_the_backup_and_drops_its_snapshot(cluster: MemoryKube,
                                                                     fake_clock: Any) -> None:
    running_pods(cluster)
    rec = Recorder()
    cluster.on_exec(rec.exec)
    b = assigned(cluster, fake_clock, hooks={"post": [hook("resume", "fail", "resume",
                                                           ordinals=[0])]})
    node = FakeNode(rec)
    assert run_set_backup(cluster, b, node, "n1", fake_clock).outcome == "failed"
    assert rec.log == ["freeze", "thaw", "exec db-0 fail resume"]
    assert node.deleted == [group_name(b["metadata"]["uid"])]


# -- StatefulSetRestore, cluster side -------------------------------------------------------

def completed_set_backup(kube: MemoryKube, fake_clock: Any) -> None:
    b = set_backup(kube)
    assert assign_set_backup(kube, b, fake_clock).outcome == "done"
    got = kube.get(STATEFUL_SET_BACKUP, "b1", NS)
    kube.patch_status(STATEFUL_SET_BACKUP, "b1", {
        "phase": "Completed", "groupBackupId": "20260105T100000Z-0a0b0c0d",
        "members": [dict(m, backupId=f"bk{m['ordinal']}") for m in got["status"]["members"]]}, NS)


def set_restore(kube: MemoryKube, **spec: Any) -> dict[str, Any]:
    return kube.create({"apiVersion": API, "kind": "StatefulSetRestore",
                        "metadata": {"name": "r1", "namespace": NS},
                        "spec": {k: v for k, v in ({"backup": "b1"} | spec).items()
                                 if v is not None}})


def test_restore_refuses_when_claims_with_those_names_exist(cluster: MemoryKube,
                                                            fake_clock: Any) -> None:
    completed_set_backup(cluster, fake_clock)  # the set's own claims still exist
    r = set_restore(cluster)
    assert assign_set_restore(cluster, r, fake_clock).outcome == "failed"
    got = cluster.get(STATEFUL_SET_RESTORE, "r1", NS)
    cond = ready(got)
    assert cond["reason"] == "ClaimsExist" and got["status"]["phase"] == "Failed"
    assert "data-db-0, data-db-1, data-db-2" in cond["message"]
    assert warnings(cluster, got) == ["ClaimsExist"]
    assert NODE_LABEL not in (got["metadata"].get("labels") or {})


def test_restore_under_another_set_name_or_a_free_subset_is_pinned(cluster: MemoryKube,
                                                                   fake_clock: Any) -> None:
    completed_set_backup(cluster, fake_clock)
    r = set_restore(cluster, statefulSetName="db-copy", ordinals=[0, 2])
    assert assign_set_restore(cluster, r, fake_clock).outcome == "done"
    got = cluster.get(STATEFUL_SET_RESTORE, "r1", NS)
    assert got["metadata"]["labels"][NODE_LABEL] == "n1"
    assert (got["status"]["groupBackupId"], got["status"]["target"]) == (
        "20260105T100000Z-0a0b0c0d", "t")


def test_restore_only_checks_the_claims_of_the_chosen_ordinals(cluster: MemoryKube,
                                                               fake_clock: Any) -> None:
    completed_set_backup(cluster, fake_clock)
    bound_pvc(cluster, "data-copy-1")  # taken, but ordinal 1 is not restored
    r = set_restore(cluster, statefulSetName="copy", ordinals=[0, 2])
    assert assign_set_restore(cluster, r, fake_clock).outcome == "done"


def test_restore_of_an_unfinished_backup_waits(cluster: MemoryKube, fake_clock: Any) -> None:
    set_backup(cluster)
    r = set_restore(cluster, statefulSetName="copy")
    assert assign_set_restore(cluster, r, fake_clock).outcome == "retry"
    assert ready(cluster.get(STATEFUL_SET_RESTORE, "r1", NS))["reason"] == "BackupNotReady"


def test_restore_by_group_id_needs_a_target_and_a_node(cluster: MemoryKube, fake_clock: Any) -> None:
    with pytest.raises(InvalidArgument, match="groupBackupId needs target"):
        set_restore(cluster, backup=None, groupBackupId="20260105T100000Z-0a0b0c0d")
    r = set_restore(cluster, backup=None, groupBackupId="20260105T100000Z-0a0b0c0d", target="t")
    assert assign_set_restore(cluster, r, fake_clock).outcome == "failed"
    assert ready(cluster.get(STATEFUL_SET_RESTORE, "r1", NS))["reason"] == "NoNode"


def test_ordinals_outside_the_backup_are_refused() -> None:
    assert wanted_ordinals({}, [2, 0, 1]) == [0, 1, 2]
    assert wanted_ordinals({"ordinals": [2, 0, 2]}, [0, 1, 2]) == [0, 2]
    with pytest.raises(Problem, match=r"\[5\]"):
        wanted_ordinals({"ordinals": [0, 5]}, [0, 1, 2])


def test_member_uids_are_stable_and_distinct() -> None:
    uid = "6f1c1a3e-0d7b-4b59-9d0a-1c8a4f3f9e21"
    assert member_uid(uid, "data", 0) == member_uid(uid, "data", 0)
    assert len({member_uid(uid, t, o) for t in ("data", "wal") for o in range(3)}) == 6


# -- schedules targeting sets ---------------------------------------------------------------

def test_a_schedule_backs_up_each_selected_set_as_one_group_and_prunes(cluster: MemoryKube,
                                                                      fake_clock: Any) -> None:
    cluster.patch(cluster_kind("StatefulSet"), "db", {"metadata": {"labels": {"backup": "yes"}}}, NS)
    hooks = {"pre": [hook("checkpoint", "psql", "-c", "CHECKPOINT")]}
    cluster.create({"apiVersion": API, "kind": "BackupSchedule",
                    "metadata": {"name": "nightly", "namespace": NS},
                    "spec": {"schedule": "0 3 * * *", "target": "t", "retention": {"keepLast": 1},
                             "statefulSet": {"selector": {"matchLabels": {"backup": "yes"}},
                                             "hooks": hooks, "freezeTimeoutSeconds": 5}}})

    def run() -> list[str]:
        sch = cluster.get(BACKUP_SCHEDULE, "nightly", NS)
        assert reconcile_schedule(cluster, sch, fake_clock).outcome == "done"
        return sorted(o["metadata"]["name"] for o in cluster.list(STATEFUL_SET_BACKUP, NS))

    fake_clock.advance(hours=17)
    assert run() == ["nightly-db-202601060300"]
    made = cluster.get(STATEFUL_SET_BACKUP, "nightly-db-202601060300", NS)
    assert made["spec"]["statefulSetName"] == "db" and made["spec"]["freezeTimeoutSeconds"] == 5
    assert made["spec"]["hooks"]["pre"][0]["command"] == ["psql", "-c", "CHECKPOINT"]
    assert made["metadata"]["annotations"]["statehold.io/keep-last"] == "1"  # older agents
    assert made["metadata"]["annotations"]["statehold.io/retention"] == '{"keepLast":1}'
    assert cluster.list(VOLUME_BACKUP, NS) == []
    cluster.patch_status(STATEFUL_SET_BACKUP, "nightly-db-202601060300", {
        "phase": "Completed", "completionTime": "2026-01-06T03:10:00Z"}, NS)
    fake_clock.advance(days=1)
    run()
    cluster.patch_status(STATEFUL_SET_BACKUP, "nightly-db-202601070300", {
        "phase": "Failed", "completionTime": "2026-01-07T03:10:00Z"}, NS)
    fake_clock.advance(days=1)
    # completed ones are the agent's to prune with their groups (set_retention); the
    # schedule deletes only failed ones older than a completed one
    assert run() == ["nightly-db-202601060300", "nightly-db-202601070300",
                     "nightly-db-202601080300"]
    cluster.patch_status(STATEFUL_SET_BACKUP, "nightly-db-202601080300", {
        "phase": "Completed", "completionTime": "2026-01-08T03:10:00Z"}, NS)
    fake_clock.advance(days=1)
    assert run() == ["nightly-db-202601060300", "nightly-db-202601080300",
                     "nightly-db-202601090300"]


def test_a_schedule_names_pvcs_or_sets_never_both(memory_kube: MemoryKube) -> None:
    with pytest.raises(InvalidArgument, match="exactly one of selector"):
        memory_kube.create({"apiVersion": API, "kind": "BackupSchedule",
                            "metadata": {"name": "s", "namespace": NS},
                            "spec": {"schedule": "0 3 * * *", "target": "t",
                                     "selector": {"matchLabels": {"a": "b"}},
                                     "statefulSet": {"name": "db"}}})
    with pytest.raises(InvalidArgument):
        memory_kube.create({"apiVersion": API, "kind": "BackupSchedule",
                            "metadata": {"name": "s", "namespace": NS},
                            "spec": {"schedule": "0 3 * * *", "target": "t"}})


def test_a_schedule_naming_a_missing_set_selects_nothing(memory_kube: MemoryKube,
                                                         fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    sch = memory_kube.create({"apiVersion": API, "kind": "BackupSchedule",
                              "metadata": {"name": "s", "namespace": NS},
                              "spec": {"schedule": "0 3 * * *", "target": "t",
                                       "statefulSet": {"name": "gone"}}})
    fake_clock.advance(days=1)
    assert reconcile_schedule(memory_kube, sch, fake_clock).outcome == "done"
    assert memory_kube.list(STATEFUL_SET_BACKUP, NS) == []
    assert "0 StatefulSet(s) selected" in ready(memory_kube.get(BACKUP_SCHEDULE, "s", NS))["message"]

