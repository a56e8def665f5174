"""The chart lets the cluster operator reclaim a released replicated PV (controller/
reclaim.py, docs/design/replication.md §8.1): remove the provisioner's finalizer and
delete the PV and its record, with nothing denied; the copies themselves go through the
agents."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.reclaim import FINALIZER
from statehold.controller.replication import replication_pass
from statehold.controller.schemas import validate_custom_resource
from statehold.errors import NotFound
from statehold.kube.kinds import PV, REPLICATED_VOLUME
from statehold.kube.memory import MemoryKube
from tests.unit.controller.replication_fakes import FakeAgents, GiB, node, pool, replicated_pv
from tests.unit.kube.rbac import RbacKube
from tests.unit.kube.test_rbac_agent_certs import RELEASE_NS, rules_in
from tests.unit.kube.validation import render


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = render.render_chart(name="sh", namespace=RELEASE_NS)
    return docs


def test_the_operator_may_reclaim_a_released_replicated_pv(docs: list[dict[str, Any]],
                                                           fake_clock: Any) -> None:
    kube = MemoryKube(now=fake_clock, admit=validate_custom_resource)
    for i in (1, 2):
        node(kube, f"n{i}")
        pool(kube, f"p{i}", f"n{i}", 100 * GiB)
    agents = FakeAgents()
    agents.made_by_create_volume("n1")
    replicated_pv(kube)
    kube.patch(PV, "pvc-1", {"metadata": {"finalizers": [FINALIZER]},
                             "spec": {"persistentVolumeReclaimPolicy": "Delete"}})
    operator = RbacKube(kube, rules_in(docs, "statehold-operator", RELEASE_NS))
    replication_pass(operator, agents, fake_clock)
    agents.replicate()
    replication_pass(operator, agents, fake_clock)
    kube.patch_status(PV, "pvc-1", {"phase": "Released"})
    replication_pass(operator, agents, fake_clock)
    assert operator.denied == []
    assert agents.copies == {}
    for kind in (PV, REPLICATED_VOLUME):
        with pytest.raises(NotFound):
            kube.get(kind, "pvc-1")
