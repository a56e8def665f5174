"""The dashboard in real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): every page loads without console errors, the pool bar matches the pool's
numbers, "snapshot now" makes a snapshot the next page shows, a read-only user gets no
action buttons.

The cluster is a MemoryKube behind the repository's HTTP stand-in of the API server with
bearer tokens and RBAC rules; the dashboard reads with its own token and acts with the
token a user signs in with, as in a cluster. With STATEHOLD_DASHBOARD_SCREENSHOTS=DIR the
page screenshots go to DIR (docs/images is made that way), else to a temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from statehold.dashboard.server import Dashboard, serving
from statehold.kube.client import ApiKube
from statehold.kube.kinds import STORAGE_POOL, VOLUME_SNAPSHOT
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS
from tests.unit.dashboard.cluster import OPERATOR, READ_ONLY, populate
from tests.unit.kube.apiserver import serve

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAGES = {"pools": "/pools", "volumes": "/volumes", "snapshots": "/snapshots",
         "backups": "/backups", "schedules": "/schedules", "restores": "/restores"}
TOKENS = {"dashboard-sa": READ_ONLY, "admin-token": OPERATOR, "viewer-token": READ_ONLY}

# no skip without a browser: `make test` installs chromium and chromium-driver (APT_PACKAGES)
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(memory_kube: MemoryKube) -> MemoryKube:
    return populate(memory_kube)


@pytest.fixture
def dashboard_url(cluster: MemoryKube) -> Iterator[str]:
    with serve(cluster, tokens=TOKENS) as api:
        cfg = kubernetes.client.Configuration()
        cfg.host = api
        cfg.api_key = {"authorization": "dashboard-sa"}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        kube = ApiKube(kubernetes.client.ApiClient(cfg), request_timeout=10)
        with serving(Dashboard.for_cluster(kube, as_user=kube.with_token)) as url:
            yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,800",
                f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("STATEHOLD_DASHBOARD_SCREENSHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def console_errors(driver: webdriver.Chrome) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")  # type: ignore[no-untyped-call]  # selenium: untyped
            if e["level"] == "SEVERE"]


def sign_in(driver: webdriver.Chrome, url: str, token: str) -> None:
    driver.get(url + "/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "volumes")))


def test_every_page_loads_without_console_errors(browser: webdriver.Chrome, dashboard_url: str,
                                                 shots: Path) -> None:
    sign_in(browser, dashboard_url, "admin-token")
    for name, path in PAGES.items():
        browser.get(dashboard_url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text
        assert console_errors(browser) == [], path
        browser.save_screenshot(str(shots / f"dashboard-{name}.png"))


def test_the_pool_bar_matches_the_pools_numbers(browser: webdriver.Chrome, dashboard_url: str,
                                                cluster: MemoryKube) -> None:
    st = cluster.get(STORAGE_POOL, "fast")["status"]
    browser.get(dashboard_url + "/pools")
    bar = browser.find_element(By.CSS_SELECTOR, 'div.bar[data-pool="fast"]')
    fill = bar.find_element(By.CSS_SELECTOR, "div.fill")
    assert (int(bar.get_attribute("data-capacity") or 0),
            int(bar.get_attribute("data-allocated") or 0)) == (st["capacity"], st["allocated"])
    inner = browser.execute_script("return arguments[0].clientWidth", bar)
    drawn = browser.execute_script("return arguments[0].getBoundingClientRect().width", fill)
    assert abs(drawn - inner * st["allocated"] / st["capacity"]) <= 1.0
    assert console_errors(browser) == []


def test_snapshot_now_creates_a_snapshot_the_next_page_shows(
        browser: webdriver.Chrome, dashboard_url: str, cluster: MemoryKube, shots: Path) -> None:
    sign_in(browser, dashboard_url, "admin-token")
    before = {s["metadata"]["name"] for s in cluster.list(VOLUME_SNAPSHOT, NS)}
    row = browser.find_element(By.XPATH, "//table[@id='volumes']//tr[td[2]='data']")
    row.find_element(By.CSS_SELECTOR, 'a[data-action="snapshot"]').click()
    confirm = WebDriverWait(browser, 30).until(
        ec.presence_of_element_located((By.ID, "confirm")))
    browser.save_screenshot(str(shots / "dashboard-confirm.png"))
    assert {s["metadata"]["name"] for s in cluster.list(VOLUME_SNAPSHOT, NS)} == before
    confirm.click()
    done = WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "created")))
    made = {s["metadata"]["name"] for s in cluster.list(VOLUME_SNAPSHOT, NS)} - before
    assert len(made) == 1
    (name,) = made
    assert name in done.text
    browser.get(dashboard_url + "/snapshots")
    names = [td.text for td in browser.find_elements(
        By.XPATH, "//table[@id='snapshots']//tr/td[2]")]
    assert name in names
    assert console_errors(browser) == []


def test_a_read_only_user_gets_no_action_buttons(browser: webdriver.Chrome,
                                                 dashboard_url: str) -> None:
    sign_in(browser, dashboard_url, "viewer-token")
    for path in ("/volumes", "/backups"):
        browser.get(dashboard_url + path)
        assert browser.find_elements(By.CSS_SELECTOR, "a.action") == []
    # the admin sees them on the same pages: the difference is the identity
    sign_in(browser, dashboard_url, "admin-token")
    assert browser.find_elements(By.CSS_SELECTOR, "a.action")

