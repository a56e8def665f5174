"""MemoryKube: an in-memory Kubernetes API with the facade's semantics.

Used by every test that needs a cluster (there is none on a build host) and by other areas'
tests. It keeps what the real server guarantees and our code relies on: resourceVersions
that grow with each write, 409 Conflict (``Aborted``) on stale writes, NotFound and
AlreadyExists, status subresource separation, finalizers delaying deletion, and an ordered
watch stream. An optional ``admit(new, old)`` hook returns the object to store or raises
(InvalidArgument): tests plug in our CRD schemas (defaults, validation, CEL) there.

There is no kubelet: ``exec`` checks the pod as the API server would, then calls the
callable registered with :meth:`MemoryKube.on_exec` (a test's stand-in for the container,
e.g. a local subprocess); without one it is Unavailable, as a cluster whose kubelet cannot
be reached.
"""

from __future__ import annotations

import base64
import copy
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Literal

from statehold.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, Unavailable
from statehold.kube import selectors
from statehold.kube.events import build_event, create_or_count, rfc3339
from statehold.kube.execs import ExecCall, ExecHandler, exec_container
from statehold.kube.facade import EventType, ExecResult, Obj, ObjList, Selector, WatchEvent, tail
from statehold.kube.kinds import EVENT, POD, SECRET, Kind, kind_of
from statehold.kube.merge import merge_patch

Key = tuple[Kind, str, str]  # kind, namespace ("" when cluster-scoped), name


