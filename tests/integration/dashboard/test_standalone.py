"""The standalone dashboard over a real engine pool (XFS on a sparse image): the same pages,
the pool bar from the pool's own capacity, "snapshot now" as an engine snapshot for the
holder of the action token only."""

from __future__ import annotations

import re

import pytest

from statehold.dashboard.server import CSRF_COOKIE, TOKEN_COOKIE, Dashboard, Request
from statehold.dashboard.sources import EngineSource
from statehold.engine.node import Node
from statehold.engine.pool import Pool

pytestmark = pytest.mark.root
MiB = 1 << 20
COOKIES = {CSRF_COOKIE: "c" * 32}


@pytest.fixture
def dash(node: Node, pool: Pool) -> Dashboard:
    pool.create_volume("db", 64 * MiB)
    return Dashboard(EngineSource(node, action_token="secret-token"))


def get(d: Dashboard, path: str, token: str = "", **query: str) -> tuple[int, str]:
    r = d.handle(Request("GET", path, query, {}, {**COOKIES, TOKEN_COOKIE: token}))
    return r.status, r.body


def test_every_page_renders_over_the_home(dash: Dashboard) -> None:
    for path in ("/pools", "/volumes", "/snapshots", "/backups", "/schedules", "/restores"):
        status, body = get(dash, path)
        assert status == 200, path
        assert "data-action" not in body


def test_the_pool_bar_is_the_pools_capacity(dash: Dashboard, pool: Pool) -> None:
    cap = pool.capacity()
    bar = re.search(r'data-pool="test" data-capacity="(\d+)" data-allocated="(\d+)"',
                    get(dash, "/pools")[1])
    assert bar is not None
    assert int(bar[1]) == cap.total
    assert "test/db" in get(dash, "/volumes")[1]


def test_snapshot_now_needs_the_action_token_and_makes_an_engine_snapshot(
        dash: Dashboard, pool: Pool) -> None:
    assert "data-action" not in get(dash, "/volumes", "wrong")[1]
    assert 'data-action="snapshot"' in get(dash, "/volumes", "secret-token")[1]
    assert 'data-action="backup"' not in get(dash, "/volumes", "secret-token")[1]
    form = {"csrf": COOKIES[CSRF_COOKIE], "verb": "snapshot", "ns": "test", "subject": "db"}
    refused = dash.handle(Request("POST", "/act", {}, form, {**COOKIES, TOKEN_COOKIE: "wrong"}))
    assert refused.status == 403 and pool.list_snapshots() == []
    done = dash.handle(Request("POST", "/act", {}, form,
                               {**COOKIES, TOKEN_COOKIE: "secret-token"}))
    assert done.status == 200, done.body
    (snap,) = pool.list_snapshots()
    assert snap.source_volume == "db"
    assert snap.name in get(dash, "/snapshots")[1]
