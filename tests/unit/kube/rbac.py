"""RbacKube: a facade that allows only what a ServiceAccount's rendered RBAC rules allow.

Handlers run through it in tests, so a missing grant in the chart fails a test instead of
a cluster (and an unused grant is visible in ``used``). A rule with ``resourceNames``
allows a call on one of those names only, as on a real server: never ``create``, ``list``
or ``watch`` (they carry no name), and an access review without a name.

Grants the operator keeps at run time (RoleBindings it writes, e.g. the node plugin's
``statehold-node-secrets``: ``statehold.controller.node_grants``) count too when the
RbacKube is given ``kept`` (:func:`kept_rules`): each call in a namespace also looks at the
RoleBindings stored there for the account, as the API server does."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from statehold.errors import NotFound, PermissionDenied
from statehold.kube.facade import ExecResult, Kube, Obj, ObjList, Selector, WatchEvent
from statehold.kube.kinds import EVENT, POD, ROLE, ROLE_BINDING, Kind, kind_of

Kept = Callable[[str], list[dict[str, Any]]]
"""namespace -> the rules RoleBindings stored there give the account."""


def rules_for(docs: list[dict[str, Any]], account: str,
              namespace: str | None = None) -> list[dict[str, Any]]:
    """Every rule bound to ServiceAccount ``account`` (ClusterRoles and Roles alike; with
    ``namespace``, the Roles bound in that namespace only: the rules that hold there)."""
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("ClusterRole", "Role")}
    rules: list[dict[str, Any]] = []
    for b in docs:
        if namespace is not None and b["kind"] == "RoleBinding" and (
                b["metadata"].get("namespace") != namespace):
            continue
        if b["kind"] in ("ClusterRoleBinding", "RoleBinding") and any(
                s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"]):
            # a binding to a Role the chart does not render (one the operator keeps) grants
            # what that Role holds once made: nothing here
            role = roles.get((b["roleRef"]["kind"], b["roleRef"]["name"])) or {}
            rules += role.get("rules") or []
    return rules


def kept_rules(store: Kube, docs: list[dict[str, Any]], account: str,
               account_namespace: str = "statehold-system") -> Kept:
    """What RoleBindings written at run time (read from ``store``, unchecked) give
    ServiceAccount ``account_namespace/account`` in a namespace: their Roles from the
    store, their ClusterRoles from the chart's ``docs``."""
    cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}

    def rules(namespace: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for b in store.list(ROLE_BINDING, namespace):
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                       and s.get("namespace") == account_namespace for s in b.get("subjects") or []):
                continue
            ref = b["roleRef"]
            if ref["kind"] == "ClusterRole":
                role = cluster_roles.get(ref["name"]) or {}
            else:
                try:
                    role = store.get(ROLE, ref["name"], namespace)
                except NotFound:
                    continue
            out += role.get("rules") or []
        return out

    return rules


def allows(rule: dict[str, Any], group: str, resource: str, verb: str,
           name: str | None = None) -> bool:
    """Whether one RBAC rule allows verb on resource (and, if it lists names, on name)."""
    if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
        return False
    names = rule.get("resourceNames")
    return not names or (name is not None and name in names)


class RbacKube:
    def __init__(self, inner: Kube, rules: list[dict[str, Any]], *,
                 kept: Kept | None = None) -> None:
        self.inner, self.rules, self.kept = inner, rules, kept
        self.denied: list[tuple[str, str, str]] = []
        self.used: set[tuple[str, str, str]] = set()

    def _check(self, kind: Kind, verb: str, sub: str = "", name: str | None = None,
               namespace: str | None = None) -> None:
        resource = kind.plural + (f"/{sub}" if sub else "")
        rules = self.rules
        if self.kept is not None and kind.namespaced and namespace:
            rules = rules + self.kept(namespace)
        for r in rules:
            if allows(r, kind.group, resource, verb, name):
                self.used.add((kind.group, resource, verb))
                return
        self.denied.append((kind.group, resource, verb))
        raise PermissionDenied(f"forbidden: {verb} {kind.group or 'core'}/{resource}")

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        self._check(kind, "get", name=name, namespace=namespace)
        return self.inner.get(kind, name, namespace)

    def list(self, kind: Kind, namespace: str | None = None, *,
             label_selector: Selector = None) -> ObjList:
        self._check(kind, "list", namespace=namespace)
        return self.inner.list(kind, namespace, label_selector=label_selector)

    def watch(self, kind: Kind, namespace: str | None = None, *, label_selector: Selector = None,
              resource_version: str | None = None, timeout: float = 60.0) -> Iterator[WatchEvent]:
        self._check(kind, "watch", namespace=namespace)
        return self.inner.watch(kind, namespace, label_selector=label_selector,
                                resource_version=resource_version, timeout=timeout)

    def create(self, obj: Obj) -> Obj:
        self._check(kind_of(obj), "create", namespace=obj["metadata"].get("namespace"))
        return self.inner.create(obj)

    def replace(self, obj: Obj) -> Obj:
        self._check(kind_of(obj), "update", name=obj["metadata"]["name"],
                    namespace=obj["metadata"].get("namespace"))
        return self.inner.replace(obj)

    def patch(self, kind: Kind, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        self._check(kind, "patch", name=name, namespace=namespace)
        return self.inner.patch(kind, name, patch, namespace)

    def patch_status(self, kind: Kind, name: str, status: Obj, namespace: str | None = None) -> Obj:
        self._check(kind, "patch", "status", name, namespace)
        return self.inner.patch_status(kind, name, status, namespace)

    def replace_status(self, obj: Obj) -> Obj:
        self._check(kind_of(obj), "update", "status", obj["metadata"]["name"],
                    obj["metadata"].get("namespace"))
        return self.inner.replace_status(obj)

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        self._check(kind, "delete", name=name, namespace=namespace)
        self.inner.delete(kind, name, namespace)

    def record_event(self, involved: Obj, *, type: Literal["Normal", "Warning"], reason: str,
                     message: str, component: str = "statehold") -> Obj:
        for verb in ("create", "get", "patch"):  # a repeated event is read and its count bumped
            self._check(EVENT, verb)
        return self.inner.record_event(involved, type=type, reason=reason, message=message,
                                       component=component)

    def may(self, verb: str, kind: Kind, namespace: str | None = None) -> bool:
        """An access review of these rules (never refused itself, as on a real server)."""
        rules = self.rules
        if self.kept is not None and kind.namespaced and namespace:
            rules = rules + self.kept(namespace)
        return any(allows(r, kind.group, kind.plural, verb) for r in rules)

    def exec(self, pod: str, namespace: str, command: Sequence[str], *,
             container: str | None = None, timeout: float = 30.0) -> ExecResult:
        self._check(POD, "get", name=pod, namespace=namespace)  # read first (is it running?)
        self._check(POD, "create", "exec", pod, namespace)
        return self.inner.exec(pod, namespace, command, container=container, timeout=timeout)


def as_node_plugin(store: Kube, docs: list[dict[str, Any]],
                   namespace: str = "statehold-system") -> RbacKube:
    """The node plugin's account (``statehold-node``): the chart's rules, and what the
    operator grants it at run time (``node_grants``: Secrets by name, exec for hooks)."""
    return RbacKube(store, rules_for(docs, "statehold-node"),
                    kept=kept_rules(store, docs, "statehold-node", namespace))
