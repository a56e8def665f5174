"""Per-volume I/O limits in the kernel: block throttling on the volume's loop device.

Every I/O a pod makes to a local volume is a bio submitted to the volume's loop device
(``/dev/loopN``, ``7:N``) and charged to the pod's cgroup; the kernel's blk-throttle
delays it there when a throttle rule for ``7:N`` holds in that cgroup. (The loop driver then
does the backing file's I/O in the same cgroup's name -- "loop: charge i/o to mem and blk
cg" -- on the pool's disk, which no rule here names.) A rule names the loop device alone,
so no other volume is touched. Where the rule goes depends on the hierarchy that has the
block controller (measured on Linux 6.x, docs/design/qos.md):

* **cgroup v2** (``io.max``) is hierarchical: a rule in a cgroup limits the sum of all I/O
  below it. One rule per volume in the cgroup that holds every pod -- kubelet's top pod
  cgroup (``kubepods.slice`` with the systemd driver, ``kubepods`` with cgroupfs) -- holds
  the limit for all pods together, whatever the layout below, with nothing to follow as
  pods and containers come and go.
* **cgroup v1** (``blkio.throttle.*``) is flat: a rule limits only I/O charged to that very
  cgroup, never its children. The limit is divided evenly among the cgroups under the
  scopes that *use* the volume (one of their processes has it mounted in its mount
  namespace, or the cgroup has already issued I/O to the device), each getting
  ``limit // n``, so together they stay within it. It is re-divided at every stage,
  publish and unpublish, and by the node agent's periodic reconcile (a container that
  starts later is found then).

The scopes are kubelet's pod cgroups found under the hierarchy, or the ones configured in
``<home>/qos.json`` (``{"hierarchy": "/sys/fs/cgroup/blkio", "scopes": ["kubepods"]}``;
scopes relative to the hierarchy). Nothing is ever written outside the scopes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from statehold.engine.pool import Pool
from statehold.engine.qos import FIELDS, Limits, Overrides, configured
from statehold.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("statehold.engine.throttle")

V1_FILES: dict[str, str] = {
    "read_iops": "blkio.throttle.read_iops_device",
    "write_iops": "blkio.throttle.write_iops_device",
    "read_bps": "blkio.throttle.read_bps_device",
    "write_bps": "blkio.throttle.write_bps_device",
}
V2_KEYS: dict[str, str] = {"read_bps": "rbps", "write_bps": "wbps",
                           "read_iops": "riops", "write_iops": "wiops"}
KUBELET_SCOPES = ("kubepods.slice", "kubepods", "kubelet.slice/kubelet-kubepods.slice")
"""kubelet's top pod cgroup: systemd driver, cgroupfs driver, kind-style nested kubelet."""
CONFIG = "qos.json"
PROC = Path("/proc")


# -- the hierarchy -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hierarchy:
    """The cgroup hierarchy that holds the block controller: v2 (``io``) or v1 (``blkio``)."""

    version: Literal[1, 2]
    root: Path

    def text(self) -> str:
        return f"cgroup v2 io.max at {self.root}" if self.version == 2 else (
            f"cgroup v1 blkio.throttle at {self.root}")


def find_hierarchies(mountinfo: str, controllers: Callable[[Path], str]) -> list[Hierarchy]:
    """Mounts of the block controller's hierarchy in ``/proc/self/mountinfo`` text, in
    mount order: cgroup2 mounts whose ``cgroup.controllers`` (read through ``controllers``)
    lists ``io``, then v1 ``cgroup`` mounts with the ``blkio`` option. A controller serves
    one hierarchy only, so a host that mounts v1 blkio (like the one the tests run on) has
    no ``io`` in v2. A container sees its own cgroup at ``/sys/fs/cgroup`` and the host's
    wherever it is mounted (a hostPath), hence several."""
    v2: list[Hierarchy] = []
    v1: list[Hierarchy] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        target = Path(left.split()[4].replace("\\040", " "))
        fstype, _source, options = [*right.split(), "", "", ""][:3]
        if fstype == "cgroup2" and "io" in controllers(target).split():
            v2.append(Hierarchy(2, target))
        elif fstype == "cgroup" and "blkio" in options.split(","):
            v1.append(Hierarchy(1, target))
    return v2 + v1


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def detect() -> list[Hierarchy]:
    return find_hierarchies(_read(PROC / "self" / "mountinfo"),
                            lambda target: _read(target / "cgroup.controllers"))


