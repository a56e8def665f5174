"""Volume I/O limits without a kernel: parameters, labels, overrides, the cgroup file formats
(captured kernel text), the hierarchy found in mountinfo, and the v2 plan and rule file.

The cgroup v2 path (``io.max``) cannot be exercised on the test host: it mounts v1 blkio,
and a controller serves one hierarchy only, so its v2 hierarchy has no ``io``. What is
checked here for v2 is what Statehold writes and reads (the line format, the scopes it goes
to, the round trip through a file shaped like the kernel's), not what the kernel does with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.engine import qos, throttle
from statehold.engine.qos import Limits, Overrides
from statehold.engine.throttle import Hierarchy, Rule, Throttle
from statehold.engine.types import Volume, VolumeMode
from statehold.errors import FailedPrecondition, InvalidArgument

MiB = 1024 * 1024


def volume(name: str = "db", created_at: float = 1.0, labels: dict[str, str] | None = None) -> Volume:
    return Volume(pool="p", name=name, size=MiB, mode=VolumeMode.BLOCK, fs=None,
                  path=Path("/nonexistent"), created_at=created_at, labels=labels or {})


# -- parameters and labels -------------------------------------------------------------------------
def test_class_parameters_give_the_four_limits() -> None:
    got = qos.parse_parameters({"readIOPS": "1000", "writeIOPS": "500",
                                "readBytesPerSecond": "100Mi", "writeBytesPerSecond": "20971520",
                                "type": "local"})
    assert got == Limits(read_iops=1000, write_iops=500, read_bps=100 * MiB, write_bps=20 * MiB)


@pytest.mark.parametrize("text,value", [("20Mi", 20 * MiB), ("20MiB/s", 20 * MiB), ("1.5Gi", 3 * 2**29),
                                        ("100M", 100_000_000), ("4096", 4096), ("0", 0), ("", 0)])
def test_bytes_per_second_take_quantities(text: str, value: int) -> None:
    assert qos.parse_parameters({"writeBytesPerSecond": text}).write_bps == value


def test_no_parameters_is_unlimited() -> None:
    assert qos.parse_parameters({"type": "local"}).unlimited


@pytest.mark.parametrize("params", [{"writeIOPS": "5.5"}, {"writeIOPS": "-1"}, {"readIOPS": "lots"},
                                    {"writeBytesPerSecond": "20 furlongs"},
                                    {"writeIOPS": str(2**31)}, {"readBytesPerSecond": str(2**62 + 1)}])
def test_malformed_limits_are_invalid_argument(params: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        qos.parse_parameters(params)


@pytest.mark.parametrize("key", qos.BURST_PARAMETERS)
def test_burst_parameters_are_refused_not_ignored(key: str) -> None:
    with pytest.raises(InvalidArgument, match="no burst"):
        qos.parse_parameters({"writeIOPS": "500", key: "1000"})


def test_limits_travel_as_labels() -> None:
    limits = Limits(write_iops=500, write_bps=20 * MiB)
    assert limits.labels() == {"statehold.io/qos-write-iops": "500",
                               "statehold.io/qos-write-bps": str(20 * MiB)}
    assert Limits.from_labels({**limits.labels(), "other": "x"}) == limits
    assert Limits.from_labels({"statehold.io/qos-write-iops": "garbage"}) == Limits()


def test_split_divides_each_limit_and_keeps_unlimited_ones() -> None:
    assert Limits(write_iops=500, read_bps=10).split(3) == Limits(write_iops=166, read_bps=3)
    assert Limits(write_iops=1).split(4) == Limits(write_iops=1)  # never 0: that is "none"
    assert Limits(write_iops=500).split(0) == Limits(write_iops=500)


def test_text_reads_like_a_human_would_write_it() -> None:
    assert Limits().text() == "unlimited"
    assert Limits(write_iops=500, write_bps=20 * MiB).text() == "write 500 IOPS + 20 MiB/s"
    assert Limits(read_iops=100, write_bps=1536).text() == "read 100 IOPS, write 1.5 KiB/s"


def test_settings_name_fields_and_refuse_unknown_ones() -> None:
    assert qos.parse_settings({"write_iops": "700"}) == Limits(write_iops=700)
    with pytest.raises(InvalidArgument, match="unknown limit"):
        qos.parse_settings({"writeIOPS": "700"})


# -- overrides -------------------------------------------------------------------------------------
def test_an_override_replaces_the_class_limits_until_cleared(tmp_path: Path) -> None:
    vol = volume(labels=Limits(write_iops=500).labels())
    store = Overrides(tmp_path)
    assert qos.configured(vol, store) == qos.Configured(Limits(write_iops=500), "class")
    store.put(vol, Limits(read_iops=50))
    assert qos.configured(vol, store) == qos.Configured(Limits(read_iops=50), "override")
    assert store.origin(vol) == "cli"
    assert store.clear(vol)
    assert qos.configured(vol, store).source == "class"
    assert not store.clear(vol)


def test_a_new_volume_with_the_same_name_does_not_inherit_the_override(tmp_path: Path) -> None:
    store = Overrides(tmp_path)
    store.put(volume(created_at=1.0), Limits(write_iops=5), origin="annotation")
    again = volume(created_at=2.0)
    assert store.get(again) is None
    assert store.origin(again) is None
    assert qos.configured(again, store) == qos.Configured(Limits(), "none")


# -- cgroup file formats (as the kernel prints them) ------------------------------------------------
def test_io_max_line_says_max_for_no_limit() -> None:
    assert throttle.io_max_line("7:3", Limits(write_iops=500, write_bps=20 * MiB)) == (
        "7:3 rbps=max wbps=20971520 riops=max wiops=500")
    assert throttle.io_max_line("7:3", Limits()) == "7:3 rbps=max wbps=max riops=max wiops=max"


def test_io_max_as_the_kernel_prints_it() -> None:
    text = "8:16 rbps=2097152 wbps=max riops=max wiops=120\n7:3 rbps=max wbps=max riops=10 wiops=max\n"
    assert throttle.parse_io_max(text) == {"8:16": Limits(read_bps=2097152, write_iops=120),
                                           "7:3": Limits(read_iops=10)}


def test_v1_throttle_files_and_statistics() -> None:
    assert throttle.parse_v1_file("7:3 500\n254:0 100\n") == {"7:3": 500, "254:0": 100}
    serviced = "7:3 Read 9\n7:3 Write 800\n7:3 Sync 809\n7:3 Async 0\n7:3 Total 809\nTotal 809\n"
    assert throttle.parse_v1_stat(serviced, "7:3") == (9, 800)
    assert throttle.parse_v1_stat(serviced, "7:4") == (0, 0)


def test_io_stat_counters_of_one_device() -> None:
    text = ("254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n"
            "7:3 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    assert throttle.parse_io_stat(text, "7:3") == throttle.Counters(1, 2, 4096, 8192)


# -- the hierarchy ---------------------------------------------------------------------------------
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
CONTAINER = UNIFIED + ("610 600 0:26 / /host/sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,"
                       "nsdelegate\n")


def test_a_hybrid_host_throttles_through_v1_blkio() -> None:
    found = throttle.find_hierarchies(HYBRID, lambda _t: "hugetlb")  # what unified lists here
    assert found == [Hierarchy(1, Path("/sys/fs/cgroup/blkio"))]


def test_a_unified_host_throttles_through_io_max() -> None:
    found = throttle.find_hierarchies(UNIFIED, lambda _t: "cpuset cpu io memory pids")
    assert found == [Hierarchy(2, Path("/sys/fs/cgroup"))]


def test_a_container_sees_its_own_cgroup_and_the_hosts() -> None:
    found = throttle.find_hierarchies(CONTAINER, lambda _t: "cpu io memory")
    assert [h.root for h in found] == [Path("/sys/fs/cgroup"), Path("/host/sys/fs/cgroup")]


def test_no_block_controller_no_hierarchy() -> None:
    assert throttle.find_hierarchies(UNIFIED, lambda _t: "cpu memory") == []


def test_a_device_shows_in_a_mount_table_by_number_or_as_a_bound_node() -> None:
    fs = "100 50 7:3 / /var/lib/kubelet/pods/x/mount rw - xfs /dev/loop3 rw\n"
    block = "101 50 0:5 /loop3 /var/lib/kubelet/plugins/publish/pv/x rw - devtmpfs udev rw\n"
    assert throttle.mounts_device(fs, "7:3", "/loop3")
    assert throttle.mounts_device(block, "7:3", "/loop3")
    assert not throttle.mounts_device(fs.replace("7:3", "7:30"), "7:3", "/loop3")


# -- the v2 plan and its rule file (a file shaped like the kernel's; not the kernel) ----------------
def test_v2_puts_one_rule_per_scope_and_removes_it_with_max(tmp_path: Path) -> None:
    scopes = [tmp_path / "kubepods.slice"]
    scopes[0].mkdir()
    (scopes[0] / "io.max").write_text("")
    number = "{}:{}".format(*(f(os.stat("/dev/null").st_rdev) for f in (os.major, os.minor)))
    t = Throttle(Hierarchy(2, tmp_path), scopes)
    limits = Limits(write_iops=500, write_bps=20 * MiB)
    assert t.plan("/dev/null", limits) == [Rule(scopes[0], limits)]
    t.apply("/dev/null", limits)
    assert (scopes[0] / "io.max").read_text() == f"{number} rbps=max wbps=20971520 riops=max wiops=500\n"
    assert t.applied("/dev/null") == [Rule(scopes[0], limits)]
    t.clear("/dev/null")
    assert (scopes[0] / "io.max").read_text() == f"{number} rbps=max wbps=max riops=max wiops=max\n"
    assert t.applied("/dev/null") == []


def test_limits_on_a_node_that_cannot_enforce_them_are_failed_precondition() -> None:
    t = Throttle(Hierarchy(2, Path("/nonexistent")), [])
    assert not t.available
    assert t.apply("/dev/null", Limits()) == []  # nothing asked, nothing to refuse
    with pytest.raises(FailedPrecondition, match="cannot be enforced"):
        t.apply("/dev/null", Limits(write_iops=1))


def test_a_config_file_in_the_home_names_the_hierarchy_and_scopes(tmp_path: Path) -> None:
    (tmp_path / "qos.json").write_text('{"hierarchy": "/sys/fs/cgroup/blkio", "scopes": ["x"]}')
    t = Throttle.for_home(tmp_path)
    assert t.hierarchy == Hierarchy(1, Path("/sys/fs/cgroup/blkio"))
    assert t.scopes == (Path("/sys/fs/cgroup/blkio/x"),)
    (tmp_path / "qos.json").write_text('{"scopes": ["x"]}')
    with pytest.raises(InvalidArgument):
        Throttle.for_home(tmp_path)


def test_the_sweep_removes_rules_of_loop_devices_that_back_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Only loop devices (major 7) without a backing file lose their rules; a bound loop
    device and any other device keep theirs."""
    scope = tmp_path / "cg" / "kubepods"
    scope.mkdir(parents=True)
    (scope / "io.max").write_text("7:40 rbps=max wbps=max riops=max wiops=5\n"
                                  "7:41 rbps=max wbps=max riops=max wiops=6\n"
                                  "8:0 rbps=max wbps=max riops=max wiops=7\n")
    sysfs = tmp_path / "dev-block"
    (sysfs / "7:41" / "loop").mkdir(parents=True)
    (sysfs / "7:41" / "loop" / "backing_file").write_text("/pool/volumes/db.img\n")
    monkeypatch.setattr(throttle, "SYS_DEV_BLOCK", sysfs)
    writes: list[str] = []
    monkeypatch.setattr(throttle, "_write", lambda path, text: writes.append(text))
    t = Throttle(Hierarchy(2, tmp_path / "cg"), [scope])
    assert t.sweep() == ["7:40"]
    assert writes == ["7:40 rbps=max wbps=max riops=max wiops=max\n"]
