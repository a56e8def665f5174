"""ApiKube: the facade over the official Kubernetes client (kubeconfig or in-cluster).

Paths are built from :class:`Kind` and sent through the client's ``ApiClient.call_api``
unparsed (``_preload_content=False``): we want the API's JSON as dicts, not generated model
classes. Every client exception is translated once, in :func:`_translated`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import kubernetes
import kubernetes.stream
import urllib3
import websocket

from statehold.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StateholdError,
    Unavailable,
)
from statehold.kube import selectors
from statehold.kube.events import build_event, create_or_count
from statehold.kube.execs import exec_container
from statehold.kube.facade import (
    EXEC_OUTPUT_LIMIT,
    ExecResult,
    Obj,
    ObjList,
    Selector,
    WatchEvent,
)
from statehold.kube.kinds import POD, Kind, kind_of

MERGE_PATCH = "application/merge-patch+json"


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Map client and transport errors into the Statehold error tree."""
    try:
        yield
    except kubernetes.client.ApiException as exc:
        reason, message = "", str(exc.reason)
        with contextlib.suppress(ValueError, TypeError):
            body = json.loads(exc.body or "{}")
            reason, message = body.get("reason", ""), body.get("message", message)
        text = f"{what}: {message}"
        if exc.status == 404:
            raise NotFound(text) from exc
        if exc.status == 409:
            raise (AlreadyExists(text) if reason == "AlreadyExists" else Aborted(text)) from exc
        if exc.status in (400, 422):
            raise InvalidArgument(text) from exc
        if exc.status in (401, 403):
            raise PermissionDenied(text) from exc
        raise Unavailable(f"{text} (HTTP {exc.status})") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise Unavailable(f"{what}: {exc}") from exc


_HANDSHAKE = re.compile(r"Handshake status (\d{3})")
STDOUT, STDERR, ERROR = 1, 2, 3  # the channels of the exec stream


class _Tail:
    """An output stream's last characters, however much the command writes."""

    def __init__(self, limit: int = EXEC_OUTPUT_LIMIT) -> None:
        self.limit, self.text, self.cut = limit, "", 0

    def add(self, data: str) -> None:
        self.text += data
        if len(self.text) > 2 * self.limit:
            self.cut += len(self.text) - self.limit
            self.text = self.text[-self.limit:]

    def value(self) -> str:
        extra = max(0, len(self.text) - self.limit)
        cut = self.cut + extra
        return f"[{cut} characters cut]" + self.text[extra:] if cut else self.text


def _exec_status(raw: str, where: str) -> int:
    """The exit code from the exec stream's error channel (a metav1.Status)."""
    if not raw.strip():
        return 0  # as kubectl: no status is success
    try:
        st = json.loads(raw)
    except ValueError as exc:
        raise Unavailable(f"{where}: unreadable exec status {raw[:200]!r}") from exc
    if st.get("status") == "Success":
        return 0
    for cause in (st.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "1"))
    raise FailedPrecondition(f"{where}: {st.get('message') or st.get('reason') or raw[:200]}")


def _handshake_error(exc: kubernetes.client.ApiException, where: str) -> StateholdError:
    text = str(exc.reason or exc)
    m = _HANDSHAKE.search(text)
    code = int(m.group(1)) if m else 0
    if code == 404:
        return NotFound(f"{where}: {text[:300]}")
    if code in (401, 403):
        return PermissionDenied(f"{where}: {text[:300]}")
    if code == 400:  # the API server refused to reach the container (not running, no host)
        return FailedPrecondition(f"{where}: {text[:300]}")
    return Unavailable(f"{where}: {text[:300]}")


