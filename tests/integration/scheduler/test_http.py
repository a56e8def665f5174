"""The extender over real HTTP on 127.0.0.1, fed the JSON kube-scheduler sends."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from statehold.errors import Unavailable
from statehold.scheduler.core import GiB
from statehold.scheduler.ledger import Ledger
from statehold.scheduler.objects import memory_view
from statehold.scheduler.server import ExtenderServer
from statehold.scheduler.service import Extender, ExtenderConfig
from statehold.scheduler.view import ClaimInfo, MemoryClusterView
from tests.unit.scheduler import shapes
from tests.unit.scheduler.simulate import Burst, committed

NODES = ["n0", "n1", "n2"]


def objects() -> list[dict[str, Any]]:
    return [
        shapes.storage_class("statehold-local"),
        shapes.pvc("data-pg-0", "20Gi", namespace="db"),
        shapes.pvc("wal-pg-0", "5Gi", namespace="db"),
        shapes.pvc("data-pg-1", "10Gi", namespace="db", volume="pv-1"),
        shapes.pv("pv-1", ["n1", "n2"], primary="n2"),
        shapes.storage_pool("n0-a", "n0", 20 * GiB, 0, ratio=1),
        shapes.storage_pool("n1-a", "n1", 100 * GiB, 10 * GiB, ratio=1),
        shapes.storage_pool("n2-a", "n2", 400 * GiB, 0, ratio=1),
    ]


class Client:
    def __init__(self, server: ExtenderServer) -> None:
        host, port = server.server_address[:2]
        self.conn = http.client.HTTPConnection(str(host), port, timeout=10)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        self.conn.request(method, path, body, headers or {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()

    def post(self, verb: str, body: bytes) -> tuple[int, Any]:
        status, ctype, raw = self.call("POST", f"/{verb}", body)
        assert ctype == "application/json"
        return status, json.loads(raw)

    def close(self) -> None:
        self.conn.close()


def serve(view: MemoryClusterView, **config: Any) -> ExtenderServer:
    ext = Extender(view, ledger=Ledger(), config=ExtenderConfig(sweep_interval=0, **config))
    server = ExtenderServer(("127.0.0.1", 0), ext)
    server.start()
    return server


@pytest.fixture
def server() -> Iterator[ExtenderServer]:
    s = serve(memory_view(objects()))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(server: ExtenderServer) -> Iterator[Client]:
    c = Client(server)
    try:
        yield c
    finally:
        c.close()


def test_filter_and_prioritize_node_names_form(client: Client) -> None:
    pod = shapes.pod("pg-0", ["data-pg-0", "wal-pg-0"], namespace="db")
    status, out = client.post("filter", json.dumps(shapes.args(pod, NODES)).encode())
    assert status == 200
    assert out["NodeNames"] == ["n1", "n2"] and out["Error"] == ""
    assert "the pod's new claims need 25.0GiB in total" in out["FailedAndUnresolvableNodes"]["n0"]
    status, scores = client.post("prioritize", json.dumps(shapes.args(pod, ["n1", "n2"])).encode())
    assert status == 200
    assert scores == [{"Host": "n1", "Score": 7}, {"Host": "n2", "Score": 9}]


def test_filter_nodes_form_answers_with_node_objects(client: Client) -> None:
    pod = shapes.pod("pg-1", ["data-pg-1"], namespace="db")
    status, out = client.post("filter", json.dumps(shapes.args(pod, NODES, full_nodes=True)).encode())
    assert status == 200 and out["NodeNames"] is None
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["n1", "n2"]
    assert out["Nodes"]["items"][0] == shapes.node("n1") | {"metadata": out["Nodes"]["items"][0]["metadata"]}
    assert "whose data is on n1, n2" in out["FailedAndUnresolvableNodes"]["n0"]


def test_primary_copy_scores_ten(client: Client) -> None:
    pod = shapes.pod("pg-1", ["data-pg-1"], namespace="db")
    _, scores = client.post("prioritize", json.dumps(shapes.args(pod, ["n1", "n2"])).encode())
    assert {s["Host"]: s["Score"] for s in scores}["n2"] == 10
    assert {s["Host"]: s["Score"] for s in scores}["n1"] < 10


@pytest.mark.parametrize(("verb", "raw", "status", "fragment"), [
    ("filter", b"{not json", 200, "malformed JSON"),
    ("filter", b"", 200, "malformed JSON"),
    ("filter", b'{"NodeNames": ["n0"]}', 200, "has no Pod"),
    ("filter", b'{"Pod": {"metadata": {"name": "p"}}}', 200, "neither NodeNames nor Nodes"),
    ("prioritize", b"[1, 2", 400, "malformed JSON"),
    ("prioritize", b'{"Pod": 7, "NodeNames": []}', 400, "has no Pod"),
])
def test_bad_input_gets_json_with_reason_never_500(client: Client, verb: str, raw: bytes,
                                                   status: int, fragment: str) -> None:
    got, out = client.post(verb, raw)
    assert got == status
    assert fragment in out["Error"]
    # the connection stays usable
    assert client.call("GET", "/healthz")[0] == 200


def test_unknown_claim_and_node_without_capacity_are_reasons(client: Client) -> None:
    pod = shapes.pod("pg-9", ["ghost"], namespace="db")
    _, out = client.post("filter", json.dumps(shapes.args(pod, ["n0"])).encode())
    assert out["FailedAndUnresolvableNodes"] == {"n0": "persistentvolumeclaim db/ghost not found"}
    pod = shapes.pod("pg-0", ["wal-pg-0"], namespace="db")
    _, out = client.post("filter", json.dumps(shapes.args(pod, ["n0", "n7"])).encode())
    assert out["NodeNames"] == ["n0"]
    assert "no capacity data" in out["FailedAndUnresolvableNodes"]["n7"]


def test_http_edges(client: Client, server: ExtenderServer) -> None:
    status, ctype, raw = client.call("GET", "/healthz")
    assert (status, raw, ctype) == (200, b"ok", "text/plain; charset=utf-8")
    status, _, raw = client.call("GET", "/nope")
    assert status == 404 and "nothing at /nope" in json.loads(raw)["Error"]
    status, _, raw = client.call("POST", "/bind", b"{}")
    assert status == 404 and "use filter or prioritize" in json.loads(raw)["Error"]
    status, _, raw = client.call("PUT", "/filter", b"{}")
    assert status == 405 and "PUT not allowed" in json.loads(raw)["Error"]
    # a urlPrefix with a path works: the last segment is the verb
    pod = json.dumps(shapes.args(shapes.pod("web-0", []), ["n0"])).encode()
    status, _, raw = client.call("POST", "/statehold/scheduler/filter", pod)
    assert status == 200 and json.loads(raw)["NodeNames"] == ["n0"]
    # no Content-Length; a body over the limit (refused before it is read)
    for length, code, fragment in ((None, 411, "Content-Length"), (1 << 30, 413, "larger")):
        c = Client(server)
        try:
            c.conn.putrequest("POST", "/filter")
            if length is not None:
                c.conn.putheader("Content-Length", str(length))
            c.conn.endheaders()
            r = c.conn.getresponse()
            assert r.status == code and fragment in json.loads(r.read())["Error"]
        finally:
            c.close()


def test_metrics_count_requests_and_reservations(client: Client) -> None:
    pod = shapes.pod("pg-0", ["data-pg-0"], namespace="db")
    client.post("filter", json.dumps(shapes.args(pod, NODES)).encode())
    status, ctype, raw = client.call("GET", "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = raw.decode()
    assert 'statehold_extender_requests_total{outcome="ok",verb="filter"} 1.0' in text
    assert "statehold_extender_reservations 1.0" in text
    values = {m.name: m.samples[0].value for m in text_string_to_metric_families(text)
              if m.samples}
    assert values["statehold_extender_reserved_bytes"] == 20 * GiB


def test_extender_fault_fails_open_over_http() -> None:
    class Broken(MemoryClusterView):
        def pools(self):  # type: ignore[override]
            raise Unavailable("StoragePool list failed")

    s = serve(memory_view(objects()))
    s.extender.view = Broken(claims=[ClaimInfo("db", "x", "statehold-local", GiB)],
                             classes=[memory_view(objects()).storage_class("statehold-local")])
    c = Client(s)
    try:
        pod = shapes.pod("pg-0", ["x"], namespace="db")
        status, out = c.post("filter", json.dumps(shapes.args(pod, NODES)).encode())
        assert (status, out["NodeNames"], out["Error"]) == (200, NODES, "")
    finally:
        c.close()
        s.stop()


def _burst_view(pods: int) -> tuple[MemoryClusterView, dict[str, list[ClaimInfo]]]:
    view = memory_view([shapes.storage_class("statehold-local")] + [
        shapes.storage_pool(f"n{i}-a", f"n{i}", 95 * GiB, 0, ratio=1) for i in range(10)])
    claims_of = {}
    for i in range(pods):
        c = ClaimInfo("default", f"data-pg-{i}", "statehold-local", 10 * GiB)
        view.put_claim(c)
        claims_of[f"pg-{i}"] = [c]
    return view, claims_of


def test_burst_of_100_pods_over_http_never_overcommits() -> None:
    view, claims_of = _burst_view(100)
    s = serve(view)
    c = Client(s)
    try:
        burst = Burst(c.post, view, [f"n{i}" for i in range(10)])
        for i in range(100):
            burst.schedule(shapes.pod(f"pg-{i}", [f"data-pg-{i}"]), claims_of[f"pg-{i}"])
        assert max(committed(burst, claims_of).values()) <= 95 * GiB
        assert len(burst.placed) == 90
    finally:
        c.close()
        s.stop()


def test_concurrent_filters_share_the_ledger() -> None:
    """Eight schedulers' worth of filters at once: each node still gets at most 9 pods."""
    view, _ = _burst_view(96)
    s = serve(view)
    names = [f"n{j}" for j in range(10)]
    reserved_on: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        c = Client(s)
        try:
            for i in range(k, 96, 8):
                pod = shapes.pod(f"pg-{i}", [f"data-pg-{i}"], uid=f"u{i}")
                status, _ = c.post("filter", json.dumps(shapes.args(pod, names)).encode())
                assert status == 200
                r = s.extender.ledger.get(f"u{i}")
                if r is not None:
                    reserved_on[f"pg-{i}"] = r.node
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        s.stop()
    assert not errors
    per_node: dict[str, int] = {}
    for node in reserved_on.values():
        per_node[node] = per_node.get(node, 0) + 1
    assert len(reserved_on) == 90 and max(per_node.values()) <= 9
