"""What the node learned about a volume that the kernel will not say twice: its filesystem
failed (shut down, corrupt) when it was last unmounted.

NodeUnstageVolume finds it in the kernel log at the moment of the unmount; after that the
filesystem is no longer mounted and the log moves on. So the finding is written down, one
JSON file per volume under the driver's home (``<home>/csi/conditions/<pool>/<name>.json``,
written atomically; it survives a restart and a reboot), and it makes

* the volume condition abnormal, with the finding as its message (NodeGetVolumeStats,
  ControllerGetVolume, ListVolumes);
* NodeStageVolume and a retried NodeUnstageVolume answer FAILED_PRECONDITION,

until the filesystem's own read-only checker passes on it (the volume was repaired): then the
record is removed. A record names the volume's creation time, so a new volume that reuses a
deleted one's name never inherits its condition.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from statehold.engine.types import Volume

SUBDIR = Path("csi") / "conditions"


@dataclass(frozen=True, slots=True)
class Damage:
    volume_id: str
    created_at: float       # the volume's, to tell it from a later volume of the same name
    message: str            # what the kernel and the checker said, for the CO and the admin
    staging_path: str       # where it was staged when it failed (NodeGetVolumeStats answers there)
    found_at: float


class Conditions:
    """The records of one driver home."""

    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / SUBDIR

    def _file(self, vol: Volume) -> Path:
        return self.dir / vol.pool / f"{vol.name}.json"

    def get(self, vol: Volume) -> Damage | None:
        try:
            raw = json.loads(self._file(vol).read_text())
            damage = Damage(**raw)
        except (OSError, ValueError, TypeError):
            return None
        return damage if damage.created_at == vol.created_at else None

    def put(self, vol: Volume, message: str, staging_path: str) -> Damage:
        damage = Damage(vol.id, vol.created_at, message, staging_path, time.time())
        path = self._file(vol)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(damage), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return damage

    def clear(self, vol: Volume) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(vol).unlink()
