"""What the node plugin may read and exec outside the chart: grants the operator keeps, per
namespace, by name (issue #12, after the agents' certificates: ``agent_certs``).

The node plugin (ServiceAccount ``statehold-node``) runs privileged on every node, so a
taken-over node holds its token. The chart therefore gives it no Secret and no exec
anywhere; the operator grants them where, and while, they are needed:

* ``<ns>/statehold-node-secrets`` (Role :data:`SECRETS_ROLE` and a RoleBinding of that
  name to ``statehold-node``): ``get`` on exactly the Secrets the namespace's
  BackupTargets name (``passwordSecretRef``, ``s3.credentialsSecretRef``): the only
  Secrets the node side reads (:mod:`statehold.controller.targets`). Never a
  service-account token, and in the release namespace never the agents' CA or certificate
  Secrets (:func:`grantable`). No name left: the Role and binding are deleted (a Role
  kept with an empty ``resourceNames`` would grant *every* Secret, so it never has one).
* ``<ns>/statehold-node-hooks`` (a RoleBinding of the chart's ClusterRole
  :data:`HOOKS_ROLE`: ``get`` pods, ``get``/``create`` pods/exec): only while a
  StatefulSetBackup with hooks in that namespace is not yet Completed or Failed (the hooks
  run from the node holding the set's volumes). Deleted by the next pass after the last
  one ends. Never in the release namespace, where the operator's pods run.

Each Role and binding carries ownerReferences to the objects it serves (BackupTargets,
StatefulSetBackups; the binding to its Role), so the garbage collector removes it when the
last of them is deleted, even while no operator runs; the operator also revokes on its
own pass (every namespace that has such objects, and every one it granted in since it
started). RBAC escalation prevention holds: the operator may grant ``get`` on a Secret
because it may get it itself, and may bind the hooks ClusterRole because the chart gives
it ``bind`` on that one ClusterRole only (docs/security.md).

Until a grant exists the node side gets 403 and waits for it (``SecretNotGranted``,
``HooksNotGranted``: retried, never a failure). :class:`NodeGrants` serialises its passes
so a namespace's list-and-apply is never interleaved with another's (a pass that saw no
running backup cannot revoke a grant a newer backup was just given).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from statehold.controller.agent_certs import CA_SECRET, NODE_SECRET_PREFIX
from statehold.errors import AlreadyExists, NotFound
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import BACKUP_TARGET, ROLE, ROLE_BINDING, SECRET, STATEFUL_SET_BACKUP

log = logging.getLogger("statehold.operator.node_grants")

NODE_ACCOUNT = "statehold-node"
SECRETS_ROLE = "statehold-node-secrets"
"""Role and RoleBinding (in each namespace with BackupTargets): the Secrets they name."""
HOOKS_ROLE = "statehold-node-hooks"
"""ClusterRole (the chart's) and RoleBinding (in namespaces with hooked backups running)."""
RBAC = "rbac.authorization.k8s.io"
COMPONENT = "app.kubernetes.io/component"
SECRETS_COMPONENT, HOOKS_COMPONENT = "node-secret-access", "node-hook-access"
TOKEN_TYPE = "kubernetes.io/service-account-token"
FINAL = ("Completed", "Failed")


def referenced_secrets(target: Obj) -> list[str]:
    """The Secret names a BackupTarget makes the node side read (targets.target_from)."""
    spec = target.get("spec") or {}
    refs = [spec.get("passwordSecretRef"), (spec.get("s3") or {}).get("credentialsSecretRef")]
    return sorted({str(r["name"]) for r in refs if isinstance(r, dict) and r.get("name")})


def reserved(namespace: str, name: str, node_namespace: str) -> bool:
    """Never granted: the agents' CA Secret (its key issues every identity, the controller's
    included) and the node certificate Secrets, in the release namespace."""
    return namespace == node_namespace and (name == CA_SECRET or name.startswith(NODE_SECRET_PREFIX))


def grantable(kube: Kube, namespace: str, name: str, node_namespace: str) -> bool:
    """Whether the node plugin may be given ``get`` on this Secret: not reserved, and not a
    service-account token (an identity, never a backup credential). A Secret that does
    not exist yet may be named: the node then reads a clear NotFound, and the next pass
    looks at what was created under that name."""
    if reserved(namespace, name, node_namespace):
        return False
    try:
        secret = kube.get(SECRET, name, namespace)
    except NotFound:
        return True
    return secret.get("type") != TOKEN_TYPE


def has_hooks(backup: Obj) -> bool:
    hooks = (backup.get("spec") or {}).get("hooks") or {}
    return bool(hooks.get("pre") or hooks.get("post"))


def needs_exec(backup: Obj) -> bool:
    """A StatefulSetBackup whose hooks may still run: it has hooks, is not being deleted,
    and has not ended."""
    phase = (backup.get("status") or {}).get("phase")
    return (has_hooks(backup) and phase not in FINAL
            and not backup["metadata"].get("deletionTimestamp"))


def owner_refs(owners: Iterable[Obj]) -> list[Obj]:
    """ownerReferences to each object (no controller, no blockOwnerDeletion: the operator
    may not set finalizers on them, and needs not)."""
    return sorted(({"apiVersion": o["apiVersion"], "kind": o["kind"],
                    "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]} for o in owners),
                  key=lambda r: (r["kind"], r["name"], r["uid"]))


def _meta(name: str, namespace: str, component: str, owners: list[Obj]) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": {
        "app.kubernetes.io/managed-by": "statehold", COMPONENT: component}}
    if owners:
        meta["ownerReferences"] = owners
    return meta


def secrets_role(namespace: str, names: Sequence[str], owners: list[Obj]) -> Obj:
    """The Role granting ``get`` on exactly ``names``; no rule at all for no name (an empty
    ``resourceNames`` allows every Secret)."""
    rules = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
              "resourceNames": sorted(set(names))}] if names else []
    return {"apiVersion": f"{RBAC}/v1", "kind": "Role",
            "metadata": _meta(SECRETS_ROLE, namespace, SECRETS_COMPONENT, owners), "rules": rules}


