"""The chart lets the node agents read the ReplicatedVolume records (their own fencing at
start, docs/design/replication.md §8.4) and write none; ``statehold agent serve`` reads them
by default when it reads its certificate from the API (``--certs-secret-namespace``)."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.agent.fencing import kube_records
from statehold.errors import PermissionDenied
from statehold.kube.kinds import REPLICATED_VOLUME
from statehold.kube.memory import MemoryKube
from tests.unit.kube.rbac import RbacKube
from tests.unit.kube.test_rbac_agent_certs import RELEASE_NS, rules_in
from tests.unit.kube.validation import render


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = render.render_chart(name="sh", namespace=RELEASE_NS)
    return docs


def test_the_agents_read_the_records_and_change_none(docs: list[dict[str, Any]]) -> None:
    kube = MemoryKube()
    rv = kube.create({"apiVersion": REPLICATED_VOLUME.api_version, "kind": "ReplicatedVolume",
                      "metadata": {"name": "pv-1"},
                      "spec": {"volumeHandle": "fast/pv-1", "replicas": 2, "size": 1}})
    kube.replace_status({**rv, "status": {"epoch": 3, "primary": "n2"}})
    agent = RbacKube(kube, rules_in(docs, "statehold-agent", RELEASE_NS))
    (record,) = kube_records(agent)()
    assert (record.volume, record.epoch, record.primary) == ("fast/pv-1", 3, "n2")
    assert agent.denied == []
    with pytest.raises(PermissionDenied):
        agent.patch(REPLICATED_VOLUME, "pv-1", {"spec": {"promote": {"node": "n1"}}})
    with pytest.raises(PermissionDenied):
        agent.replace_status({**rv, "status": {"epoch": 4, "primary": "n1"}})


def test_without_agents_no_record_reader_is_rendered() -> None:
    docs = render.render_chart({"agent": {"enabled": False}}, name="sh", namespace=RELEASE_NS)
    assert not [d for d in docs if d["metadata"]["name"] == "statehold-agent-records"]
