"""ApiKube on the wire: the requests it sends (method, path, query, content type) and how it
reads answers, against a local HTTP endpoint that answers like the API server does for
these calls. The behavioural contract runs against a real server in test_facade_contract.py
when STATEHOLD_TEST_KUBECONFIG is set."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes
import pytest

from statehold.errors import Aborted, AlreadyExists, NotFound
from statehold.kube.client import ApiKube
from statehold.kube.kinds import CONFIG_MAP, PVC, STORAGE_POOL

CM = {"apiVersion": "v1", "kind": "ConfigMap",
      "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7"}, "data": {"k": "v"}}


class Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []
    answers: dict[tuple[str, str], tuple[int, Any]] = {}

    def _answer(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        Recorder.seen.append({"method": self.command, "path": url.path,
                              "query": parse_qs(url.query), "body": body,
                              "content_type": self.headers.get("Content-Type")})
        status, payload = Recorder.answers.get((self.command, url.path), (404, {
            "kind": "Status", "reason": "NotFound", "message": f"{url.path} not found"}))
        if isinstance(payload, list):  # a watch stream: one JSON event per line
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            for ev in payload:
                self.wfile.write(json.dumps(ev).encode() + b"\n")
            return
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[ApiKube]:
    Recorder.seen, Recorder.answers = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = kubernetes.client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield ApiKube(kubernetes.client.ApiClient(cfg), request_timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_get_and_list_use_the_api_paths_and_label_selector(api: ApiKube) -> None:
    Recorder.answers[("GET", "/api/v1/namespaces/ns/configmaps/a")] = (200, CM)
    Recorder.answers[("GET", "/apis/statehold.io/v1alpha1/storagepools")] = (200, {
        "items": [{"metadata": {"name": "b"}}, {"metadata": {"name": "a"}}]})
    assert api.get(CONFIG_MAP, "a", "ns")["data"] == {"k": "v"}
    pools = api.list(STORAGE_POOL, label_selector={"tier": "fast", "app": "db"})
    assert [p["metadata"]["name"] for p in pools] == ["a", "b"]
    assert pools[0]["kind"] == "StoragePool"
    assert Recorder.seen[-1]["query"]["labelSelector"] == ["app=db,tier=fast"]


def test_patches_are_merge_patches_and_status_goes_to_the_subresource(api: ApiKube) -> None:
    Recorder.answers[("PATCH", "/api/v1/namespaces/ns/persistentvolumeclaims/d")] = (200, CM)
    Recorder.answers[("PATCH", "/api/v1/namespaces/ns/persistentvolumeclaims/d/status")] = (200, CM)
    api.patch(PVC, "d", {"metadata": {"labels": {"x": "1"}}}, "ns")
    api.patch_status(PVC, "d", {"phase": "Bound"}, "ns")
    first, second = Recorder.seen[-2:]
    assert first["content_type"] == second["content_type"] == "application/merge-patch+json"
    assert second["body"] == {"status": {"phase": "Bound"}}


def test_api_errors_map_to_the_error_tree(api: ApiKube) -> None:
    Recorder.answers[("POST", "/api/v1/namespaces/ns/configmaps")] = (409, {
        "kind": "Status", "reason": "AlreadyExists", "message": "exists"})
    Recorder.answers[("PUT", "/api/v1/namespaces/ns/configmaps/a")] = (409, {
        "kind": "Status", "reason": "Conflict", "message": "the object has been modified"})
    with pytest.raises(AlreadyExists):
        api.create(CM)
    with pytest.raises(Aborted):
        api.replace(CM)
    with pytest.raises(NotFound):
        api.delete(CONFIG_MAP, "zz", "ns")


def test_watch_reads_events_line_by_line_and_maps_expiry(api: ApiKube) -> None:
    path = "/api/v1/namespaces/ns/configmaps"
    Recorder.answers[("GET", path)] = (200, [
        {"type": "ADDED", "object": CM}, {"type": "BOOKMARK", "object": {}},
        {"type": "DELETED", "object": CM}])
    events = [(e.type, e.object["metadata"]["name"]) for e in api.watch(
        CONFIG_MAP, "ns", resource_version="5", timeout=2)]
    assert events == [("ADDED", "a"), ("DELETED", "a")]
    assert Recorder.seen[-1]["query"]["watch"] == ["true"]
    assert Recorder.seen[-1]["query"]["resourceVersion"] == ["5"]
    Recorder.answers[("GET", path)] = (200, [
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}])
    with pytest.raises(Aborted, match="too old"):
        list(api.watch(CONFIG_MAP, "ns", resource_version="1", timeout=2))