def binding(namespace: str, name: str, role_kind: str, node_namespace: str, component: str,
            owners: list[Obj]) -> Obj:
    """RoleBinding ``name`` of the Role or ClusterRole of that name to the node plugin."""
    return {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
            "metadata": _meta(name, namespace, component, owners),
            "subjects": [{"kind": "ServiceAccount", "name": NODE_ACCOUNT,
                          "namespace": node_namespace}],
            "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": name}}


def _differs(current: Obj, want: Obj, fields: Sequence[str]) -> Obj:
    """The merge patch turning current into want on ``fields`` (top level) and on the
    labels and ownerReferences; empty when equal."""
    patch: Obj = {f: want.get(f) or [] for f in fields if (current.get(f) or []) != (want.get(f) or [])}
    cm, wm = current.get("metadata") or {}, want["metadata"]
    meta: Obj = {}
    if (cm.get("ownerReferences") or []) != (wm.get("ownerReferences") or []):
        meta["ownerReferences"] = wm.get("ownerReferences") or None
    if any((cm.get("labels") or {}).get(k) != v for k, v in wm["labels"].items()):
        meta["labels"] = wm["labels"]
    if meta:
        patch["metadata"] = meta
    return patch


def ensure(kube: Kube, want: Obj) -> tuple[Obj, bool]:
    """Make the Role or RoleBinding ``want`` hold exactly its rules, subjects, roleRef,
    labels and owners (hand edits undone): the stored object, and whether it changed. A
    binding's roleRef cannot change: it is made anew."""
    kind = ROLE if want["kind"] == "Role" else ROLE_BINDING
    name, ns = want["metadata"]["name"], want["metadata"]["namespace"]
    fields = ("rules",) if kind == ROLE else ("subjects",)
    try:
        current = kube.get(kind, name, ns)
    except NotFound:
        try:
            return kube.create(want), True
        except AlreadyExists:  # another pass made it first: correct it below
            current = kube.get(kind, name, ns)
    if kind == ROLE_BINDING and current.get("roleRef") != want["roleRef"]:
        kube.delete(kind, name, ns)
        return kube.create(want), True
    patch = _differs(current, want, fields)
    return (kube.patch(kind, name, patch, ns), True) if patch else (current, False)


