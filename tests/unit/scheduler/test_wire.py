"""Decoding ExtenderArgs as kube-scheduler sends them, encoding the answers, bad input."""

from __future__ import annotations

import json

import pytest

from statehold.errors import InvalidArgument
from statehold.scheduler import wire
from statehold.scheduler.core import ClaimKey, NodeScore
from statehold.scheduler.server import parse_listen
from tests.unit.scheduler import shapes


def test_decode_node_names_form_with_full_pod() -> None:
    p = shapes.pod("pg-0", ["data-pg-0", "wal-pg-0"], namespace="db", uid="u-1")
    args = wire.decode_args(json.loads(json.dumps(shapes.args(p, ["n1", "n2"]))))
    assert args.node_names == ("n1", "n2")
    assert args.nodes is None
    assert args.pod.key == "u-1"
    assert str(args.pod) == "db/pg-0"
    assert args.pod.claims == (ClaimKey("db", "data-pg-0"), ClaimKey("db", "wal-pg-0"))


def test_decode_nodes_form_keeps_node_objects() -> None:
    p = shapes.pod("pg-0", [])
    args = wire.decode_args(shapes.args(p, ["n1", "n2"], full_nodes=True))
    assert args.node_names == ("n1", "n2")
    assert args.nodes is not None and args.nodes[1]["metadata"]["name"] == "n2"
    out = wire.filter_result(args, ["n2"], unresolvable={"n1": "no copy"})
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["n2"]
    assert out["Nodes"]["items"][0]["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.1"
    assert out["NodeNames"] is None
    assert out["FailedAndUnresolvableNodes"] == {"n1": "no copy"}


def test_keys_match_case_insensitively_like_go() -> None:
    p = shapes.pod("pg-0", ["c"])
    args = wire.decode_args({"pod": p, "nodenames": ["n1"]})
    assert args.node_names == ("n1",)


def test_generic_ephemeral_volume_claim_is_named_pod_dash_volume() -> None:
    p = shapes.pod("web-0", [], ephemeral=("scratch",))
    assert wire.decode_pod(p).claims == (ClaimKey("default", "web-0-scratch"),)


def test_pod_without_uid_is_keyed_by_namespace_and_name() -> None:
    p = shapes.pod("pg-0", [])
    del p["metadata"]["uid"]
    assert wire.decode_pod(p).key == "default/pg-0"


def test_answer_in_node_names_form() -> None:
    args = wire.decode_args(shapes.args(shapes.pod("a-0", []), ["n1", "n2"]))
    out = wire.filter_result(args, ["n1"], unresolvable={"n2": "why"})
    assert out == {"Nodes": None, "NodeNames": ["n1"], "FailedNodes": {"n2": "why"},
                   "FailedAndUnresolvableNodes": {"n2": "why"}, "Error": ""}
    assert wire.priority_list([NodeScore("n1", 10, 0)]) == [{"Host": "n1", "Score": 10}]


def test_refusals_are_in_both_maps_so_every_scheduler_shows_the_reason() -> None:
    """kube-scheduler before 1.21 has no FailedAndUnresolvableNodes: it reads FailedNodes
    only, and a node in neither map gets no reason in the pod's PodScheduled message
    ("0/3 nodes are available: ."). From 1.21 the unresolvable map takes precedence for a
    node in both, so preemption still skips our refusals there."""
    args = wire.decode_args(shapes.args(shapes.pod("a-0", []), ["n1", "n2", "n3"]))
    out = wire.filter_result(args, ["n1"], failed={"n3": "busy"},
                             unresolvable={"n2": "no room", "n3": "no copy"})
    assert out["FailedAndUnresolvableNodes"] == {"n2": "no room", "n3": "no copy"}
    # what a 1.20 scheduler reads: every node that did not pass, with our reason
    assert out["FailedNodes"] == {"n2": "no room", "n3": "no copy"}


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b"[]", "must be a JSON object"),
    (b"{}", "has no Pod"),
    (b'{"Pod": null, "NodeNames": ["n1"]}', "has no Pod"),
    (b'{"Pod": {"metadata": {}}, "NodeNames": ["n1"]}', "no metadata.name"),
    (b'{"Pod": {"metadata": {"name": "x"}}}', "neither NodeNames nor Nodes"),
    (b'{"Pod": {"metadata": {"name": "x"}}, "NodeNames": "n1"}', "list of strings"),
    (b'{"Pod": {"metadata": {"name": "x"}}, "NodeNames": [1]}', "list of strings"),
    (b'{"Pod": {"metadata": {"name": "x"}}, "Nodes": []}', "NodeList object"),
    (b'{"Pod": {"metadata": {"name": "x"}}, "Nodes": {"items": [{}]}}', "no metadata.name"),
    (b'{"Pod": {"metadata": {"name": "x"}, "spec": {"volumes": {}}}, "NodeNames": []}',
     "spec.volumes must be a list"),
    (b'{"Pod": {"metadata": {"name": "x"}, "spec": {"volumes": [{"name": "v", '
     b'"persistentVolumeClaim": {}}]}}, "NodeNames": []}', "has no claimName"),
])
def test_bad_input_is_invalid_argument_with_reason(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        wire.decode_args(wire.loads(body))


@pytest.mark.parametrize(("addr", "expected"), [
    ("127.0.0.1:9251", ("127.0.0.1", 9251)), (":9251", ("0.0.0.0", 9251)),
    ("[::1]:80", ("::1", 80)), ("localhost:0", ("localhost", 0))])
def test_parse_listen(addr: str, expected: tuple[str, int]) -> None:
    assert parse_listen(addr) == expected


@pytest.mark.parametrize("addr", ["9251", "host:", "host:http", "host:70000", ""])
def test_parse_listen_rejects_bad_addresses(addr: str) -> None:
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        parse_listen(addr)
