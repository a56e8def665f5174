"""RbacKube: a facade that allows only what a ServiceAccount's rendered RBAC rules allow.

Handlers run through it in tests, so a missing grant in the chart fails a test instead of
a cluster (and an unused grant is visible in ``used``). A rule with ``resourceNames``
allows a call on one of those names only, as on a real server: never ``create``, ``list``
or ``watch`` (they carry no name), and an access review without a name."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

from statehold.errors import PermissionDenied
from statehold.kube.facade import ExecResult, Kube, Obj, ObjList, Selector, WatchEvent
from statehold.kube.kinds import EVENT, POD, Kind, kind_of


def rules_for(docs: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    """Every rule bound to ServiceAccount ``account`` (ClusterRoles and Roles alike)."""
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("ClusterRole", "Role")}
    rules: list[dict[str, Any]] = []
    for b in docs:
        if b["kind"] in ("ClusterRoleBinding", "RoleBinding") and any(
                s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"]):
            # a binding to a Role the chart does not render (one the operator keeps) grants
            # what that Role holds once made: nothing here
            role = roles.get((b["roleRef"]["kind"], b["roleRef"]["name"])) or {}
            rules += role.get("rules") or []
    return rules


def allows(rule: dict[str, Any], group: str, resource: str, verb: str,
           name: str | None = None) -> bool:
    """Whether one RBAC rule allows verb on resource (and, if it lists names, on name)."""
    if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
        return False
    names = rule.get("resourceNames")
    return not names or (name is not None and name in names)


class RbacKube:
    def __init__(self, inner: Kube, rules: list[dict[str, Any]]) -> None:
        self.inner, self.rules = inner, rules
        self.denied: list[tuple[str, str, str]] = []
        self.used: set[tuple[str, str, str]] = set()

    def _check(self, kind: Kind, verb: str, sub: str = "", name: str | None = None) -> None:
        resource = kind.plural + (f"/{sub}" if sub else "")
        for r in self.rules:
            if allows(r, kind.group, resource, verb, name):
                self.used.add((kind.group, resource, verb))
                return
        self.denied.append((kind.group, resource, verb))
        raise PermissionDenied(f"forbidden: {verb} {kind.group or 'core'}/{resource}")

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        self._check(kind, "get", name=name)
        return self.inner.get(kind, name, namespace)

    def list(self, kind: Kind, namespace: str | None = None, *,
             label_selector: Selector = None) -> ObjList:
        self._check(kind, "list")
        return self.inner.list(kind, namespace, label_selector=label_selector)

    def watch(self, kind: Kind, namespace: str | None = None, *, label_selector: Selector = None,
              resource_version: str | None = None, timeout: float = 60.0) -> Iterator[WatchEvent]:
        self._check(kind, "watch")
        return self.inner.watch(kind, namespace, label_selector=label_selector,
                                resource_version=resource_version, timeout=timeout)

    def create(self, obj: Obj) -> Obj:
        self._check(kind_of(obj), "create")
        return self.inner.create(obj)

    def replace(self, obj: Obj) -> Obj:
        self._check(kind_of(obj), "update", name=obj["metadata"]["name"])
        return self.inner.replace(obj)

    def patch(self, kind: Kind, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        self._check(kind, "patch", name=name)
        return self.inner.patch(kind, name, patch, namespace)

    def patch_status(self, kind: Kind, name: str, status: Obj, namespace: str | None = None) -> Obj:
        self._check(kind, "patch", "status", name)
        return self.inner.patch_status(kind, name, status, namespace)

    def replace_status(self, obj: Obj) -> Obj:
        self._check(kind_of(obj), "update", "status", obj["metadata"]["name"])
        return self.inner.replace_status(obj)

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        self._check(kind, "delete", name=name)
        self.inner.delete(kind, name, namespace)

    def record_event(self, involved: Obj, *, type: Literal["Normal", "Warning"], reason: str,
                     message: str, component: str = "statehold") -> Obj:
        for verb in ("create", "get", "patch"):  # a repeated event is read and its count bumped
            self._check(EVENT, verb)
        return self.inner.record_event(involved, type=type, reason=reason, message=message,
                                       component=component)

    def may(self, verb: str, kind: Kind, namespace: str | None = None) -> bool:
        """An access review of these rules (never refused itself, as on a real server)."""
        return any(allows(r, kind.group, kind.plural, verb) for r in self.rules)

    def exec(self, pod: str, namespace: str, command: Sequence[str], *,
             container: str | None = None, timeout: float = 30.0) -> ExecResult:
        self._check(POD, "get", name=pod)  # the pod is read first (is it running?)
        self._check(POD, "create", "exec", pod)
        return self.inner.exec(pod, namespace, command, container=container, timeout=timeout)
