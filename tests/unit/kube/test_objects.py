"""The checked crossing from raw JSON to the typed claim and volume views."""

from __future__ import annotations

import pytest

from statehold.controller.locate import check_pvc_bound, locate
from statehold.errors import InvalidArgument
from statehold.kube.objects import as_pv, as_pvc


def test_a_pv_is_not_accepted_as_a_claim_nor_a_claim_as_a_pv() -> None:
    with pytest.raises(InvalidArgument):
        as_pvc({"kind": "PersistentVolume", "metadata": {"name": "x"}})
    with pytest.raises(InvalidArgument):
        as_pv({"kind": "PersistentVolumeClaim", "metadata": {"name": "x"}})


def test_typed_views_feed_the_locator_unchanged() -> None:
    pvc = as_pvc({"kind": "PersistentVolumeClaim", "metadata": {"name": "data-0"},
                  "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}})
    pv = as_pv({"kind": "PersistentVolume", "metadata": {"name": "pv-1"},
                "spec": {"capacity": {"storage": "1Gi"},
                         "csi": {"driver": "csi.statehold.io", "volumeHandle": "p/v", "fsType": "xfs"},
                         "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "topology.statehold.io/node", "operator": "In",
                              "values": ["n1"]}]}]}}}})
    assert check_pvc_bound(pvc) == "pv-1"
    loc = locate(pvc, pv)
    assert (loc.node, loc.handle, loc.size) == ("n1", "p/v", 1 << 30)
