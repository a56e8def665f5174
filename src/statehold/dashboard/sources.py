"""Where the dashboard's rows come from, and who may act: a cluster or this host's engine.

:class:`ClusterSource` reads through the Kube facade with the dashboard's identity and acts
with the visitor's bearer token (``as_user``), so the API server's RBAC and audit apply.
:class:`EngineSource` is the standalone mode: the pools, volumes and snapshots of a home
(``statehold`` without Kubernetes). It is read-only unless started with an action token;
then "snapshot now" (the one action that needs no backup password) takes an engine
snapshot for a visitor who signs in with that token. Pages render either the same way.
"""

from __future__ import annotations

import hmac
import socket
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from statehold.dashboard import views
from statehold.dashboard.actions import Action, allowed_verbs, perform
from statehold.errors import InvalidArgument, PermissionDenied, StateholdError
from statehold.kube.facade import Kube

if TYPE_CHECKING:
    from collections.abc import Callable

    from statehold.engine.node import Node


class Source(Protocol):
    """What the server needs; every method may raise StateholdError (shown as an error)."""

    label: str  # "cluster" or "standalone", shown in the page header

    def pools(self) -> list[views.PoolRow]: ...
    def volumes(self) -> list[views.VolumeRow]: ...
    def snapshots(self) -> list[views.SnapshotRow]: ...
    def backups(self) -> list[views.Timeline]: ...
    def schedules(self) -> list[views.ScheduleRow]: ...
    def restores(self) -> list[views.RestoreRow]: ...
    def targets(self, namespace: str) -> list[str]: ...

    def allowed(self, token: str, namespaces: set[str]) -> dict[str, set[str]]:
        """The actions token's holder may take, per namespace (empty: read-only)."""
        ...

    def perform(self, token: str, action: Action) -> tuple[str, str]:
        """Do action as token's holder; (kind, name) of what was made."""
        ...


class ClusterSource:
    label = "cluster"

    USERS_KEPT = 32  # clients kept for recent tokens (each holds a connection pool)

    def __init__(self, kube: Kube, as_user: Callable[[str], Kube] | None = None) -> None:
        self.kube, self._as_user = kube, as_user
        self._users: dict[str, Kube] = {}
        self._users_lock = threading.Lock()

    def _user(self, token: str) -> Kube | None:
        """The Kube acting as token's holder, reused across requests (None: no token)."""
        if not token or self._as_user is None:
            return None
        with self._users_lock:
            user = self._users.pop(token, None) or self._as_user(token)
            self._users[token] = user  # most recent last
            while len(self._users) > self.USERS_KEPT:
                self._users.pop(next(iter(self._users)))
            return user

    def pools(self) -> list[views.PoolRow]:
        return views.pools(self.kube)

    def volumes(self) -> list[views.VolumeRow]:
        return views.volumes(self.kube)

    def snapshots(self) -> list[views.SnapshotRow]:
        return views.snapshots(self.kube)

    def backups(self) -> list[views.Timeline]:
        return views.backups(self.kube)

    def schedules(self) -> list[views.ScheduleRow]:
        return views.schedules(self.kube)

    def restores(self) -> list[views.RestoreRow]:
        return views.restores(self.kube)

    def targets(self, namespace: str) -> list[str]:
        return views.targets(self.kube, namespace)

    def allowed(self, token: str, namespaces: set[str]) -> dict[str, set[str]]:
        user = self._user(token)
        if user is None:
            return {}
        try:
            return {ns: allowed_verbs(user, ns) for ns in namespaces if ns}
        except StateholdError:  # an unknown or expired token: read-only
            return {}

    def perform(self, token: str, action: Action) -> tuple[str, str]:
        user = self._user(token)
        if user is None:
            raise PermissionDenied("sign in to act")
        made = perform(user, action)
        return str(made["kind"]), str(made["metadata"]["name"])


class EngineSource:
    """This host's home, as the standalone mode's pages. Calls into the engine are
    serialized (one Node, many request threads)."""

    label = "standalone"

    def __init__(self, node: Node, *, action_token: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.node, self.action_token, self.clock = node, action_token, clock
        self.host = socket.gethostname()
        self._lock = threading.Lock()

    def pools(self) -> list[views.PoolRow]:
        rows = []
        with self._lock:
            self.node.refresh()
            for p in self.node.pools():
                cap = p.capacity()
                rows.append(views.PoolRow(p.name, self.host, "Ready", cap.total, cap.used,
                                          cap.provisioned, cap.free, len(p.list_volumes())))
        return rows

    def volumes(self) -> list[views.VolumeRow]:
        rows = []
        with self._lock:
            for p in self.node.pools():
                for v in p.list_volumes():
                    state = "Mounted" if v.mounts else "Attached" if v.device else "Detached"
                    rows.append(views.VolumeRow(p.name, v.name, v.id, self.host,
                                                f"{v.size >> 20}Mi", state, "1/1"))
        return rows

    def snapshots(self) -> list[views.SnapshotRow]:
        rows = []
        with self._lock:
            for p in self.node.pools():
                for s in p.list_snapshots():
                    rows.append(views.SnapshotRow(
                        p.name, s.name, s.source_volume, s.ready, f"{s.size >> 20}Mi",
                        datetime.fromtimestamp(s.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
        return rows

    # backups, schedules and restores of the standalone mode live in backup targets that
    # need the repository password: not shown here (``statehold backup get``)
    def backups(self) -> list[views.Timeline]:
        return []

    def schedules(self) -> list[views.ScheduleRow]:
        return []

    def restores(self) -> list[views.RestoreRow]:
        return []

    def targets(self, namespace: str) -> list[str]:
        return []

    def _may(self, token: str) -> bool:
        return bool(self.action_token and token
                    and hmac.compare_digest(token.encode(), self.action_token.encode()))

    def allowed(self, token: str, namespaces: set[str]) -> dict[str, set[str]]:
        return {ns: {"snapshot"} for ns in namespaces if ns} if self._may(token) else {}

    def perform(self, token: str, action: Action) -> tuple[str, str]:
        if not self._may(token):
            raise PermissionDenied("this dashboard is read-only, or the token is wrong")
        if action.verb != "snapshot":
            raise InvalidArgument(f"the standalone dashboard cannot {action.verb}")
        name = f"{action.subject}-now-{self.clock().strftime('%Y%m%d%H%M%S')}"
        with self._lock:
            snap = self.node.pool(action.namespace).create_snapshot(action.subject, name)
        return "Snapshot", snap.name
