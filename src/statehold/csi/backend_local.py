"""LocalBackend: CSI volumes as thin volumes of this node's engine pools.

Ids are the engine's: volume ``"<pool>/<name>"``, snapshot ``"<pool>/<snapname>"``. The
controller half lives here; the node half (stage, publish, stats) in
:mod:`statehold.csi.local_node`. The engine is thread-safe, so gRPC worker threads call it
directly; the servicers' per-volume locks keep two calls off one volume.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from statehold.csi import local_node, naming
from statehold.csi.backend import (
    SINGLE_NODE_MODES,
    TOPOLOGY_KEY,
    BackendConfig,
    CapacityInfo,
    ContentSource,
    ExpandInfo,
    PublishRequest,
    SnapshotInfo,
    StageRequest,
    VolumeInfo,
    VolumeRequest,
    VolumeStats,
)
from statehold.csi.conditions import Conditions
from statehold.csi.requests import LOCAL_FS_TYPES, fs_parameter
from statehold.engine import capacity as fullness
from statehold.engine import fs as engine_fs
from statehold.engine import qos
from statehold.engine import trim as trimming
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.throttle import Throttle
from statehold.engine.types import FsType, MiB, Snapshot, Source, SourceKind, Volume, VolumeMode
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfCapacity,
    OutOfRange,
    StateholdError,
)
from statehold.replication.context import DEFAULT_RPO_SECONDS, NODE_KEY, REPLICAS_KEY, RPO_KEY
from statehold.replication.points import node_label

log = logging.getLogger("statehold.csi")

DEFAULT_SIZE = 1024 * MiB
"""Size of a volume created without a capacity range."""

DEFAULT_FS = "xfs"

NAME_LABEL = "csi.statehold.io/name"
POOL_PARAMETER = "pool"
FREEZE_PARAMETER = "freeze"
REPLICAS_PARAMETER = "replicas"
RPO_PARAMETER = "rpo"

MAX_REPLICAS = 16
MAX_RPO_SECONDS = 24 * 3600

_DURATION = re.compile(r"(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,6})s)?")


KUBE_METADATA = (
    "csi.storage.k8s.io/pvc/name",
    "csi.storage.k8s.io/pvc/namespace",
    "csi.storage.k8s.io/pv/name",
)
"""What the external-provisioner adds with --extra-create-metadata: kept as volume labels so
`statehold get volumes` can say which claim a volume serves."""


def _labels(req: VolumeRequest) -> dict[str, str]:
    labels = {NAME_LABEL: req.name[:253]}
    labels.update({k: req.parameters[k][:253] for k in KUBE_METADATA if req.parameters.get(k)})
    return labels


def parse_rpo(text: str) -> int:
    """Seconds of an ``rpo`` parameter: a duration of whole hours, minutes and seconds, in
    that order (``15s``, ``1m30s``, ``2h``), from 1 s to 24 h; InvalidArgument otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise InvalidArgument(f"parameter {RPO_PARAMETER}={text!r} is not a duration like 15s, "
                              "1m30s or 2h")
    h, m, sec = (int(g or 0) for g in match.groups())
    seconds = h * 3600 + m * 60 + sec
    if not 1 <= seconds <= MAX_RPO_SECONDS:
        raise InvalidArgument(f"parameter {RPO_PARAMETER}={text!r} must be between 1s and 24h")
    return seconds