class ApiKube:
    """The real :class:`statehold.kube.facade.Kube`."""

    def __init__(self, api: Any, *, request_timeout: float = 30.0) -> None:
        self._api = api  # kubernetes.client.ApiClient
        self._timeout = request_timeout

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, *, context: str | None = None) -> ApiKube:
        """From a kubeconfig file (None: $KUBECONFIG or ~/.kube/config)."""
        with _translated("load kubeconfig"):
            cfg = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(config_file=path, context=context,
                                               client_configuration=cfg)
        return cls(kubernetes.client.ApiClient(cfg))

    @classmethod
    def in_cluster(cls) -> ApiKube:
        """From the pod's service account."""
        try:
            cfg = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException as exc:
            raise Unavailable(f"not running in a cluster: {exc}") from exc
        return cls(kubernetes.client.ApiClient(cfg))

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> ApiKube:
        """Kubeconfig when given, else in-cluster, else the default kubeconfig."""
        if kubeconfig:
            return cls.from_kubeconfig(kubeconfig)
        try:
            return cls.in_cluster()
        except Unavailable:
            return cls.from_kubeconfig(None)

    @property
    def configuration(self) -> Any:
        """The client's Configuration (host, TLS, token): kopf logs in with the same."""
        return self._api.configuration

    def _call(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
              body: Any = None, content_type: str = "application/json",
              stream: bool = False, timeout: float | None = None) -> Any:
        resp = self._api.call_api(
            path, method, query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout if timeout is not None else self._timeout)
        if stream:
            return resp
        return json.loads(resp.data or b"null")

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        with _translated(f"get {kind.kind} {name}"):
            return dict(self._call("GET", kind.path(namespace, name)))

    def list(self, kind: Kind, namespace: str | None = None, *,
             label_selector: Selector = None) -> ObjList:
        query = []
        if sel := selectors.render(label_selector):
            query.append(("labelSelector", sel))
        with _translated(f"list {kind.plural}"):
            data = self._call("GET", kind.path(namespace), query=query)
        items: ObjList = []
        for item in data.get("items", []):
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
            items.append(item)
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def watch(self, kind: Kind, namespace: str | None = None, *, label_selector: Selector = None,
              resource_version: str | None = None, timeout: float = 60.0) -> Iterator[WatchEvent]:
        query = [("watch", "true"), ("timeoutSeconds", str(max(1, int(timeout))))]
        if sel := selectors.render(label_selector):
            query.append(("labelSelector", sel))
        if resource_version is not None:
            query.append(("resourceVersion", resource_version))
        with _translated(f"watch {kind.plural}"):
            resp = self._call("GET", kind.path(namespace), query=query, stream=True,
                              timeout=timeout + 10)
        try:
            buf = b""
            with _translated(f"watch {kind.plural}"):
                for chunk in resp.stream(4096, decode_content=True):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if not line.strip():
                            continue
                        ev = json.loads(line)
                        if ev.get("type") == "ERROR":
                            status = ev.get("object", {})
                            if status.get("code") == 410:
                                raise Aborted(f"watch {kind.plural}: {status.get('message')}")
                            raise Unavailable(f"watch {kind.plural}: {status.get('message')}")
                        if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            yield WatchEvent(ev["type"], ev["object"])
        finally:
            resp.release_conn()

    def create(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        meta = obj.get("metadata", {})
        with _translated(f"create {kind.kind} {meta.get('name') or meta.get('generateName')}"):
            return dict(self._call("POST", kind.path(meta.get("namespace")), body=obj))

    def replace(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        meta = obj.get("metadata", {})
        if not meta.get("resourceVersion"):
            raise InvalidArgument("replace needs metadata.resourceVersion")
        with _translated(f"replace {kind.kind} {meta.get('name')}"):
            return dict(self._call("PUT", kind.path(meta.get("namespace"), meta["name"]), body=obj))

    def patch(self, kind: Kind, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        with _translated(f"patch {kind.kind} {name}"):
            return dict(self._call("PATCH", kind.path(namespace, name), body=patch,
                                   content_type=MERGE_PATCH))

    def patch_status(self, kind: Kind, name: str, status: Obj,
                     namespace: str | None = None) -> Obj:
        with _translated(f"patch status of {kind.kind} {name}"):
            return dict(self._call("PATCH", kind.path(namespace, name) + "/status",
                                   body={"status": status}, content_type=MERGE_PATCH))

    def replace_status(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        meta = obj.get("metadata", {})
        if not meta.get("resourceVersion"):
            raise InvalidArgument("replace_status needs metadata.resourceVersion")
        with _translated(f"replace status of {kind.kind} {meta.get('name')}"):
            return dict(self._call("PUT", kind.path(meta.get("namespace"), meta["name"]) + "/status",
                                   body=obj))

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> None:
        with _translated(f"delete {kind.kind} {name}"):
            self._call("DELETE", kind.path(namespace, name))

    def record_event(self, involved: Obj, *, type: Literal["Normal", "Warning"], reason: str,
                     message: str, component: str = "statehold") -> Obj:
        ev = build_event(involved, type=type, reason=reason, message=message,
                         component=component, now=datetime.now(UTC))
        return create_or_count(self, ev)

    def exec(self, pod: str, namespace: str, command: Sequence[str], *,
             container: str | None = None, timeout: float = 30.0) -> ExecResult:
        """Through the API server's exec subresource (a WebSocket to the kubelet), the way
        ``kubectl exec`` goes. Each call gets its own ApiClient: the client's stream helper
        swaps the ApiClient's request method while it connects, which would send another
        thread's request through the WebSocket path."""
        where = f"exec in pod {namespace}/{pod}"
        chosen = exec_container(self.get(POD, pod, namespace), container, command, timeout)
        client = kubernetes.client.ApiClient(self._api.configuration)
        try:
            core = kubernetes.client.CoreV1Api(client)
            try:
                ws = kubernetes.stream.stream(
                    core.connect_get_namespaced_pod_exec, pod, namespace, command=list(command),
                    container=chosen, stderr=True, stdin=False, stdout=True, tty=False,
                    _preload_content=False, _request_timeout=min(timeout, self._timeout))
            except kubernetes.client.ApiException as exc:
                raise _handshake_error(exc, where) from exc
            return self._drain(ws, time.monotonic() + timeout, where)
        finally:
            with contextlib.suppress(Exception):
                client.close()

    @staticmethod
    def _drain(ws: Any, deadline: float, where: str) -> ExecResult:
        out, err = _Tail(), _Tail()
        try:
            try:
                while ws.is_open():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    ws.update(timeout=min(left, 1.0))
                    out.add(ws.read_channel(STDOUT))
                    err.add(ws.read_channel(STDERR))
                out.add(ws.read_channel(STDOUT))
                err.add(ws.read_channel(STDERR))
                if ws.is_open():  # still running at the deadline
                    return ExecResult(None, out.value(), err.value())
                code = _exec_status(ws.read_channel(ERROR), where)
            finally:
                ws.close()
        except (OSError, websocket.WebSocketException) as exc:
            raise Unavailable(f"{where}: the stream broke: {exc}") from exc
        return ExecResult(code, out.value(), err.value())

    def may(self, verb: str, kind: Kind, namespace: str | None = None) -> bool:
        attrs: Obj = {"verb": verb, "group": kind.group, "resource": kind.plural}
        if namespace and kind.namespaced:
            attrs["namespace"] = namespace
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attrs}}
        with _translated(f"access review {verb} {kind.plural}"):
            got = self._call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                             body=review)
        return bool((got.get("status") or {}).get("allowed"))

    def with_token(self, token: str) -> ApiKube:
        """The same API server as another identity: a bearer token (the dashboard acts as
        its user, so RBAC and audit see the user, not the operator)."""
        cfg = copy.copy(self._api.configuration)
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        cfg.username = cfg.password = None
        cfg.cert_file = cfg.key_file = None
        cfg.refresh_api_key_hook = None
        return ApiKube(kubernetes.client.ApiClient(cfg), request_timeout=self._timeout)

    def close(self) -> None:
        with contextlib.suppress(StateholdError, OSError):
            self._api.close()
