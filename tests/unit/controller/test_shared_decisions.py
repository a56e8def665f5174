"""Pure decisions for shared volumes in backups and restores, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.problems import Problem
from statehold.controller.shared_locate import (
    check_access_modes,
    choose_node,
    driver_nodes,
    handle_kind,
    is_shared_pv,
    locate_shared,
    restore_kind,
)
from statehold.csi.backend import SHARED_PREFIX
from statehold.shared.registry import RootSpec

KEY = RootSpec.from_parameters({"sharedRoot": "/mnt/share"}).key


def pv(handle: str = f"shared/{KEY}/pvc-1", driver: str = "csi.statehold.io",
       attrs: dict[str, str] | None = None, size: str = "5Gi") -> dict[str, Any]:
    attrs = {"statehold.io/type": "shared", "sharedRoot": "/mnt/share"} if attrs is None else attrs
    return {"metadata": {"name": "pv-1"},
            "spec": {"capacity": {"storage": size},
                     "csi": {"driver": driver, "volumeHandle": handle, "volumeAttributes": attrs}}}


PVC = {"metadata": {"name": "uploads", "namespace": "web"}}


def sc(type_: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "c"}, "parameters": {"type": type_} if type_ else {}}


def test_shared_prefix_is_the_csi_backends() -> None:
    assert handle_kind(SHARED_PREFIX + "k/n") == "shared"


@pytest.mark.parametrize(("obj", "shared"), [
    (pv(), True),
    (pv(handle="fast/pvc-1"), False),
    (pv(driver="nfs.csi.k8s.io"), False),
    ({"metadata": {"name": "x"}, "spec": {"hostPath": {"path": "/x"}}}, False),
])
def test_is_shared_pv(obj: dict[str, Any], shared: bool) -> None:
    assert is_shared_pv(obj) is shared


def test_locate_shared_reads_handle_size_and_root() -> None:
    loc = locate_shared(PVC, pv(attrs={"statehold.io/type": "shared", "rootKey": KEY,
                                       "name": "pvc-1", "sharedRoot": "/mnt/share"}))
    assert (loc.handle, loc.root_key, loc.name, loc.size) == (f"shared/{KEY}/pvc-1", KEY, "pvc-1",
                                                              5 * 1024**3)
    assert dict(loc.root) == {"sharedRoot": "/mnt/share"}
    native = locate_shared(PVC, pv(attrs={"source": "g1:/gv0", "fsType": "glusterfs",
                                          "mountOptions": ""}))
    assert dict(native.root) == {"source": "g1:/gv0", "fsType": "glusterfs"}


@pytest.mark.parametrize(("obj", "reason"), [
    (pv(handle="shared/only-two"), "BadVolumeHandle"),
    (pv(handle="shared/../etc/x"), "BadVolumeHandle"),
    (pv(handle=f"shared/{KEY}/"), "BadVolumeHandle"),
    (pv(attrs={}), "NoSharedRoot"),
    (pv(attrs={"fsType": "nfs"}), "NoSharedRoot"),
])
def test_locate_shared_refuses_malformed_pvs(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(Problem) as err:
        locate_shared(PVC, obj)
    assert err.value.reason == reason and err.value.permanent


def csinode(name: str, *drivers: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"drivers": [{"name": d, "nodeID": name}
                                                              for d in drivers]}}


@pytest.mark.parametrize(("nodes", "want"), [
    ([], []),
    ([csinode("a", "csi.statehold.io"), csinode("b", "ebs.csi.aws.com")], ["a"]),
    ([csinode("c", "x", "csi.statehold.io"), csinode("a", "csi.statehold.io")], ["a", "c"]),
    ([{"metadata": {"name": "bare"}, "spec": {}}], []),
])
def test_driver_nodes_are_those_running_our_plugin(nodes: list, want: list[str]) -> None:
    assert driver_nodes(nodes) == want


def test_choose_node_is_stable_spread_and_honours_a_preference() -> None:
    nodes = [f"n{i}" for i in range(8)]
    first = choose_node("shared/k/v1", nodes)
    assert first in nodes
    assert choose_node("shared/k/v1", list(reversed(nodes))) == first  # order does not matter
    assert len({choose_node(f"shared/k/v{i}", nodes) for i in range(40)}) > 1  # spread
    assert choose_node("shared/k/v1", nodes, preferred="n3") == "n3"
    assert choose_node("shared/k/v1", nodes, preferred="gone") == first
    # removing another node keeps the choice (rendezvous hashing)
    assert choose_node("shared/k/v1", [*[n for n in nodes if n != first][:3], first]) == first


def test_choose_node_without_any_agent_is_retried() -> None:
    with pytest.raises(Problem) as err:
        choose_node("shared/k/v", [])
    assert err.value.reason == "NoAgentNode" and not err.value.permanent


@pytest.mark.parametrize(("handle", "cls", "want"), [
    ("shared/k/v", sc("shared"), "shared"),
    ("fast/pvc-1", sc("local"), "local"),
    ("fast/pvc-1", sc(None), "local"),
    ("shared/k/v", sc("local"), None),
    ("shared/k/v", sc(None), None),
    ("fast/pvc-1", sc("shared"), None),
])
def test_restore_kind_matches_backup_and_class(handle: str, cls: dict, want: str | None) -> None:
    if want is None:
        with pytest.raises(Problem) as err:
            restore_kind(handle, cls)
        assert err.value.reason == "BackupKindMismatch" and err.value.permanent
    else:
        assert restore_kind(handle, cls) == want


@pytest.mark.parametrize(("modes", "kind", "want"), [
    (["ReadWriteOnce"], "local", ["ReadWriteOnce"]),
    (["ReadWriteMany"], "shared", ["ReadWriteMany"]),
    (["ReadOnlyMany", "ReadWriteOnce"], "shared", ["ReadOnlyMany", "ReadWriteOnce"]),
    ([], "shared", ["ReadWriteMany"]),
    ([], "local", ["ReadWriteOnce"]),
    (["ReadWriteMany"], "local", None),
    (["ReadWriteOnce", "ReadOnlyMany"], "local", None),
])
def test_access_modes(modes: list[str], kind: Any, want: list[str] | None) -> None:
    if want is None:
        with pytest.raises(Problem) as err:
            check_access_modes(modes, kind)
        assert err.value.reason == "UnsupportedAccessMode"
    else:
        assert check_access_modes(modes, kind) == want
