"""Group manifests (format §6.4): one object that ties the backups of a StatefulSet's
volumes, taken from one group snapshot, into one restorable unit.

A group manifest names its members' backups (ordinary volume backups, format §6.2) and
records what a restore needs to rebuild the set's claims: the set's name, replicas, first
ordinal, selector labels and claim templates, and for each member its ordinal, template,
claim and backup id. It names no chunk: gc ignores it, and it adds nothing to what a
backup stores.

Ordering (format §7.2): a group manifest is put only after every member's manifest is
stored, so a group that exists names backups that existed when it was written.

A group is one unit for removal (format §9): prune, forget and gc live in
:mod:`statehold.backup.collecting`, which never removes a member a group names without
its group.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from statehold.backup.locks import Lock
from statehold.backup.repository import Repository, manifest_key
from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger("statehold.backup.groups")

FORMAT = "statehold-group"
VERSION = 1
PREFIX = "groups/"


def group_key(group_id: str) -> str:
    return PREFIX + group_id


def new_group_id(created: float, key: str | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>`` (the syntax of a backup id): the group's instant, then 32
    bits of a hash of the caller's stable key (the same key gives the same id, so a retried
    write replaces the same object) or random ones."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
    if key:
        return f"{stamp}-{hashlib.blake2b(key.encode(), digest_size=4).hexdigest()}"
    return f"{stamp}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class ClaimTemplate:
    """What a restore needs of one of the set's ``volumeClaimTemplates``."""

    name: str
    storage_class: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    volume_mode: str = "Filesystem"
    storage: str = ""
    """The template's storage request, as written (``"10Gi"``); empty if none."""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Member:
    ordinal: int
    template: str
    claim: str
    """``<template>-<set>-<ordinal>``: the claim the backup was read from."""
    backup_id: str
    size: int
    volume: str = ""
    """``pool/volume`` on the host that took the backup (informational)."""


@dataclass(frozen=True, slots=True)
class GroupManifest:
    group_id: str
    created: float
    """The group snapshot's instant (unix seconds)."""
    namespace: str
    set_name: str
    replicas: int
    ordinals_start: int
    templates: tuple[ClaimTemplate, ...]
    members: tuple[Member, ...]
    selector: Mapping[str, str] = field(default_factory=dict)
    """The set's ``selector.matchLabels``: its controller puts them on the claims it makes."""
    consistency: str = "crash"
    """``application`` (every hook succeeded) or ``crash`` (no hooks, or one failed with
    onError Continue)."""
    key: str = ""
    host: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    origin: str = ""
    """Who made it (format §6.2's rule): ``schedule/<namespace>/<name>`` for a schedule's,
    ``""`` (absent in the object) for one made by hand or written before the field."""

    def member(self, template: str, ordinal: int) -> Member:
        for m in self.members:
            if m.template == template and m.ordinal == ordinal:
                return m
        raise NotFound(f"group backup {self.group_id} has no member {template}/{ordinal}")

    @property
    def ordinals(self) -> list[int]:
        return sorted({m.ordinal for m in self.members})

    @property
    def backup_ids(self) -> list[str]:
        return [m.backup_id for m in self.members]

    def encode(self) -> bytes:
        doc: dict[str, object] = {
            "format": FORMAT, "version": VERSION, "id": self.group_id, "created": self.created,
            "kind": "statefulset", "key": self.key, "host": self.host,
            "consistency": self.consistency, "labels": dict(self.labels),
            "namespace": self.namespace,
            "statefulSet": {
                "name": self.set_name, "replicas": self.replicas,
                "ordinalsStart": self.ordinals_start, "selector": dict(self.selector),
                "volumeClaimTemplates": [
                    {"name": t.name, "storageClassName": t.storage_class,
                     "accessModes": list(t.access_modes), "volumeMode": t.volume_mode,
                     "storage": t.storage, "labels": dict(t.labels)} for t in self.templates]},
            "members": [{"ordinal": m.ordinal, "template": m.template, "claim": m.claim,
                         "backup": m.backup_id, "size": m.size, "volume": m.volume}
                        for m in self.members],
        }
        if self.origin:  # absent means made by hand, as in group manifests from before
            doc["origin"] = self.origin
        return json.dumps(doc, sort_keys=True).encode()


