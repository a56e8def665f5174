"""The dashboard's pages and actions on the in-memory API (no browser: see
tests/integration/test_dashboard_browser.py for Chromium)."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from statehold.dashboard.server import CSRF_COOKIE, TOKEN_COOKIE, Dashboard, Request, serving
from statehold.kube.facade import Kube
from statehold.kube.kinds import VOLUME_BACKUP, VOLUME_RESTORE, VOLUME_SNAPSHOT
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS
from tests.unit.dashboard.cluster import OPERATOR, READ_ONLY, populate
from tests.unit.kube.rbac import RbacKube

PAGES = ["/pools", "/volumes", "/snapshots", "/backups", "/schedules", "/restores"]
COOKIES = {CSRF_COOKIE: "c" * 32}


@pytest.fixture
def cluster(memory_kube: MemoryKube) -> MemoryKube:
    return populate(memory_kube)


@pytest.fixture
def dash(cluster: MemoryKube) -> Dashboard:
    users: dict[str, Kube] = {"admin": RbacKube(cluster, OPERATOR),
                              "viewer": RbacKube(cluster, READ_ONLY)}
    return Dashboard.for_cluster(cluster, as_user=lambda token: users[token])


def get(d: Dashboard, path: str, token: str = "", **query: str) -> tuple[int, str]:
    cookies = {**COOKIES, **({TOKEN_COOKIE: token} if token else {})}
    r = d.handle(Request("GET", path, query, {}, cookies))
    return r.status, r.body


def post(d: Dashboard, path: str, token: str, **form: str) -> tuple[int, str]:
    cookies = {**COOKIES, TOKEN_COOKIE: token}
    r = d.handle(Request("POST", path, {}, {"csrf": COOKIES[CSRF_COOKIE], **form}, cookies))
    return r.status, r.body


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_for_an_anonymous_reader(dash: Dashboard, path: str) -> None:
    status, body = get(dash, path)
    assert status == 200
    assert "data-action" not in body


def test_pool_bar_carries_the_pools_numbers(dash: Dashboard) -> None:
    _, body = get(dash, "/pools")
    bar = re.search(r'<div class="bar" data-pool="fast" data-capacity="(\d+)" '
                    r'data-allocated="(\d+)"[^>]*><div class="fill" style="width:([\d.]+)%"', body)
    assert bar is not None
    assert (int(bar[1]), int(bar[2]), float(bar[3])) == (100 << 30, 37 << 30, 37.0)


def test_volumes_backups_schedules_and_restores_show_the_cluster(dash: Dashboard) -> None:
    assert all(w in get(dash, "/volumes")[1] for w in ("pv-data", "10Gi", "n1", "1/1"))
    backups = get(dash, "/backups")[1]
    assert backups.index("data-1") < backups.index("data-2")  # a timeline, oldest first
    assert "TargetUnreachable" in backups and 'class="Failed"' in backups
    assert "2026-01-06T02:00:00Z" in get(dash, "/schedules")[1]
    assert "data-copy" in get(dash, "/restores")[1]
    assert "data-before-upgrade" in get(dash, "/snapshots")[1]


def test_cluster_values_are_escaped(cluster: MemoryKube, dash: Dashboard) -> None:
    cluster.patch_status(VOLUME_SNAPSHOT, "data-before-upgrade",
                         {"restoreSize": "<script>x</script>"}, NS)
    body = get(dash, "/snapshots")[1]
    assert "<script>" not in body and "&lt;script&gt;x&lt;/script&gt;" in body


def test_a_read_only_user_gets_no_action_buttons_and_no_confirmation(dash: Dashboard) -> None:
    assert "data-action" not in get(dash, "/volumes", "viewer")[1]
    assert "data-action" not in get(dash, "/backups", "viewer")[1]
    assert get(dash, "/confirm", "viewer", verb="snapshot", ns=NS, subject="data")[0] == 403


def test_a_user_who_may_create_gets_the_buttons(dash: Dashboard) -> None:
    assert get(dash, "/volumes", "admin")[1].count('data-action="snapshot"') == 2
    assert get(dash, "/volumes", "admin")[1].count('data-action="backup"') == 2
    # restore is offered for the completed backup only
    assert get(dash, "/backups", "admin")[1].count('data-action="restore"') == 1


def test_snapshot_now_asks_then_creates_a_volume_snapshot_as_the_user(
        cluster: MemoryKube, dash: Dashboard) -> None:
    status, body = get(dash, "/confirm", "admin", verb="snapshot", ns=NS, subject="data")
    assert status == 200 and 'name="csrf"' in body
    assert len(cluster.list(VOLUME_SNAPSHOT, NS)) == 1  # asking created nothing
    status, body = post(dash, "/act", "admin", verb="snapshot", ns=NS, subject="data")
    assert status == 200, body
    made = [s for s in cluster.list(VOLUME_SNAPSHOT, NS)
            if s["metadata"]["name"] != "data-before-upgrade"]
    assert [s["spec"]["source"] for s in made] == [{"persistentVolumeClaimName": "data"}]
    assert made[0]["metadata"]["name"] in get(dash, "/snapshots")[1]


def test_back_up_now_and_restore_create_their_resources(cluster: MemoryKube,
                                                        dash: Dashboard) -> None:
    assert post(dash, "/act", "admin", verb="backup", ns=NS, subject="logs", target="t")[0] == 200
    assert [b["spec"] for b in cluster.list(VOLUME_BACKUP, NS, label_selector={
        "statehold.io/pvc": "logs"})] == [{"persistentVolumeClaimName": "logs", "target": "t"}]
    assert post(dash, "/act", "admin", verb="restore", ns=NS, subject="data-1",
                new_claim="data-again")[0] == 200
    assert any(r["spec"]["persistentVolumeClaimName"] == "data-again"
               for r in cluster.list(VOLUME_RESTORE, NS))


def test_an_action_the_api_refuses_creates_nothing(cluster: MemoryKube, dash: Dashboard) -> None:
    status, _ = post(dash, "/act", "viewer", verb="snapshot", ns=NS, subject="data")
    assert status == 403
    assert len(cluster.list(VOLUME_SNAPSHOT, NS)) == 1


def test_a_post_without_the_csrf_cookie_value_is_refused(cluster: MemoryKube,
                                                         dash: Dashboard) -> None:
    r = dash.handle(Request("POST", "/act", {}, {"csrf": "forged", "verb": "snapshot",
                                                 "ns": NS, "subject": "data"},
                            {**COOKIES, TOKEN_COOKIE: "admin"}))
    assert r.status == 403
    assert len(cluster.list(VOLUME_SNAPSHOT, NS)) == 1


def test_served_over_http_on_loopback_with_a_csrf_cookie(dash: Dashboard) -> None:
    with serving(dash) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/pools") as resp:
            assert resp.status == 200
            assert CSRF_COOKIE in resp.headers["Set-Cookie"]
            assert "SameSite=Strict" in resp.headers["Set-Cookie"]
        data = urllib.parse.urlencode({"verb": "snapshot", "ns": NS, "subject": "data"}).encode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/act", data=data)
        assert err.value.code == 403