def _spec_part(obj: Obj) -> Obj:
    """What a change of bumps metadata.generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _string_data(kind: Kind, obj: Obj) -> Obj:
    """Secrets: the API server folds ``stringData`` into base64 ``data`` on write."""
    if kind == SECRET and "stringData" in obj:
        data = obj.setdefault("data", {})
        for k, v in obj.pop("stringData").items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    return obj


class MemoryKube:
    """In-memory :class:`statehold.kube.facade.Kube`. Thread-safe."""

    def __init__(self, *, now: Callable[[], datetime] | None = None,
                 admit: Callable[[Obj, Obj | None], Obj] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self._admit = admit
        self._objects: dict[Key, Obj] = {}
        self._log: list[tuple[int, Kind, str, WatchEvent]] = []
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._cond = threading.Condition()
        self._names = itertools.count(1)
        self._exec: ExecHandler | None = None
        self._refused: set[tuple[str, str]] = set()

    # -- helpers ---------------------------------------------------------------------
    def _key(self, kind: Kind, name: str, namespace: str | None) -> Key:
        if kind.namespaced and not namespace:
            raise InvalidArgument(f"{kind.kind} {name!r}: a namespace is required")
        return (kind, (namespace or "") if kind.namespaced else "", name)

    def _get(self, key: Key) -> Obj:
        try:
            return self._objects[key]
        except KeyError:
            ns = f"{key[1]}/" if key[1] else ""
            raise NotFound(f"{key[0].kind} {ns}{key[2]} not found") from None

    def _emit(self, kind: Kind, ns: str, type_: EventType, obj: Obj) -> None:
        self._log.append((self._last_rv, kind, ns, WatchEvent(type_, copy.deepcopy(obj))))
        self._cond.notify_all()

    def _bump(self, obj: Obj) -> None:
        self._last_rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self._last_rv)

    def _check_rv(self, current: Obj, incoming: Obj) -> None:
        rv = (incoming.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            meta = current["metadata"]
            raise Aborted(f"conflict: {current['kind']} {meta['name']} was modified "
                          f"(resourceVersion {rv} is stale, now {meta['resourceVersion']})")

    def _write(self, kind: Kind, key: Key, old: Obj, new: Obj) -> Obj:
        """Store new in place of old (bumping rv/generation) or delete it when its
        deletionTimestamp is set and no finalizers remain."""
        if new == old:
            return copy.deepcopy(old)
        if self._admit is not None:
            new = self._admit(copy.deepcopy(new), copy.deepcopy(old))
        if _spec_part(new) != _spec_part(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._bump(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            del self._objects[key]
            self._emit(kind, key[1], "DELETED", new)
        else:
            self._objects[key] = new
            self._emit(kind, key[1], "MODIFIED", new)
        return copy.deepcopy(new)

    # -- the facade ------------------------------------------------------------------
    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        with self._cond:
            return copy.deepcopy(self._get(self._key(kind, name, namespace)))

    def list(self, kind: Kind, namespace: str | None = None, *,
             label_selector: Selector = None) -> ObjList:
        reqs = selectors.parse(label_selector)
        with self._cond:
            out = [
                copy.deepcopy(o) for (k, ns, _), o in sorted(
                    self._objects.items(), key=lambda kv: (kv[0][1], kv[0][2]))
                if k == kind and (namespace is None or not kind.namespaced or ns == namespace)
                and all(r.matches(o["metadata"].get("labels") or {}) for r in reqs)
            ]
        return out

    def watch(self, kind: Kind, namespace: str | None = None, *, label_selector: Selector = None,
              resource_version: str | None = None, timeout: float = 60.0) -> Iterator[WatchEvent]:
        reqs = selectors.parse(label_selector)

        def wanted(k: Kind, ns: str, obj: Obj) -> bool:
            return (k == kind and (namespace is None or not kind.namespaced or ns == namespace)
                    and all(r.matches(obj["metadata"].get("labels") or {}) for r in reqs))

        with self._cond:
            if resource_version is None:
                start = self._last_rv
                backlog = [WatchEvent("ADDED", copy.deepcopy(o))
                           for (k, ns, _), o in sorted(self._objects.items(),
                                                       key=lambda kv: (kv[0][1], kv[0][2]))
                           if wanted(k, ns, o)]
            else:
                start, backlog = int(resource_version), []
        yield from backlog
        pos = 0
        while True:
            deadline = time.monotonic() + timeout
            with self._cond:
                while True:
                    fresh = [(rv, k, ns, ev) for rv, k, ns, ev in self._log[pos:] if rv > start]
                    pos = len(self._log)
                    fresh = [f for f in fresh if wanted(f[1], f[2], f[3].object)]
                    if fresh:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(left)
            for rv, _, _, ev in fresh:
                start = rv
                yield WatchEvent(ev.type, copy.deepcopy(ev.object))

    def create(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        new = _string_data(kind, copy.deepcopy(obj))
        meta = new.setdefault("metadata", {})
        with self._cond:
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise InvalidArgument(f"{kind.kind}: metadata.name or generateName is required")
                meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
            key = self._key(kind, meta["name"], meta.get("namespace"))
            if not kind.namespaced:
                meta.pop("namespace", None)
            if key in self._objects:
                raise AlreadyExists(f"{kind.kind} {meta['name']} already exists")
            if self._admit is not None:
                new = self._admit(copy.deepcopy(new), None)
                meta = new["metadata"]
            meta.update(uid=str(uuid.uuid4()), generation=1,
                        creationTimestamp=rfc3339(self._now()))
            meta.pop("deletionTimestamp", None)
            if kind.status_subresource:
                new.pop("status", None)
            self._bump(new)
            self._objects[key] = new
            self._emit(kind, key[1], "ADDED", new)
            return copy.deepcopy(new)

    def replace(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        meta = obj.get("metadata") or {}
        with self._cond:
            key = self._key(kind, meta.get("name", ""), meta.get("namespace"))
            old = self._get(key)
            if not meta.get("resourceVersion"):
                raise InvalidArgument("replace needs metadata.resourceVersion")
            self._check_rv(old, obj)
            new = _string_data(kind, copy.deepcopy(obj))
            new["metadata"] = {**copy.deepcopy(old["metadata"]),
                               **{k: v for k, v in new["metadata"].items()
                                  if k in ("labels", "annotations", "finalizers", "ownerReferences")}}
            for k in ("labels", "annotations", "finalizers", "ownerReferences"):
                if k not in obj["metadata"]:
                    new["metadata"].pop(k, None)
            if kind.status_subresource:
                new["status"] = copy.deepcopy(old.get("status"))
                if new["status"] is None:
                    del new["status"]
            return self._write(kind, key, old, new)

    def patch(self, kind: Kind, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        with self._cond:
            key = self._key(kind, name, namespace)
            old = self._get(key)
            self._check_rv(old, patch)
            body = copy.deepcopy(patch)
            if kind.status_subresource:
                body.pop("status", None)
            meta_patch = body.get("metadata") or {}
            for k in ("name", "namespace", "uid", "resourceVersion", "generation",
                      "creationTimestamp", "deletionTimestamp"):
                meta_patch.pop(k, None)
            return self._write(kind, key, old, merge_patch(old, body))

    def patch_status(self, kind: Kind, name: str, status: Obj,
                     namespace: str | None = None) -> Obj:
        with self._cond:
            key = self._key(kind, name, namespace)
            old = self._get(key)
            new = copy.deepcopy(old)
            merged = merge_patch(old.get("status") or {}, status)
            new["status"] = merged
            if not old.get("status") and not merged:
                new.pop("status")
            return self._write(kind, key, old, new)

    def replace_status(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        meta = obj.get("metadata") or {}
        with self._cond:
            key = self._key(kind, meta.get("name", ""), meta.get("namespace"))
            old = self._get(key)
            if not kind.status_subresource:
                raise NotFound(f"{kind.kind} has no status subresource")
            if not meta.get("resourceVersion"):
                raise InvalidArgument("replace_status needs metadata.resourceVersion")
            self._check_rv(old, obj)
            new = copy.deepcopy(old)
            if obj.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = copy.deepcopy(obj["status"])
            return self._write(kind, key, old, new)

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        with self._cond:
            key = self._key(kind, name, namespace)
            old = self._get(key)
            if old["metadata"].get("finalizers"):
                if not old["metadata"].get("deletionTimestamp"):
                    new = copy.deepcopy(old)
                    new["metadata"]["deletionTimestamp"] = rfc3339(self._now())
                    self._bump(new)
                    self._objects[key] = new
                    self._emit(kind, key[1], "MODIFIED", new)
                return
            del self._objects[key]
            gone = copy.deepcopy(old)
            self._bump(gone)
            self._emit(kind, key[1], "DELETED", gone)

    def record_event(self, involved: Obj, *, type: Literal["Normal", "Warning"], reason: str,
                     message: str, component: str = "statehold") -> Obj:
        ev = build_event(involved, type=type, reason=reason, message=message,
                         component=component, now=self._now())
        with self._cond:  # create-or-count is one step for concurrent recorders
            return create_or_count(self, ev)

    def exec(self, pod: str, namespace: str, command: Sequence[str], *,
             container: str | None = None, timeout: float = 30.0) -> ExecResult:
        obj = self.get(POD, pod, namespace)
        chosen = exec_container(obj, container, command, timeout)
        handler = self._exec
        if handler is None:
            raise Unavailable(f"exec in pod {namespace}/{pod}: no kubelet (no exec handler "
                              "registered with on_exec)")
        got = handler(ExecCall(namespace, pod, chosen, tuple(command), timeout))
        return ExecResult(got.exit_code, tail(got.stdout), tail(got.stderr))

    def may(self, verb: str, kind: Kind, namespace: str | None = None) -> bool:
        """Everything is allowed unless :meth:`refuse` said otherwise (no RBAC in memory)."""
        return (verb, kind.plural) not in self._refused

    def refuse(self, verb: str, kind: Kind) -> None:
        """Make :meth:`may` answer False for verb on kind (a test stand-in for RBAC)."""
        self._refused.add((verb, kind.plural))

    def on_exec(self, handler: ExecHandler | None) -> None:
        """What runs the commands of :meth:`exec` (None: nothing can, Unavailable)."""
        self._exec = handler

    def current_resource_version(self) -> str:
        """The resourceVersion of the last write (what a list reports, to watch from)."""
        with self._cond:
            return str(self._last_rv)

    # -- test helpers ----------------------------------------------------------------
    def events_for(self, involved: Obj) -> ObjList:
        """Events recorded about involved, oldest first (a test convenience)."""
        uid = involved["metadata"].get("uid")
        name = involved["metadata"]["name"]
        with self._cond:  # the store keeps insertion (creation) order
            return [copy.deepcopy(e) for (k, _, _), e in self._objects.items()
                    if k == EVENT and e["involvedObject"]["name"] == name
                    and e["involvedObject"].get("uid") == uid
                    and e["involvedObject"]["kind"] == involved["kind"]]

    def dump(self) -> ObjList:
        """Every stored object (a test convenience)."""
        with self._cond:
            return [copy.deepcopy(o) for o in self._objects.values()]
