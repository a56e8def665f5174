"""Backup targets: named places a repository lives (a directory or an S3 bucket prefix),
kept in a small JSON file under the Statehold home. No secrets are stored here: the
repository password and S3 keys come from the caller (environment or files).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.s3store import S3Config, S3Store
from statehold.backup.store import Store
from statehold.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FILE_NAME = "backup-targets.json"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    kind: str
    """'dir' or 's3'."""
    path: str | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    credentials_file: str | None = None

    def url(self) -> str:
        if self.kind == "dir":
            return f"dir://{self.path}"
        return f"s3://{self.bucket}/{self.prefix}" + (f" ({self.endpoint})" if self.endpoint else "")

    def validate(self) -> Target:
        if not _NAME.match(self.name):
            raise InvalidArgument(f"target name {self.name!r} must be a DNS-1123 label")
        if self.kind == "dir":
            if not self.path or not os.path.isabs(self.path):
                raise InvalidArgument("a directory target needs an absolute --path")
        elif self.kind == "s3":
            if not self.bucket:
                raise InvalidArgument("an S3 target needs --s3-bucket")
        else:
            raise InvalidArgument(f"target kind {self.kind!r} is not dir or s3")
        return self


def open_store(t: Target, *, access_key: str | None = None, secret_key: str | None = None,
               create: bool = False) -> Store:
    """The store of a target. S3 keys: explicit ones win, else the target's credentials file."""
    if t.kind == "dir":
        return DirectoryStore(Path(t.path or ""), create=create)
    cfg = S3Config(bucket=t.bucket or "", prefix=t.prefix, endpoint=t.endpoint, region=t.region,
                   access_key=access_key, secret_key=secret_key,
                   credentials_file=Path(t.credentials_file) if t.credentials_file and not access_key
                   else None)
    store = S3Store(cfg)
    if create:
        store.create_bucket()
    return store


class TargetBook:
    """The targets file: read whole, written atomically (temp + rename)."""

    def __init__(self, home: Path) -> None:
        self.path = home / FILE_NAME

    def _load(self) -> dict[str, Target]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {name: Target(**spec) for name, spec in raw.get("targets", {}).items()}
        except (OSError, ValueError, TypeError) as exc:
            raise Corrupt(f"{self.path}: cannot read backup targets: {exc}") from exc

    def all(self) -> list[Target]:
        return sorted(self._load().values(), key=lambda t: t.name)

    def get(self, name: str) -> Target:
        try:
            return self._load()[name]
        except KeyError:
            raise NotFound(f"backup target {name!r} is not defined (statehold target add)") from None

    def add(self, target: Target) -> bool:
        """Save target; False when the same definition already existed. Redefining a name
        is refused: backups and parent snapshots are tied to where the target points."""
        target.validate()
        targets = self._load()
        if targets.get(target.name) == target:
            return False
        if target.name in targets:
            raise AlreadyExists(f"backup target {target.name!r} already points at "
                                f"{targets[target.name].url()}")
        targets[target.name] = target
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"targets": {n: asdict(t) for n, t in sorted(targets.items())}}, indent=1))
        os.replace(tmp, self.path)
        return True
