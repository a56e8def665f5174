"""Putting what the chart ships on a real API server, and acting as its ServiceAccounts.

* :class:`Admin`: raw JSON calls with the admin kubeconfig (the facade knows only the kinds
  Statehold reads and writes; installing needs CRDs and RBAC too).
* :class:`Installation`: objects created for a test (removed at the end, last first) or
  replaced (put back at the end): a cluster that already runs Statehold, as one named by
  ``STATEHOLD_TEST_KUBECONFIG`` may, gets its own objects back.
* :func:`service_account_kubeconfig`: a kubeconfig that authenticates as a ServiceAccount
  with the token the API server's token controller writes into a token Secret.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]

# (apiVersion, kind) -> (API prefix, plural, namespaced): what these tests install
RESOURCES: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): (
        "/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): (
        "/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    ("storage.k8s.io/v1", "StorageClass"): ("/apis/storage.k8s.io/v1", "storageclasses", False),
}
TOKEN_TYPE = "kubernetes.io/service-account-token"


class Admin:
    """Raw calls with the admin kubeconfig; ApiException on any error answer."""

    def __init__(self, kubeconfig: Path) -> None:
        self.configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig),
                                           client_configuration=self.configuration)
        self.client = kubernetes.client.ApiClient(self.configuration)

    @property
    def server(self) -> str:
        return str(self.configuration.host)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.client.call_api(
            path, method, body=body,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
            _request_timeout=60)
        return json.loads(resp.data or b"null")

    @staticmethod
    def path(obj: Obj, *, named: bool = True) -> str:
        prefix, plural, namespaced = RESOURCES[(obj["apiVersion"], obj["kind"])]
        meta = obj["metadata"]
        ns = f"/namespaces/{meta['namespace']}" if namespaced else ""
        return f"{prefix}{ns}/{plural}" + (f"/{meta['name']}" if named else "")

    def get(self, obj: Obj) -> Obj | None:
        try:
            return dict(self.call("GET", self.path(obj)))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, obj: Obj) -> None:
        try:
            self.call("DELETE", self.path(obj))
        except ApiException as exc:
            if exc.status != 404:
                raise

    def close(self) -> None:
        self.client.close()


def at_version(obj: Obj, current: Obj) -> Obj:
    """obj as a replacement of current (its resourceVersion)."""
    return {**obj, "metadata": {**obj["metadata"],
                                "resourceVersion": current["metadata"]["resourceVersion"]}}


class Installation:
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.created: list[Obj] = []
        self.replaced: list[Obj] = []

    def apply(self, obj: Obj) -> Obj:
        """Create obj, or replace the object of that name (and put it back at the end).
        One being deleted (another module's CRD, terminating) is waited for, then made anew."""
        current = self.admin.get(obj)
        deadline = time.monotonic() + 120.0
        while current is not None and current["metadata"].get("deletionTimestamp"):
            if time.monotonic() > deadline:
                raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} still being "
                                     "deleted after 120s")
            time.sleep(0.2)
            current = self.admin.get(obj)
        if current is None:
            made = dict(self.admin.call("POST", self.admin.path(obj, named=False), obj))
            self.created.append(obj)
            return made
        self.replaced.append(current)
        return dict(self.admin.call("PUT", self.admin.path(obj), at_version(obj, current)))

    def crd(self, crd: Obj, timeout: float = 60.0) -> Obj:
        """Apply a CRD and wait until the server serves it (Established)."""
        self.apply(crd)
        deadline = time.monotonic() + timeout
        while True:
            got = self.admin.get(crd) or {}
            conds = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {crd['metadata']['name']} not Established: {conds}")
            time.sleep(0.1)

    def remove(self, timeout: float = 120.0) -> None:
        """Undo, last first, and wait until the CRDs and namespaces made here are gone (a
        CRD is removed after every object of its kind: a module that installs it next must
        not find it still terminating; a namespace after everything in it). Carries on past
        failures and raises the first at the end."""
        errors: list[Exception] = []
        for obj in reversed(self.created):
            try:
                self.admin.delete(obj)
            except ApiException as exc:
                errors.append(exc)
        deadline = time.monotonic() + timeout
        for obj in self.created:
            # a terminating namespace is not gone: a later test's operator (it watches every
            # namespace) still sees what is left in it and is refused when it writes there
            if obj["kind"] not in ("CustomResourceDefinition", "Namespace"):
                continue
            while (left := self.admin.get(obj)) is not None:
                if time.monotonic() > deadline:
                    conds = (left.get("status") or {}).get("conditions") or []
                    errors.append(AssertionError(
                        f"{obj['kind']} {obj['metadata']['name']} still there {timeout:.0f}s "
                        f"after its deletion: {[c.get('message') for c in conds]}"))
                    break
                time.sleep(0.2)
        for old in reversed(self.replaced):
            try:
                now = self.admin.get(old)
                clean = {k: v for k, v in old.items() if k != "status"}
                if now is None:
                    meta = {k: v for k, v in old["metadata"].items()
                            if k not in ("resourceVersion", "uid", "creationTimestamp")}
                    self.admin.call("POST", self.admin.path(old, named=False),
                                    {**clean, "metadata": meta})
                else:
                    self.admin.call("PUT", self.admin.path(old), at_version(clean, now))
            except ApiException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def service_account_token(admin: Admin, namespace: str, account: str,
                          timeout: float = 60.0) -> tuple[str, bytes]:
    """(token, the cluster CA's PEM) of a ServiceAccount. A token Secret annotated with the
    account is filled by the token controller (1.20 also makes one per account by itself;
    1.24 and later no longer do, so ask for one: it works on every version)."""
    secret = {"apiVersion": "v1", "kind": "Secret", "type": TOKEN_TYPE,
              "metadata": {"name": f"{account}-test-token", "namespace": namespace,
                           "annotations": {"kubernetes.io/service-account.name": account}}}
    admin.call("POST", admin.path(secret, named=False), secret)
    deadline = time.monotonic() + timeout
    while True:
        data = (admin.get(secret) or {}).get("data") or {}
        if data.get("token") and data.get("ca.crt"):
            return base64.b64decode(data["token"]).decode(), base64.b64decode(data["ca.crt"])
        if time.monotonic() > deadline:
            raise AssertionError(f"no token for ServiceAccount {namespace}/{account} after "
                                 f"{timeout:.0f}s (is the token controller running?)")
        time.sleep(0.1)


def token_kubeconfig(path: Path, server: str, ca_pem: bytes, token: str, user: str) -> Path:
    """A one-context kubeconfig authenticating with a bearer token (JSON is valid YAML)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": user}}],
    }, indent=1))
    path.chmod(0o600)
    return path
