"""ApiKube's one error mapping, and its behaviour with no server (no cluster needed)."""

from __future__ import annotations

import json

import kubernetes
import pytest

from statehold.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StateholdError,
    Unavailable,
)
from statehold.kube.client import ApiKube, _translated
from statehold.kube.kinds import CONFIG_MAP, PVC, STORAGE_POOL


def api_error(status: int, reason: str = "") -> kubernetes.client.ApiException:
    exc = kubernetes.client.ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "reason": reason, "message": "msg"})
    return exc


@pytest.mark.parametrize(("status", "reason", "error"), [
    (404, "NotFound", NotFound),
    (409, "AlreadyExists", AlreadyExists),
    (409, "Conflict", Aborted),
    (422, "Invalid", InvalidArgument),
    (400, "BadRequest", InvalidArgument),
    (403, "Forbidden", PermissionDenied),
    (500, "InternalError", Unavailable),
])
def test_api_statuses_map_into_the_error_tree(status: int, reason: str,
                                              error: type[StateholdError]) -> None:
    with pytest.raises(error), _translated("op"):
        raise api_error(status, reason)


def test_unreachable_server_is_unavailable() -> None:
    cfg = kubernetes.client.Configuration()
    cfg.host = "http://127.0.0.1:9"
    cfg.retries = False
    kube = ApiKube(kubernetes.client.ApiClient(cfg), request_timeout=2)
    with pytest.raises(Unavailable):
        kube.get(CONFIG_MAP, "x", "default")


def test_paths_follow_the_api_layout() -> None:
    assert PVC.path("ns", "data") == "/api/v1/namespaces/ns/persistentvolumeclaims/data"
    assert STORAGE_POOL.path(None, "p") == "/apis/statehold.io/v1alpha1/storagepools/p"
    assert STORAGE_POOL.path("ignored") == "/apis/statehold.io/v1alpha1/storagepools"
