"""Routing: StorageClass ``type`` picks the backend for new volumes, the id prefix after."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.csi.backend import BackendConfig
from statehold.csi.router import Router, load_shared
from statehold.errors import InvalidArgument


class Stand:
    def __init__(self, kind: str) -> None:
        self.kind = kind


def test_routes_by_type_parameter_and_id_prefix() -> None:
    local, shared = Stand("local"), Stand("shared")
    r = Router(local, shared)  # type: ignore[arg-type]
    assert r.for_parameters({}) is local
    assert r.for_parameters({"type": "local"}) is local
    assert r.for_parameters({"type": "shared"}) is shared
    assert r.for_id("fast/pvc-1") is local
    assert r.for_id("shared/root/pvc-1") is shared
    assert r.backends() == [local, shared]


def test_unknown_type_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        Router(Stand("local")).for_parameters({"type": "nfs"})  # type: ignore[arg-type]


def test_without_shared_backend_shared_requests_are_invalid_argument() -> None:
    r = Router(Stand("local"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        r.for_parameters({"type": "shared"})
    with pytest.raises(InvalidArgument):
        r.for_id("shared/x/y")
    assert len(r.backends()) == 1


def test_load_shared_never_raises(tmp_path: Path) -> None:
    backend = load_shared(BackendConfig(home=tmp_path, node_id="n1"))
    assert backend is None or backend.kind == "shared"