def device_number(device: str) -> str:
    """``MAJ:MIN`` of a block device node (``/dev/loop3`` -> ``7:3``)."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError as exc:
        raise FailedPrecondition(f"cannot stat {device}: {exc.strerror or exc}") from exc
    return f"{os.major(rdev)}:{os.minor(rdev)}"


# -- rule files ----------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    try:
        with open(path, "w") as out:
            out.write(text)
    except OSError as exc:
        raise FailedPrecondition(f"cannot write {text.strip()!r} to {path}: "
                                 f"{exc.strerror or exc}") from exc


def io_max_line(number: str, limits: Limits) -> str:
    """The ``io.max`` line of a device; ``max`` for no limit (which also removes the rule)."""
    return number + "".join(f" {key}={getattr(limits, field) or 'max'}"
                            for field, key in V2_KEYS.items())


def parse_io_max(text: str) -> dict[str, Limits]:
    """``io.max`` content -> limits per device."""
    out: dict[str, Limits] = {}
    keys = {v: k for k, v in V2_KEYS.items()}
    for line in text.splitlines():
        number, *pairs = line.split()
        values = dict.fromkeys(FIELDS, 0)
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key in keys and value.isdigit():
                values[keys[key]] = int(value)
        out[number] = Limits(**values)
    return out


def parse_v1_file(text: str) -> dict[str, int]:
    """A ``blkio.throttle.*_device`` file -> value per device (``7:3 500`` lines)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def write_rule(hierarchy: Hierarchy, cgroup: Path, number: str, limits: Limits) -> None:
    """Set (all four) limits of device ``number`` in ``cgroup``; zeros remove the rule."""
    if hierarchy.version == 2:
        _write(cgroup / "io.max", io_max_line(number, limits) + "\n")
        return
    for field, value in limits.items():
        _write(cgroup / V1_FILES[field], f"{number} {value}\n")


def read_rule(hierarchy: Hierarchy, cgroup: Path, number: str) -> Limits:
    """The limits of device ``number`` in ``cgroup`` as the kernel holds them."""
    if hierarchy.version == 2:
        return parse_io_max(_read(cgroup / "io.max")).get(number, Limits())
    return Limits(**{f: parse_v1_file(_read(cgroup / V1_FILES[f])).get(number, 0)
                     for f in FIELDS})


def rule_devices(hierarchy: Hierarchy, cgroup: Path) -> set[str]:
    """Every device that has a rule in ``cgroup``."""
    if hierarchy.version == 2:
        return {n for n, limits in parse_io_max(_read(cgroup / "io.max")).items()
                if not limits.unlimited}
    return {n for f in FIELDS for n, v in parse_v1_file(_read(cgroup / V1_FILES[f])).items() if v}


LOOP_MAJOR = 7
SYS_DEV_BLOCK = Path("/sys/dev/block")


def unbound_loop(number: str) -> bool:
    """True for a loop device (major 7) with no backing file now."""
    major, _, _minor = number.partition(":")
    if major != str(LOOP_MAJOR):
        return False
    return not (SYS_DEV_BLOCK / number / "loop" / "backing_file").exists()


@dataclass(frozen=True, slots=True)
class Counters:
    """I/O done on a device, summed over the scopes (bytes and operations)."""

    read_ios: int = 0
    write_ios: int = 0
    read_bytes: int = 0
    write_bytes: int = 0


def parse_io_stat(text: str, number: str) -> Counters:
    for line in text.splitlines():
        dev, *pairs = line.split()
        if dev != number:
            continue
        kv = {k: int(v) for k, _, v in (p.partition("=") for p in pairs) if v.isdigit()}
        return Counters(kv.get("rios", 0), kv.get("wios", 0), kv.get("rbytes", 0), kv.get("wbytes", 0))
    return Counters()


