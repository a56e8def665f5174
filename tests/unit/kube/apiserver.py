"""MemoryKube served over HTTP with the Kubernetes REST layout, for clients we did not write
(kopf, the official client) in tests: discovery (/version, /api, /apis, per-version resource
lists), get/list/create/replace/merge-patch/delete, the status subresource, chunked
watch streams, and the pods' exec subresource over a WebSocket (the v4.channel.k8s.io
protocol: channel 1 stdout, 2 stderr, 3 a Status with the exit code), answered by
MemoryKube's exec. Errors are Status objects with the API's codes (404, 409 AlreadyExists
or Conflict, 422 Invalid).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from statehold.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StateholdError,
)
from statehold.kube import kinds
from statehold.kube.kinds import Kind
from statehold.kube.memory import MemoryKube

BY_PLURAL: dict[tuple[str, str], Kind] = {(k.api_version, k.plural): k for k in kinds.ALL}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}


def _resources(api_version: str) -> dict[str, Any]:
    out = []
    for k in kinds.ALL:
        if k.api_version != api_version:
            continue
        out.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                    "kind": k.kind, "verbs": ["create", "delete", "get", "list", "patch",
                                              "update", "watch"]})
        if k.status_subresource:
            out.append({"name": f"{k.plural}/status", "singularName": "", "kind": k.kind,
                        "namespaced": k.namespaced, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "groupVersion": api_version, "resources": out}


def _route(path: str) -> tuple[Kind, str | None, str | None, bool] | None:
    """(kind, namespace, name, status?) of a resource path, None if not one."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        api_version, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces" and (api_version, rest[2]) in BY_PLURAL:
        ns, rest = rest[1], rest[2:]
    if not rest or (api_version, rest[0]) not in BY_PLURAL:
        return None
    kind = BY_PLURAL[(api_version, rest[0])]
    name = rest[1] if len(rest) > 1 else None
    return kind, ns, name, len(rest) > 2 and rest[2] == "status"


SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def allowed(rules: list[dict[str, Any]], kind: Kind, verb: str, status: bool) -> bool:
    resource = kind.plural + ("/status" if status else "")
    return any(kind.group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


class _Handler(BaseHTTPRequestHandler):
    kube: MemoryKube
    tokens: dict[str, list[dict[str, Any]]] | None = None  # bearer token -> RBAC rules
    denied: list[str]
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def _handle(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body = self._body()  # always consumed, so the connection stays usable
        try:
            if self.command == "GET" and self._discovery(url.path):
                return
            if (self.command == "GET" and url.path.endswith("/exec")
                    and (self.headers.get("Upgrade") or "").lower() == "websocket"):
                self._exec(url.path, parse_qs(url.query))
                return
            if self.command == "POST" and url.path == SSAR_PATH:
                self._access_review()
                return
            route = _route(url.path)
            if route is None:
                self._send(404, _status(404, "NotFound", f"no route {url.path}"))
                return
            kind, ns, name, status = route
            if not self._authorized(kind, name, status, query):
                return
            self._resource(kind, ns, name, status, query)
        except NotFound as exc:
            self._send(404, _status(404, "NotFound", str(exc)))
        except AlreadyExists as exc:
            self._send(409, _status(409, "AlreadyExists", str(exc)))
        except Aborted as exc:
            self._send(409, _status(409, "Conflict", str(exc)))
        except InvalidArgument as exc:
            self._send(422, _status(422, "Invalid", str(exc)))
        except StateholdError as exc:
            self._send(500, _status(500, "InternalError", str(exc)))

    def _access_review(self) -> None:
        """A SelfSubjectAccessReview, answered from the caller's token's rules (or, without
        tokens, from MemoryKube.may)."""
        attrs = ((self.body or {}).get("spec") or {}).get("resourceAttributes") or {}
        kind = next((k for k in kinds.ALL if k.group == attrs.get("group", "")
                     and k.plural == attrs.get("resource")), None)
        verb = str(attrs.get("verb", ""))
        if kind is None:
            ok = False
        elif self.tokens is None:
            ok = self.kube.may(verb, kind, attrs.get("namespace"))
        else:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            rules = self.tokens.get(token)
            if rules is None:
                self._send(401, _status(401, "Unauthorized", "unknown token"))
                return
            ok = allowed(rules, kind, verb, False)
        self._send(201, {**(self.body or {}), "status": {"allowed": ok}})

    def _authorized(self, kind: Kind, name: str | None, status: bool, query: dict[str, str]) -> bool:
        """With tokens configured, a request is allowed only by its token's RBAC rules."""
        if self.tokens is None:
            return True
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            self.command) or ("get" if name else "watch" if query.get("watch") in ("true", "1")
                              else "list")
        rules = self.tokens.get(token)
        if rules is None:
            self._send(401, _status(401, "Unauthorized", "unknown token"))
            return False
        if not allowed(rules, kind, verb, status):
            what = f"{token}: {verb} {kind.group or 'core'}/{kind.plural}{'/status' if status else ''}"
            self.denied.append(what)
            self._send(403, _status(403, "Forbidden", what))
            return False
        return True

    def _discovery(self, path: str) -> bool:
        groups = sorted({k.group for k in kinds.ALL if k.group})
        if path == "/version":
            self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-statehold-memory"})
        elif path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif path == "/apis":
            listed = []
            for g in groups:
                versions = sorted({k.version for k in kinds.ALL if k.group == g})
                listed.append({"name": g, "versions": [
                    {"groupVersion": f"{g}/{v}", "version": v} for v in versions],
                    "preferredVersion": {"groupVersion": f"{g}/{versions[0]}",
                                         "version": versions[0]}})
            self._send(200, {"kind": "APIGroupList", "groups": listed})
        elif path == "/api/v1":
            self._send(200, _resources("v1"))
        elif path.startswith("/apis/") and len([p for p in path.split("/") if p]) == 3:
            _, group, version = [p for p in path.split("/") if p]
            self._send(200, _resources(f"{group}/{version}"))
        else:
            return False
        return True

    def _resource(self, kind: Kind, ns: str | None, name: str | None, status: bool,
                  query: dict[str, str]) -> None:
        k = self.kube
        if self.command == "GET" and name is None and query.get("watch") in ("true", "1"):
            self._watch(kind, ns, query)
        elif self.command == "GET" and name is None:
            items = k.list(kind, ns, label_selector=query.get("labelSelector") or None)
            self._send(200, {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                             "metadata": {"resourceVersion": k.current_resource_version()},
                             "items": items})
        elif self.command == "GET" and name is not None:
            self._send(200, k.get(kind, name, ns))
        elif self.command == "POST":
            body = self.body
            if ns and kind.namespaced:
                body.setdefault("metadata", {}).setdefault("namespace", ns)
            self._send(201, k.create(body))
        elif self.command == "PUT" and name is not None and status:
            self._send(200, k.replace_status(self.body))
        elif self.command == "PUT" and name is not None:
            self._send(200, k.replace(self.body))
        elif self.command == "PATCH" and name is not None and "json-patch" in (
                self.headers.get("Content-Type") or ""):
            self._json_patch(kind, ns, name, status)
        elif self.command == "PATCH" and name is not None:
            if "merge-patch" not in (self.headers.get("Content-Type") or ""):
                self._send(415, _status(415, "UnsupportedMediaType", "merge or JSON patches only"))
                return
            body = self.body
            if status:
                self._send(200, k.patch_status(kind, name, body.get("status") or {}, ns))
            else:
                self._send(200, k.patch(kind, name, body, ns))
        elif self.command == "DELETE" and name is not None:
            k.delete(kind, name, ns)
            self._send(200, _status(200, "", "deleted") | {"status": "Success"})
        else:
            self._send(405, _status(405, "MethodNotAllowed", self.command))

    def _json_patch(self, kind: Kind, ns: str | None, name: str, status: bool) -> None:
        """RFC 6902 (test/add/replace/remove), as kopf uses for finalizers: applied to a copy,
        then written with the copy's resourceVersion (a concurrent write is a 409)."""
        obj = self.kube.get(kind, name, ns)
        for op in self.body:
            keys = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
            parent: Any = obj
            for key in keys[:-1]:
                parent = parent[int(key)] if isinstance(parent, list) else parent.setdefault(key, {})
            last = keys[-1]
            if op["op"] == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
                if current != op["value"]:
                    self._send(422, _status(422, "Invalid", f"test failed at {op['path']}"))
                    return
            elif op["op"] in ("add", "replace"):
                if isinstance(parent, list):
                    parent.insert(len(parent) if last == "-" else int(last), op["value"])
                else:
                    parent[last] = op["value"]
            elif op["op"] == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
        if status:
            self._send(200, self.kube.patch_status(kind, name, obj.get("status") or {}, ns))
        else:
            self._send(200, self.kube.replace(obj))

    def _watch(self, kind: Kind, ns: str | None, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        timeout = min(float(query.get("timeoutSeconds", "5")), 5.0)
        try:
            for ev in self.kube.watch(kind, ns, label_selector=query.get("labelSelector") or None,
                                      resource_version=query.get("resourceVersion") or None,
                                      timeout=timeout):
                line = json.dumps({"type": ev.type, "object": ev.object}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- exec over a WebSocket (RFC 6455, server side: unmasked frames) ------------------
    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack(">H", n)
        else:
            head += bytes([127]) + struct.pack(">Q", n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def _exec(self, path: str, query: dict[str, list[str]]) -> None:
        parts = [p for p in path.split("/") if p]  # api v1 namespaces NS pods NAME exec
        ns, pod = parts[3], parts[5]
        if self.tokens is not None:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            rules = self.tokens.get(token) or []
            if not any("" in r["apiGroups"] and "pods/exec" in r["resources"]
                       and "create" in r["verbs"] for r in rules):
                self.denied.append(f"{token}: create core/pods/exec")
                self._send(403, _status(403, "Forbidden", "create pods/exec"))
                return
        try:  # the API server checks the pod before it upgrades the connection
            self.kube.get(kinds.POD, pod, ns)
        except NotFound as exc:
            self._send(404, _status(404, "NotFound", str(exc)))
            return
        key = self.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.close_connection = True
        try:
            got = self.kube.exec(pod, ns, query.get("command") or [],
                                 container=(query.get("container") or [None])[-1],
                                 timeout=3600.0)
            if got.stdout:
                self._frame(0x2, bytes([1]) + got.stdout.encode())
            if got.stderr:
                self._frame(0x2, bytes([2]) + got.stderr.encode())
            if got.exit_code == 0:
                status: dict[str, Any] = {"metadata": {}, "status": "Success"}
            else:
                status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                          "message": f"command terminated with non-zero exit code: "
                                     f"{got.exit_code}",
                          "details": {"causes": [{"reason": "ExitCode",
                                                  "message": str(got.exit_code)}]}}
        except (FailedPrecondition, NotFound) as exc:
            status = {"metadata": {}, "status": "Failure", "reason": "InternalError",
                      "message": str(exc)}
        try:
            self._frame(0x2, bytes([3]) + json.dumps(status).encode())
            self._frame(0x8, struct.pack(">H", 1000))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@contextmanager
def serve(kube: MemoryKube, *, tokens: dict[str, list[dict[str, Any]]] | None = None,
          denied: list[str] | None = None) -> Iterator[str]:
    """Serve kube on 127.0.0.1 (a free port); yields the base URL. With ``tokens``, every
    resource request must carry one of them and is checked against its RBAC rules (refusals
    are appended to ``denied``)."""
    handler = type("Handler", (_Handler,), {"kube": kube, "tokens": tokens,
                                            "denied": denied if denied is not None else []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