def revoke(kube: Kube, kind: Any, name: str, namespace: str) -> bool:
    """Delete a grant; whether there was one."""
    try:
        kube.delete(kind, name, namespace)
    except NotFound:
        return False
    return True


class NodeGrants:
    """The operator's side: :meth:`sync` one namespace (on a change of a BackupTarget or
    StatefulSetBackup there), :meth:`sync_all` on a ticker. ``node_namespace`` is the
    release namespace, where ServiceAccount ``statehold-node`` lives."""

    def __init__(self, kube: Kube, node_namespace: str) -> None:
        self.kube, self.node_namespace = kube, node_namespace
        self._lock = threading.Lock()
        self._granted: set[str] = set()  # namespaces this process left a grant in

    def sync(self, namespace: str) -> list[str]:
        """Make namespace's grants match its BackupTargets and StatefulSetBackups now; what
        changed, one line each."""
        with self._lock:
            return self._sync(namespace, self.kube.list(BACKUP_TARGET, namespace),
                              self.kube.list(STATEFUL_SET_BACKUP, namespace))

    def sync_all(self) -> list[str]:
        """Every namespace with a BackupTarget or StatefulSetBackup, and every one this
        process granted in before (to revoke what is no longer needed)."""
        changed: list[str] = []
        with self._lock:
            targets, backups = self.kube.list(BACKUP_TARGET), self.kube.list(STATEFUL_SET_BACKUP)
            spaces = ({o["metadata"]["namespace"] for o in targets + backups} | self._granted)
            for ns in sorted(spaces):
                changed += self._sync(ns, [t for t in targets if t["metadata"]["namespace"] == ns],
                                      [b for b in backups if b["metadata"]["namespace"] == ns])
        return changed

    def _sync(self, ns: str, targets: list[Obj], backups: list[Obj]) -> list[str]:
        changed: list[str] = []
        names: set[str] = set()
        owners: list[Obj] = []
        for t in targets:
            mine = [n for n in referenced_secrets(t)
                    if grantable(self.kube, ns, n, self.node_namespace)]
            if mine:
                names.update(mine)
                owners.append(t)
        if names:
            role, moved = ensure(self.kube, secrets_role(ns, sorted(names), owner_refs(owners)))
            if moved:
                changed.append(f"{ns}: the node plugin may get Secrets {sorted(names)}")
            if ensure(self.kube, binding(ns, SECRETS_ROLE, "Role", self.node_namespace,
                                         SECRETS_COMPONENT, owner_refs([role])))[1]:
                changed.append(f"{ns}: RoleBinding {SECRETS_ROLE} to {NODE_ACCOUNT}")
        else:  # the binding first: a Role left alone grants nothing
            gone = revoke(self.kube, ROLE_BINDING, SECRETS_ROLE, ns)
            if revoke(self.kube, ROLE, SECRETS_ROLE, ns) or gone:
                changed.append(f"{ns}: the node plugin may get no Secret")
        # never in the release namespace: the operator's pods (and its token) are there
        running = [b for b in backups if needs_exec(b)] if ns != self.node_namespace else []
        if running:
            if ensure(self.kube, binding(ns, HOOKS_ROLE, "ClusterRole", self.node_namespace,
                                         HOOKS_COMPONENT, owner_refs(running)))[1]:
                changed.append(f"{ns}: the node plugin may exec into pods (hooks of "
                               f"{', '.join(sorted(b['metadata']['name'] for b in running))})")
        elif revoke(self.kube, ROLE_BINDING, HOOKS_ROLE, ns):
            changed.append(f"{ns}: the node plugin may exec into no pod (no hooked backup runs)")
        if names or running:
            self._granted.add(ns)
        else:
            self._granted.discard(ns)
        for line in changed:
            log.info("event=node_grant %s", line)
        return changed