def parse_v1_stat(text: str, number: str) -> tuple[int, int]:
    """(read, write) of a device from a ``blkio.throttle.io_serviced``-style file."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == number and parts[2].isdigit():
            if parts[1] == "Read":
                read = int(parts[2])
            elif parts[1] == "Write":
                write = int(parts[2])
    return read, write


def counters(hierarchy: Hierarchy, cgroup: Path, number: str) -> Counters:
    """I/O on device ``number`` by ``cgroup`` and everything below it."""
    if hierarchy.version == 2:
        return parse_io_stat(_read(cgroup / "io.stat"), number)
    ios = parse_v1_stat(_read(cgroup / "blkio.throttle.io_serviced_recursive"), number)
    done = parse_v1_stat(_read(cgroup / "blkio.throttle.io_service_bytes_recursive"), number)
    return Counters(ios[0], ios[1], done[0], done[1])


# -- v1: who uses a device -----------------------------------------------------------------------
def cgroups_under(scope: Path) -> Iterator[Path]:
    """``scope`` and every cgroup below it, parents first."""
    for parent, dirs, _files in os.walk(scope):
        dirs.sort()
        yield Path(parent)


def procs(cgroup: Path) -> list[int]:
    return [int(p) for p in _read(cgroup / "cgroup.procs").split() if p.isdigit()]


def mounts_device(mountinfo: str, number: str, leaf: str) -> bool:
    """True if a mount table shows the device: a filesystem on it (``MAJ:MIN`` field), or
    a bind of its device node (a block volume: ``devtmpfs`` whose root is ``/loopN``)."""
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts = left.split()
        if len(parts) < 5:
            continue
        if parts[2] == number or (parts[3] == leaf and right.startswith("devtmpfs ")):
            return True
    return False


def users(hierarchy: Hierarchy, scopes: Sequence[Path], number: str, leaf: str) -> list[Path]:
    """The cgroups under ``scopes`` that use device ``number`` now: they hold a process whose
    mount namespace has the device mounted, or they have already issued I/O to it (a block
    volume handed to a container as a device node shows in no mount table). Each mount
    namespace is read once."""
    seen: dict[str, bool] = {}
    found = []
    for scope in scopes:
        for cgroup in cgroups_under(scope):
            pids = procs(cgroup)
            if not pids:
                continue
            if any(parse_v1_stat(_read(cgroup / "blkio.throttle.io_serviced"), number)) or \
                    _sees(pids, number, leaf, seen):
                found.append(cgroup)
    return found


def _sees(pids: Sequence[int], number: str, leaf: str, seen: dict[str, bool]) -> bool:
    for pid in pids:
        try:
            namespace = os.readlink(PROC / str(pid) / "ns" / "mnt")
        except OSError:
            continue  # exited meanwhile
        if namespace not in seen:
            text = _read(PROC / str(pid) / "mountinfo")
            if not text:
                continue
            seen[namespace] = mounts_device(text, number, leaf)
        if seen[namespace]:
            return True
    return False


# -- the service ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rule:
    """Limits of one device in one cgroup."""

    cgroup: Path
    limits: Limits


class Throttle:
    """Writes and reads the throttle rules of loop devices in one hierarchy's scopes.

    ``apply`` is idempotent and converges: after it, the rules for the device are exactly
    the planned ones (stale rules in the scopes, e.g. left by a crash or by a volume that had
    this loop device before, are removed). Rules of other devices are never touched."""

    def __init__(self, hierarchy: Hierarchy | None, scopes: Sequence[Path]) -> None:
        self.hierarchy = hierarchy
        self.scopes = tuple(scopes)

    @classmethod
    def for_home(cls, home: Path) -> Throttle:
        """From ``<home>/qos.json`` when present, else the first mount of the block
        controller's hierarchy that holds kubelet's pod cgroups (outside Kubernetes there is
        none: limits then cannot be enforced, and a volume with limits is not staged)."""
        path = Path(home) / CONFIG
        if path.exists():
            try:
                data = json.loads(path.read_text())
                root = Path(data["hierarchy"])
                version = int(data.get("version", 2 if (root / "cgroup.controllers").exists() else 1))
                scopes = [root / s for s in data["scopes"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"{path}: {exc}") from exc
            if version not in (1, 2):
                raise InvalidArgument(f"{path}: version must be 1 or 2")
            return cls(Hierarchy(1 if version == 1 else 2, root), scopes)
        found = detect()
        for hierarchy in found:
            scopes = [hierarchy.root / s for s in KUBELET_SCOPES if (hierarchy.root / s).is_dir()]
            if scopes:
                return cls(hierarchy, scopes)
        return cls(found[0] if found else None, ())

    @property
    def available(self) -> bool:
        return self.hierarchy is not None and bool(self.scopes) and all(s.is_dir() for s in self.scopes)

    def text(self) -> str:
        if self.hierarchy is None:
            return "no block throttling: no cgroup hierarchy holds the io/blkio controller"
        if not self.scopes:
            return f"{self.hierarchy.text()}, but no pod cgroup to put rules in"
        missing = [str(s) for s in self.scopes if not s.is_dir()]
        if missing:
            return f"{self.hierarchy.text()}, but scope {', '.join(missing)} does not exist"
        return f"{self.hierarchy.text()}, scopes {', '.join(str(s) for s in self.scopes)}"

    def _need(self) -> Hierarchy:
        if self.hierarchy is None or not self.available:
            raise FailedPrecondition(f"volume I/O limits cannot be enforced on this node: {self.text()}")
        return self.hierarchy

    def plan(self, device: str, limits: Limits) -> list[Rule]:
        """Where the device's limits go: each scope (v2), or an even share in each cgroup
        that uses the device (v1). Empty for no limits."""
        hierarchy = self._need()
        if limits.unlimited:
            return []
        if hierarchy.version == 2:
            return [Rule(s, limits) for s in self.scopes]
        number = device_number(device)
        using = users(hierarchy, self.scopes, number, "/" + os.path.basename(device))
        share = limits.split(len(using))
        return [Rule(c, share) for c in using]

    def apply(self, device: str, limits: Limits) -> list[Rule]:
        """Make the device's rules exactly the plan; returns it. FailedPrecondition when
        limits are asked for and this node cannot enforce them (or a rule cannot be written)."""
        if limits.unlimited and not self.available:
            return []
        hierarchy = self._need()
        number = device_number(device)
        rules = self.plan(device, limits)
        planned = {r.cgroup for r in rules}
        for rule in rules:
            if read_rule(hierarchy, rule.cgroup, number) != rule.limits:
                write_rule(hierarchy, rule.cgroup, number, rule.limits)
        for stale in self.applied(device):
            if stale.cgroup not in planned:
                write_rule(hierarchy, stale.cgroup, number, Limits())
        log.info("throttle applied device=%s limits=%s cgroups=%d", device, limits.text(), len(rules))
        return rules

    def clear(self, device: str) -> None:
        """Remove every rule of the device in the scopes (the device is going away: the next
        volume attached as this loop device must not inherit them)."""
        if self.hierarchy is None or not self.available:
            return
        number = device_number(device)
        for rule in self.applied(device):
            write_rule(self.hierarchy, rule.cgroup, number, Limits())

    def applied(self, device: str) -> list[Rule]:
        """The device's rules as the kernel holds them in the scopes (v2: the scopes; v1:
        every cgroup under them)."""
        if self.hierarchy is None:
            return []
        number = device_number(device)
        places = list(self.scopes) if self.hierarchy.version == 2 else [
            c for s in self.scopes for c in cgroups_under(s)]
        rules = [Rule(c, read_rule(self.hierarchy, c, number)) for c in places]
        return [r for r in rules if not r.limits.unlimited]

    def sweep(self) -> list[str]:
        """Remove the rules of loop devices that back nothing any more (left when a detach
        happened without ``clear``, e.g. a crash): the next file attached as that device --
        a volume, or a pool's disk image -- must not be throttled by them. Returns the
        devices swept."""
        if self.hierarchy is None:
            return []
        places = list(self.scopes) if self.hierarchy.version == 2 else [
            c for s in self.scopes for c in cgroups_under(s)]
        swept = set()
        for cgroup in places:
            for number in rule_devices(self.hierarchy, cgroup):
                if unbound_loop(number):
                    write_rule(self.hierarchy, cgroup, number, Limits())
                    swept.add(number)
        return sorted(swept)

    def counters(self, device: str) -> Counters:
        """I/O done on the device by everything in the scopes, since the rules' cgroups
        exist (v2: ``io.stat``; v1: the ``*_recursive`` throttle statistics)."""
        if self.hierarchy is None:
            return Counters()
        number = device_number(device)
        total = Counters()
        for scope in self.scopes:
            c = counters(self.hierarchy, scope, number)
            total = Counters(total.read_ios + c.read_ios, total.write_ios + c.write_ios,
                             total.read_bytes + c.read_bytes, total.write_bytes + c.write_bytes)
        return total


def reconcile(pools: Iterable[Pool], throttle: Throttle, overrides: Overrides) -> dict[str, list[Rule]]:
    """Apply every attached volume's configured limits (the node agent's periodic pass:
    on cgroup v1 it finds the containers that started using a volume since the last one).
    A volume whose limits cannot be applied is logged and skipped; the others go on."""
    done: dict[str, list[Rule]] = {}
    throttle.sweep()
    for pool in pools:
        for vol in pool.list_volumes():
            if vol.device is None:
                continue
            try:
                done[vol.id] = throttle.apply(vol.device, configured(vol, overrides).limits)
            except FailedPrecondition as exc:
                log.warning("throttle not applied volume=%s error=%s", vol.id, exc)
    return done
