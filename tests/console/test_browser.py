"""The console in a real browser (Debian's headless Chromium via Selenium), over TLS with auth on:
a viewer logs in and opens every page over real content (pushed by skopeo, signed and scanned
through the API), and the tests check what a person sees there. Each page is saved as a
screenshot."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from registry.auth.users import UserStore
from tests.auth.tls import self_signed
from tests.console.browser import chromium, screenshot
from tests.console.scenario import SCANNER_TOKEN, Http, Scenario, populate, write_policy
from tests.e2e.conftest import ContainersConfig, require_binary
from tests.server_process import RegistryProcess, start_registry

pytestmark = pytest.mark.e2e

PASSWORDS = {
    "olga": "olga-console-pw",
    "vera": "vera-console-pw",
    "dev": "dev-console-pw",
    "deploy": "deploy-console-pw",
}


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ty-console-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def site(
    work: Path, containers_config: ContainersConfig
) -> Iterator[tuple[RegistryProcess, Scenario]]:
    """A TLS registry with auth on (olga admin, vera viewer, dev push on apps/**), populated."""
    require_binary("skopeo")
    key = ec.generate_private_key(ec.SECP256R1())
    policy = write_policy(work, key)
    cert, tls_key = self_signed(work / "certs")
    data = work / "data"
    users = UserStore(data / "auth" / "users.yaml")
    for name, password in PASSWORDS.items():
        users.add_user(name, password, [], replace=False)
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "scanners": [{"name": "trivy-ci", "token": SCANNER_TOKEN}],
                "auth": {
                    "service": "trustyard-console",
                    "permissions": [
                        {
                            "namespace": "**",
                            "users": {"olga": "admin", "vera": "viewer", "deploy": "pull"},
                        },
                        {"namespace": "apps/**", "users": {"dev": "push"}},
                    ],
                },
            }
        )
    )
    server = start_registry(
        data,
        extra_args=[
            "--config", str(config), "--policy", str(policy),
            "--tls-cert", str(cert), "--tls-key", str(tls_key),
        ],
    )  # fmt: skip
    try:
        http = Http(server.url, cafile=cert, auth=("olga", PASSWORDS["olga"]))
        skopeo_args = [
            "--dest-cert-dir",
            str(cert.parent),
            "--dest-creds",
            f"olga:{PASSWORDS['olga']}",
        ]
        puller = Http(server.url, cafile=cert, auth=("deploy", PASSWORDS["deploy"]))
        scenario = populate(server, http, containers_config, work, key, skopeo_args, puller)
        yield server, scenario
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(site: tuple[RegistryProcess, Scenario]) -> Iterator[Any]:
    with chromium(accept_certificate=True) as driver:
        driver.implicitly_wait(5)
        yield driver


@pytest.fixture(scope="module")
def shots(work: Path) -> Path:
    folder = work / "screenshots"
    folder.mkdir()
    return folder


def follow(driver: Any, element: Any) -> None:
    """Click something that loads a new page, and wait until the old page is gone (a click
    returns before the browser has navigated)."""
    old = driver.find_element("tag name", "html")
    element.click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(old))


def text(driver: Any) -> str:
    return driver.find_element("tag name", "body").text


def log_in(driver: Any, base: str, user: str) -> None:
    driver.get(f"{base}/console/library")
    assert driver.current_url.startswith(f"{base}/console/login?next=/console/library")
    driver.find_element("name", "username").send_keys(user)
    driver.find_element("name", "password").send_keys(PASSWORDS[user])
    follow(driver, driver.find_element("css selector", "button[type=submit]"))


def test_login_page_and_a_wrong_password(site, browser, shots):
    server, _ = site
    browser.get(f"{server.url}/console/health")
    assert "Log in to the console" in text(browser)
    screenshot(browser, shots, "login")
    browser.find_element("name", "username").send_keys("vera")
    browser.find_element("name", "password").send_keys("not her password")
    follow(browser, browser.find_element("css selector", "button[type=submit]"))
    assert "incorrect username or password" in text(browser)
    assert browser.get_cookie("trustyard_session") is None


def test_a_developer_is_turned_away(site, browser):
    server, _ = site
    log_in(browser, server.url, "dev")
    assert "dev may not use the console" in text(browser)
    assert browser.get_cookie("trustyard_session") is None


def test_viewer_session_cookie(site, browser):
    server, _ = site
    log_in(browser, server.url, "vera")
    assert browser.current_url == f"{server.url}/console/library"
    cookie = browser.get_cookie("trustyard_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    # JavaScript cannot read it.
    assert "trustyard_session" not in browser.execute_script("return document.cookie")


def test_library_page(site, browser, shots):
    server, scenario = site
    browser.get(f"{server.url}/console/library")
    body = text(browser)
    assert "Base-image library" in body and "vera" in body
    card = browser.find_element("css selector", "section.card")
    assert "base" in card.text and "library/base" in card.text
    row = card.find_element("css selector", "tbody tr")
    assert row.text.startswith("1 ")  # tag 1
    assert scenario.digests["base-v2"][:19] in row.text  # current digest, shortened
    assert "1 stale" in row.text
    stale = browser.find_element("xpath", "//h2[contains(., 'Rebuild list')]/../..")
    assert "apps/web:1" in stale.text and scenario.digests["base-v1"][7:19] in stale.text
    labels = [t.text for t in browser.find_elements("css selector", "svg.lineage text")]
    assert "base:1" in labels and "apps/web:1 (stale base)" in labels
    csv_link = browser.find_element("link text", "CSV")
    assert csv_link.get_attribute("href").endswith("/api/v1/library/stale?format=csv")
    screenshot(browser, shots, "library")


def test_quarantine_page(site, browser, shots):
    follow(browser, browser.find_element("link text", "Quarantine"))
    cards = browser.find_elements("css selector", "section.quarantined")
    shown = {c.find_element("tag name", "h2").text.split()[0]: c.text for c in cards}
    assert "prod/worker:2.0" in shown and "prod/api:1.0" not in shown
    worker = shown["prod/worker:2.0"]
    assert "prod is signed by release" in worker and "needs a signature by release" in worker
    assert "no criticals in prod" in worker and "policy line" in worker
    assert "a signature of this digest by release" in worker
    assert "a scan report from trivy-ci" in worker
    screenshot(browser, shots, "quarantine")


def test_decisions_page_filters_and_chart(site, browser, shots):
    follow(browser, browser.find_element("link text", "Decisions"))
    rows = browser.find_elements("css selector", "table.decisions tbody tr")
    outcomes = {r.find_element("css selector", ".badge").text for r in rows}
    assert {"allow", "deny"} <= outcomes
    assert browser.find_elements("css selector", "svg.chart rect.deny")
    assert browser.find_elements("css selector", "svg.chart rect.allow")
    summary = browser.find_element("xpath", "//h2[contains(., 'Allowed and denied')]").text
    assert re.search(r"\d+ allowed · \d+ warned · [1-9]\d* denied", summary), summary
    screenshot(browser, shots, "decisions")
    browser.find_element("css selector", "select[name=outcome] option[value=deny]").click()
    browser.find_element("name", "repository").send_keys("prod/worker")
    follow(browser, browser.find_element("css selector", "form.filters button[type=submit]"))
    assert "outcome=deny" in browser.current_url
    rows = browser.find_elements("css selector", "table.decisions tbody tr")
    assert rows and all("deny" in r.text and "prod/worker" in r.text for r in rows)
    assert "needs a signature by release" in rows[0].text


def test_repositories_to_a_signed_scanned_image(site, browser, shots):
    scenario = site[1]
    follow(browser, browser.find_element("link text", "Repositories"))
    names = [a.text for a in browser.find_elements("css selector", "tbody td:first-child a")]
    assert names == ["apps/web", "library/base", "prod/api", "prod/multi", "prod/worker"]
    screenshot(browser, shots, "repositories")
    follow(browser, browser.find_element("link text", "prod/api"))
    assert "1.0" in text(browser) and "sha256-" in text(browser)  # the tag and its .sig tag
    screenshot(browser, shots, "repository")
    follow(browser, browser.find_element("link text", "1.0"))
    body = text(browser)
    assert "pullable" in body and scenario.digests["api"] in body
    signatures = browser.find_element("xpath", "//h2[contains(., 'Signatures')]/..").text
    assert "1 verified of 1" in signatures and "release" in signatures
    assert "✓ verified" in signatures
    scans = browser.find_element("xpath", "//h2[contains(., 'Vulnerability scans')]/..").text
    assert "trivy" in scans and "critical" in scans
    assert "CVE-2019-14697" in scans and "excepted until 2999-01-31" in scans
    lineage = browser.find_element("xpath", "//h2[text()='Lineage']/..").text
    assert "base:1" in lineage and "current" in lineage
    screenshot(browser, shots, "manifest")


def test_quarantined_and_multi_platform_images(site, browser):
    server = site[0]
    browser.get(f"{server.url}/console/repositories/prod/worker/-/2.0")
    body = text(browser)
    assert "quarantined" in body and "A pull is refused" in body
    assert "No signature found" in body and "No scan report" in body
    browser.get(f"{server.url}/console/repositories/prod/multi/-/3.0")
    platforms = browser.find_element("xpath", "//h2[text()='Platforms']/..").text
    assert "linux/amd64" in platforms and "linux/arm64" in platforms
    browser.get(f"{server.url}/console/repositories/apps/web/-/1")
    lineage = browser.find_element("xpath", "//h2[text()='Lineage']/..").text
    assert "replaced: rebuild" in lineage


def test_health_page(site, browser, shots):
    follow(browser, browser.find_element("link text", "Health"))
    body = text(browser)
    assert "filesystem" in body
    assert "never" not in browser.find_element("xpath", "//h2[text()='Garbage collection']/..").text
    lines = browser.find_elements("css selector", "pre.policy .line")
    assert lines[0].text == "1version: 1"  # line number, then the line
    marked = browser.find_elements("css selector", "pre.policy .line.rule")
    assert [m.get_attribute("id") for m in marked] == ["L11", "L15"]
    screenshot(browser, shots, "health")


def test_no_page_broke_a_rule_of_the_browser(site, browser):
    """No CSP violation, missing asset or script error on any page visited so far."""
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # The wrong-password and turned-away logins answered 401 and 403 on purpose.
    unexpected = [
        e for e in severe if not re.search(r"/console/login - .* (401|403)", e["message"])
    ]
    assert unexpected == []
    assert len(severe) >= 2  # the log is read: the two refused logins are in it


def test_logout(site, browser):
    server, _ = site
    follow(browser, browser.find_element("css selector", "form[action='/console/logout'] button"))
    assert "Log in to the console" in text(browser)
    browser.get(f"{server.url}/console/health")
    assert browser.current_url.startswith(f"{server.url}/console/login")