def decode(data: bytes, key: str) -> GroupManifest:
    """Corrupt if it does not parse; FailedPrecondition if written by a newer format."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise Corrupt(f"{key}: not a group manifest")
        if int(doc["version"]) > VERSION:
            raise FailedPrecondition(f"{key}: group manifest version {doc['version']} is newer "
                                     f"than supported ({VERSION}); upgrade Statehold")
        sts = doc["statefulSet"]
        templates = tuple(ClaimTemplate(
            name=str(t["name"]), storage_class=t.get("storageClassName"),
            access_modes=tuple(str(a) for a in t.get("accessModes") or ("ReadWriteOnce",)),
            volume_mode=str(t.get("volumeMode") or "Filesystem"), storage=str(t.get("storage") or ""),
            labels={str(k): str(v) for k, v in (t.get("labels") or {}).items()})
            for t in sts["volumeClaimTemplates"])
        members = tuple(Member(int(m["ordinal"]), str(m["template"]), str(m["claim"]),
                               str(m["backup"]), int(m["size"]), str(m.get("volume") or ""))
                        for m in doc["members"])
        return GroupManifest(
            group_id=str(doc["id"]), created=float(doc["created"]), namespace=str(doc["namespace"]),
            set_name=str(sts["name"]), replicas=int(sts["replicas"]),
            ordinals_start=int(sts.get("ordinalsStart") or 0), templates=templates,
            members=members, selector={str(k): str(v) for k, v in (sts.get("selector") or {}).items()},
            consistency=str(doc.get("consistency") or "crash"), key=str(doc.get("key") or ""),
            host=str(doc.get("host") or ""),
            labels={str(k): str(v) for k, v in (doc.get("labels") or {}).items()},
            origin=str(doc.get("origin") or ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise Corrupt(f"{key}: group manifest does not parse: {exc}") from exc


def save_group(repo: Repository, group: GroupManifest) -> None:
    """Put the group manifest, after checking that every member's manifest is stored
    (format §7.2): FailedPrecondition naming the first that is not. Under a shared lock, so
    no prune or forget (exclusive) removes a member between the check and the put; Aborted
    while one runs (the caller retries)."""
    if not group.members:
        raise InvalidArgument(f"group {group.group_id} has no members")
    with Lock(repo, "shared"):
        for m in group.members:
            if not repo.store.exists(manifest_key(m.backup_id)):
                raise FailedPrecondition(f"group {group.group_id}: member {m.claim}'s backup "
                                         f"{m.backup_id} is not stored")
        repo.put_blob(group_key(group.group_id), group.encode())
    log.info("group saved id=%s set=%s/%s members=%d", group.group_id, group.namespace,
             group.set_name, len(group.members))


def load_group(repo: Repository, group_id: str) -> GroupManifest:
    key = group_key(group_id)
    try:
        data = repo.get_blob(key)
    except NotFound:
        raise NotFound(f"group backup {group_id} not found in {repo.store.describe()}") from None
    g = decode(data, key)
    if g.group_id != group_id:
        raise Corrupt(f"{key}: names group {g.group_id}")
    return g


def group_ids(repo: Repository) -> list[str]:
    return sorted(i.key.rpartition("/")[2] for i in repo.store.list(PREFIX))


def groups(repo: Repository, *,
           on_error: Callable[[str, Exception], None] | None = None) -> Iterator[GroupManifest]:
    """Every readable group manifest, oldest first; the others go to ``on_error``."""
    for gid in group_ids(repo):
        try:
            yield load_group(repo, gid)
        except (Corrupt, FailedPrecondition, NotFound) as exc:
            if on_error is not None:
                on_error(gid, exc)


def missing_members(repo: Repository, group: GroupManifest) -> list[Member]:
    """Members whose backup is no longer stored (forgotten, or pruned on its own)."""
    return [m for m in group.members if not repo.store.exists(manifest_key(m.backup_id))]