def replication_parameters(parameters: Mapping[str, str]) -> tuple[int, int]:
    """``(replicas, rpo seconds)`` of a StorageClass: ``replicas`` 1 (the default: one copy,
    as before) to 16, ``rpo`` a duration (default 15 s). InvalidArgument for anything else."""
    raw = parameters.get(REPLICAS_PARAMETER, "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_REPLICAS:
        raise InvalidArgument(f"parameter {REPLICAS_PARAMETER}={raw!r} must be a whole number "
                              f"from 1 to {MAX_REPLICAS}")
    rpo = parse_rpo(parameters[RPO_PARAMETER]) if RPO_PARAMETER in parameters else (
        DEFAULT_RPO_SECONDS)
    return int(raw), rpo


def replication_labels(parameters: Mapping[str, str]) -> dict[str, str]:
    """The engine labels of a new volume's replication (none for a single copy)."""
    replicas, rpo = replication_parameters(parameters)
    return {REPLICAS_KEY: str(replicas), RPO_KEY: str(rpo)} if replicas > 1 else {}


def replicated_view(volume_id: str, labels: Mapping[str, str],
                    node_id: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """For a volume with more than one copy: its topology segment (the per-volume node label
    that the copy holders carry, replication.md §8.2) and its extra volume context."""
    replicas = labels.get(REPLICAS_KEY, "1")
    if not replicas.isdigit() or int(replicas) <= 1:
        return None
    context = {REPLICAS_KEY: replicas, RPO_KEY: labels.get(RPO_KEY, str(DEFAULT_RPO_SECONDS)),
               NODE_KEY: node_id}
    return {node_label(volume_id): "true"}, context


def min_size(fs: str) -> int:
    """Smallest volume of filesystem ``fs`` (engine ``fs.MIN_SIZE``: mkfs refuses less); a
    block volume ("") or a name the engine does not know is one MiB, the provisioning unit."""
    try:
        return engine_fs.MIN_SIZE[FsType(fs)]
    except ValueError:
        return MiB


def _round_up(n: int) -> int:
    return -(-n // MiB) * MiB


def choose_size(required: int, limit: int, floor: int) -> int:
    """The size to provision: >= required and the fs minimum, whole MiB, <= limit.

    Pure, so the capacity rules are tested without a pool. OutOfRange when no whole-MiB
    size fits (e.g. a limit under the filesystem's minimum)."""
    if required:
        size = _round_up(max(required, floor))
    else:
        size = max(floor, min(DEFAULT_SIZE, limit) // MiB * MiB if limit else DEFAULT_SIZE)
        size = _round_up(size)
    if limit and size > limit:
        raise OutOfRange(
            f"no size in [{required}, {limit}] bytes fits: volumes are whole MiB of at least {floor} bytes"
        )
    return size


class LocalBackend:
    kind = "local"
    access_modes = SINGLE_NODE_MODES
    supports_block = True
    needs_staging = True

    def __init__(self, config: BackendConfig, node: Node | None = None,
                 throttle: Throttle | None = None) -> None:
        self.config = config
        self.node = node if node is not None else Node(config.home)
        self.segment = {TOPOLOGY_KEY: config.node_id}
        # I/O limits (docs/qos.md): the class's in the volume's labels, overrides in the home
        self.throttle = throttle if throttle is not None else Throttle.for_home(self.node.home)
        self.overrides = qos.Overrides(self.node.home)

    # ---- lookups -------------------------------------------------------------------------
    def _pool(self, name: str) -> Pool:
        return self.node.pool(name)

    def _volume(self, volume_id: str) -> tuple[Pool, Volume]:
        pool_name, name = naming.split_id(volume_id)
        try:
            pool = self._pool(pool_name)
            return pool, pool.get_volume(name)
        except (NotFound, InvalidArgument) as exc:
            raise NotFound(f"volume {volume_id!r} does not exist") from exc

    def _snapshot(self, snapshot_id: str) -> tuple[Pool, Snapshot]:
        pool_name, name = naming.split_id(snapshot_id)
        try:
            pool = self._pool(pool_name)
            return pool, pool.get_snapshot(name)
        except (NotFound, InvalidArgument) as exc:
            raise NotFound(f"snapshot {snapshot_id!r} does not exist") from exc

    def _space(self, pool_name: str, memo: dict[str, fullness.Space] | None = None
               ) -> fullness.Space | None:
        """The pool's usage against its marks (None if the pool cannot be read now)."""
        if memo is not None and pool_name in memo:
            return memo[pool_name]
        try:
            found = self._pool(pool_name).space()
        except StateholdError:
            return None
        if memo is not None:
            memo[pool_name] = found
        return found

    def _info(self, vol: Volume, memo: dict[str, fullness.Space] | None = None) -> VolumeInfo:
        source = None
        if vol.source is not None:
            source = ContentSource(vol.source.kind.value, naming.join_id(vol.pool, vol.source.name))
        missing = not vol.path.exists()
        damage = Conditions(self.node.home).get(vol)  # a filesystem failure the node recorded
        problems = [f"backing file {vol.path} is missing"] if missing else []
        problems += [damage.message] if damage is not None else []
        space = self._space(vol.pool, memo)
        full = fullness.volume_problem(space) if space is not None else None
        problems += [full] if full is not None else []
        context = {
            "statehold.io/type": "local",
            "statehold.io/pool": vol.pool,
            "statehold.io/fs": vol.fs.value if vol.fs else "",
        }
        if vol.labels.get(trimming.SCHEDULE_LABEL):
            context[trimming.SCHEDULE_LABEL] = vol.labels[trimming.SCHEDULE_LABEL]
        topology = dict(self.segment)
        replicated = replicated_view(vol.id, vol.labels, self.config.node_id)
        if replicated is not None:
            topology, extra = replicated
            context.update(extra)
        return VolumeInfo(
            volume_id=vol.id,
            capacity_bytes=vol.size,
            block=vol.mode is VolumeMode.BLOCK,
            fs_type=vol.fs.value if vol.fs else "",
            context=context,
            source=source,
            topology=(topology,),
            abnormal=bool(problems),
            message="; ".join(problems),
        )

    def _snapinfo(self, snap: Snapshot) -> SnapshotInfo:
        return SnapshotInfo(
            snapshot_id=snap.id,
            source_volume_id=naming.join_id(snap.pool, snap.source_volume),
            size_bytes=snap.size,
            created_at=snap.created_at,
            ready=snap.ready,
        )

    def _serves(self, segment: Mapping[str, str]) -> bool:
        return dict(segment) == self.segment

    # ---- create --------------------------------------------------------------------------
    def _fs_type(self, req: VolumeRequest) -> str:
        if req.block:
            return ""
        asked = req.fs_type
        param = fs_parameter(req.parameters)
        if asked and param and asked != param:
            raise InvalidArgument(f"capability fs_type {asked!r} conflicts with parameter {param!r}")
        fs = asked or param or DEFAULT_FS
        if fs not in LOCAL_FS_TYPES:
            raise InvalidArgument(f"fs type {fs!r} is not one of {sorted(LOCAL_FS_TYPES)}")
        return fs

    def _source(self, src: ContentSource) -> tuple[Pool, Source, int]:
        if src.kind == "snapshot":
            pool, snap = self._snapshot(src.id)
            return pool, Source(SourceKind.SNAPSHOT, snap.name), snap.size
        pool, vol = self._volume(src.id)
        return pool, Source(SourceKind.VOLUME, vol.name), vol.size

    def _find(self, name: str) -> Volume | None:
        for pool in self.node.pools():
            try:
                return pool.get_volume(name)
            except NotFound:
                continue
        return None

    def _choose_pool(self, parameters: Mapping[str, str], size: int) -> Pool:
        wanted = parameters.get(POOL_PARAMETER, "")
        if wanted:
            try:
                return self._pool(wanted)
            except NotFound as exc:
                raise InvalidArgument(f"parameter pool={wanted!r}: no such pool on this node") from exc
        pools = self.node.pools()
        if not pools:
            raise OutOfCapacity("this node has no storage pool")
        spaces = {p.name: p.space() for p in pools}
        below = [p for p in pools if spaces[p.name].level.rank < fullness.Level.CRITICAL.rank]
        if not below:  # each pool says why, in the words the engine would refuse with
            raise OutOfCapacity("; ".join(f"{s.describe()}: new volumes are refused"
                                          for s in spaces.values()))
        best = max(below, key=lambda p: spaces[p.name].capacity.allocatable)
        if spaces[best.name].capacity.allocatable < size:
            raise OutOfCapacity(f"no pool has room for {size} bytes")
        return best

    def create_volume(self, req: VolumeRequest) -> VolumeInfo:
        if req.requisite and not any(self._serves(s) for s in req.requisite):
            raise OutOfCapacity(f"this driver can only provision on {self.segment}")
        fs = self._fs_type(req)
        copies = replication_labels(req.parameters)
        limits = qos.parse_parameters(req.parameters)  # INVALID_ARGUMENT before anything is made
        trim_schedule = trimming.schedule_labels(req.parameters)
        if trim_schedule and req.block:
            raise InvalidArgument(f"parameter {trimming.SCHEDULE_PARAMETER} is for filesystem "
                                  "volumes; a block volume's user discards for itself")
        name = naming.engine_name(req.name)
        existing = self._find(name)
        if existing is not None:  # a retry: answered without needing the source to still exist
            return self._same_or_conflict(existing, req, fs)
        src_pool: Pool | None = None
        source: Source | None = None
        src_size = 0
        if req.source is not None:
            src_pool, source, src_size = self._source(req.source)
        floor = max(min_size(fs), src_size if not req.required_bytes else 0)
        size = choose_size(req.required_bytes, req.limit_bytes, floor)
        if src_pool is not None:
            wanted = req.parameters.get(POOL_PARAMETER, "")
            if wanted and wanted != src_pool.name:
                raise InvalidArgument(
                    f"source {req.source.id if req.source else ''!r} is in pool {src_pool.name!r}; "
                    f"a clone must stay in its source's pool, not {wanted!r}"
                )
            if size < src_size:
                raise OutOfRange(f"a clone needs at least its source's {src_size} bytes")
            pool = src_pool
        else:
            pool = self._choose_pool(req.parameters, size)
        vol = pool.create_volume(
            name,
            size,
            mode=VolumeMode.BLOCK if req.block else VolumeMode.FILESYSTEM,
            fs=FsType(fs) if fs else None,
            source=source,
            labels={**_labels(req), **copies, **limits.labels(), **trim_schedule},
        )
        log.info("csi volume created volume=%s size=%d", vol.id, vol.size)
        return self._info(vol)

    def _same_or_conflict(self, vol: Volume, req: VolumeRequest, fs: str) -> VolumeInfo:
        """CreateVolume retried: the existing volume if it satisfies the request."""
        info = self._info(vol)
        problems = []
        if vol.size < req.required_bytes or (req.limit_bytes and vol.size > req.limit_bytes):
            problems.append(f"size {vol.size} is outside the requested range")
        if (vol.mode is VolumeMode.BLOCK) != req.block:
            problems.append(f"mode is {vol.mode.value}")
        if not req.block and (vol.fs.value if vol.fs else "") != fs:
            problems.append(f"filesystem is {vol.fs}")
        if info.source != req.source:
            problems.append("content source differs")
        wanted_pool = req.parameters.get(POOL_PARAMETER, "")
        if wanted_pool and wanted_pool != vol.pool:
            problems.append(f"it lives in pool {vol.pool!r}")
        wanted_copies = replication_labels(req.parameters)
        if wanted_copies.get(REPLICAS_KEY, "1") != vol.labels.get(REPLICAS_KEY, "1"):
            problems.append(f"it has {vol.labels.get(REPLICAS_KEY, '1')} copies")
        if problems:
            raise AlreadyExists(f"volume {req.name!r} exists with another spec: {'; '.join(problems)}")
        return info

    # ---- the rest of the controller side ---------------------------------------------------
    def delete_volume(self, volume_id: str) -> None:
        pool, vol = self._volume(volume_id)
        pool.delete_volume(vol.name)

    def get_volume(self, volume_id: str) -> VolumeInfo:
        return self._info(self._volume(volume_id)[1])

    def list_volumes(self) -> Sequence[VolumeInfo]:
        memo: dict[str, fullness.Space] = {}
        infos = [self._info(v, memo) for p in self.node.pools() for v in p.list_volumes()]
        return sorted(infos, key=lambda i: i.volume_id)

    def capacity(self, parameters: Mapping[str, str], segment: Mapping[str, str] | None) -> CapacityInfo:
        if segment is not None and not self._serves(segment):
            return CapacityInfo(available=0, maximum_volume_size=0)
        wanted = parameters.get(POOL_PARAMETER, "")
        pools = [p for p in self.node.pools() if not wanted or p.name == wanted]
        # a pool at or above its critical mark takes no new volume: it offers nothing
        spaces = [p.space() for p in pools]
        best = max((s.capacity.allocatable for s in spaces
                    if s.level.rank < fullness.Level.CRITICAL.rank), default=0)
        best = best // MiB * MiB
        fs = fs_parameter(parameters) or DEFAULT_FS  # the smallest volume of this class
        return CapacityInfo(
            available=best, maximum_volume_size=best, minimum_volume_size=min_size(fs)
        )

    def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> ExpandInfo:
        try:
            pool, vol = self._volume(volume_id)
        except NotFound:
            if not self.config.expand_on_node:
                raise
            return self._defer_expansion(volume_id, required_bytes, limit_bytes)
        if limit_bytes and vol.size > limit_bytes:
            raise OutOfRange(f"volume is already {vol.size} bytes, above limit {limit_bytes}")
        if required_bytes <= vol.size:
            return ExpandInfo(capacity_bytes=vol.size, node_expansion_required=False)
        size = _round_up(required_bytes)
        if limit_bytes and size > limit_bytes:
            raise OutOfRange(f"{size} bytes (whole MiB) exceeds limit {limit_bytes}")
        result = pool.expand(vol.name, size)
        pending = result.grow.value == "at-next-mount"
        return ExpandInfo(capacity_bytes=result.volume.size, node_expansion_required=pending)

    def _defer_expansion(self, volume_id: str, required_bytes: int, limit_bytes: int) -> ExpandInfo:
        """The volume lives on another node: promise the size, let NodeExpandVolume grow it
        there (where the pool's capacity is checked, RESOURCE_EXHAUSTED if it has no room)."""
        naming.split_id(volume_id)  # a malformed id names nothing: still NOT_FOUND
        size = _round_up(required_bytes)
        if limit_bytes and size > limit_bytes:
            raise OutOfRange(f"{size} bytes (whole MiB) exceeds limit {limit_bytes}")
        return ExpandInfo(capacity_bytes=size, node_expansion_required=True)

    def create_snapshot(
        self, source_volume_id: str, name: str, parameters: Mapping[str, str]
    ) -> SnapshotInfo:
        pool, vol = self._volume(source_volume_id)
        snap_name = naming.engine_name(name)
        for other in self.node.pools():
            try:
                found = other.get_snapshot(snap_name)
            except NotFound:
                continue
            if other.name == pool.name and found.source_volume == vol.name:
                return self._snapinfo(found)
            raise AlreadyExists(f"snapshot {name!r} exists for another volume ({found.source_volume})")
        freeze = parameters.get(FREEZE_PARAMETER, "true").lower() not in ("false", "0", "no")
        return self._snapinfo(pool.create_snapshot(vol.name, snap_name, freeze=freeze))

    def delete_snapshot(self, snapshot_id: str) -> None:
        pool, snap = self._snapshot(snapshot_id)
        pool.delete_snapshot(snap.name)

    def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return self._snapinfo(self._snapshot(snapshot_id)[1])

    def list_snapshots(self, source_volume_id: str | None = None) -> Sequence[SnapshotInfo]:
        if source_volume_id is None:
            snaps = [s for p in self.node.pools() for s in p.list_snapshots()]
        else:
            try:
                pool_name, name = naming.split_id(source_volume_id)
                snaps = list(self._pool(pool_name).list_snapshots(name))
            except (NotFound, InvalidArgument):
                snaps = []
        return sorted((self._snapinfo(s) for s in snaps), key=lambda i: i.snapshot_id)

    # ---- node side -----------------------------------------------------------------------
    @property
    def site(self) -> local_node.NodeSite:
        home = self.node.home
        return local_node.NodeSite(roots=self.config.allowed_roots, workdir=home / "csi" / "stage",
                                   conditions=Conditions(home))

    def node_protected(self) -> list[Path]:
        """The home (pool mounts, images, registries, the driver's own mount points) and
        every pool's directory: never a staging or target path."""
        paths = [self.node.home, self.config.home]
        paths += [p.mountpoint for p in self.node.pools()]
        for entry in self.node.registry.load()["pools"].values():
            paths += [Path(s) for s in entry.get("sources", ()) if str(s).startswith("/")]
        return paths

    def node_stage(self, req: StageRequest) -> None:
        pool, vol = self._volume(req.volume_id)
        limits = qos.configured(vol, self.overrides).limits
        if not limits.unlimited and not self.throttle.available:
            raise FailedPrecondition(f"volume {vol.id} has I/O limits ({limits.text()}) and this "
                                     f"node cannot enforce them: {self.throttle.text()}")
        local_node.stage(pool, vol, req, self.site)
        self._throttle(pool, vol.name)

    def node_unstage(self, volume_id: str, staging_path: Path) -> None:
        pool, vol = self._volume(volume_id)
        try:
            local_node.unstage(pool, vol, staging_path, self.site)
        finally:  # also when a failed filesystem was detached and reported
            if vol.device is not None and pool.get_volume(vol.name).device is None:
                # the next volume (or pool) attached as this loop device must not inherit them
                self.throttle.clear(vol.device)

    def node_publish(self, req: PublishRequest) -> None:
        pool, vol = self._volume(req.volume_id)
        local_node.publish(pool, vol, req, self.site)
        self._throttle(pool, vol.name)  # cgroup v1: the users of the volume may have changed

    def node_unpublish(self, volume_id: str, target_path: Path) -> None:
        pool, vol = self._volume(volume_id)
        local_node.unpublish(vol, target_path, self.site)
        self._throttle(pool, vol.name)

    def _throttle(self, pool: Pool, name: str) -> None:
        """Make the attached volume's throttle rules match its configured limits (also when
        it has none: a rule left on its loop device by a crash goes)."""
        vol = pool.get_volume(name)
        if vol.device is not None:
            self.throttle.apply(vol.device, qos.configured(vol, self.overrides).limits)

    def node_stats(self, volume_id: str, volume_path: Path) -> VolumeStats:
        pool, vol = self._volume(volume_id)
        return local_node.stats(vol, volume_path, self.site.conditions, self._space(pool.name))

    def node_expand(self, volume_id: str, volume_path: Path, required_bytes: int) -> int:
        pool, vol = self._volume(volume_id)
        local_node.stats(vol, volume_path, self.site.conditions)  # NotFound unless published/staged there
        # expanding to the current size is a no-op for the device but retries a pending
        # filesystem grow, which is exactly NodeExpandVolume's job
        return pool.expand(vol.name, max(vol.size, _round_up(required_bytes))).volume.size
