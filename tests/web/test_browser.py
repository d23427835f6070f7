"""The dashboard in a real browser: Debian's headless Chromium driven by selenium through the
OS chromedriver (nothing is downloaded), against ``squeal dashboard`` run as a process, on
every database. The overview's counts change live after puts (server-sent events, no reload),
a dead message is redriven from the page, a request without the token is refused, and what
users wrote stays text. ``SQUEAL_SCREENSHOTS=DIR`` saves a screenshot of each page there
(docs/dashboard.md shows them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from squeal import Queue
from tests import needs

SQUEAL = str(Path(sys.executable).with_name("squeal"))
TOKEN = "browser-t0ken"
EVIL = "<img src=x onerror=alert(1)>"
WAIT = 30


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium = needs.tool("chromium", env="SQUEAL_TEST_CHROMIUM", package="Debian's chromium")
    driver_path = needs.tool(
        "chromedriver", env="SQUEAL_TEST_CHROMEDRIVER", package="Debian's chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard(db_url: str, prefix: str, make_queue: Callable[..., Queue]) -> Iterator[str]:
    """``squeal dashboard`` on a free port, reading the queue every 0.3 s; its base URL."""
    make_queue()  # the tables
    command = [SQUEAL, "dashboard", "--url", db_url, "--prefix", prefix, "--port", "0"]
    server = subprocess.Popen(
        [*command, "--cache", "0.3", "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "squeal dashboard: http://" in line, line + (server.stderr.read() or "")
        yield line.split()[2].rstrip("/")
    finally:
        server.terminate()
        server.communicate(timeout=30)


def sign_in(browser: webdriver.Chrome, url: str) -> None:
    browser.delete_all_cookies()
    browser.get(url + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(browser, WAIT).until(lambda b: "/login" not in b.current_url)


def shot(browser: webdriver.Chrome, name: str) -> None:
    folder = os.environ.get("SQUEAL_SCREENSHOTS")
    if folder:
        browser.save_screenshot(str(Path(folder) / f"dashboard-{name}.png"))


def cell(browser: webdriver.Chrome, topic: str, field: str) -> str:
    for row in browser.find_elements(By.CSS_SELECTOR, "#topics tbody tr"):
        if row.get_attribute("data-topic") == topic:
            return str(row.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text)
    return ""


def test_the_overview_counts_change_live_after_puts(
    browser: webdriver.Chrome, dashboard: str, make_queue: Callable[..., Queue]
) -> None:
    q = make_queue()
    q.put_many([b"a", b"b"], "mail")
    sign_in(browser, dashboard)
    assert cell(browser, "mail", "ready") == "2"
    browser.execute_script("window.squealMarker = 'same page'")
    q.put_many([b"c", b"d", b"e"], "mail")
    q.put(b"new topic", "reports")
    WebDriverWait(browser, WAIT).until(lambda b: cell(b, "mail", "ready") == "5")
    WebDriverWait(browser, WAIT).until(lambda b: cell(b, "reports", "ready") == "1")
    assert browser.execute_script("return window.squealMarker") == "same page"  # no reload
    updates = browser.find_element(By.ID, "live").get_attribute("data-updates")
    assert int(updates or 0) >= 1
    shot(browser, "overview")


def test_a_dead_message_is_redriven_from_the_page(
    browser: webdriver.Chrome, dashboard: str, make_queue: Callable[..., Queue]
) -> None:
    q = make_queue(max_attempts=1)
    q.put(b'{"order": 7, "lines": [1, 2]}', "orders", headers={"traceparent": "00-ab-01"})
    q.put(b"keep me dead", "orders")
    for _ in range(2):
        msg = q.get("orders")
        assert msg is not None
        msg.nack(error=RuntimeError("card declined"))
    first = min(d.id for d in q.dead("orders"))
    sign_in(browser, dashboard)
    browser.get(f"{dashboard}/dead?topic=orders")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.dead tbody tr")
    assert len(rows) == 2
    assert "card declined" in rows[0].text
    shot(browser, "dead")
    row = browser.find_element(By.CSS_SELECTOR, f'table.dead tr[data-id="{first}"]')
    row.find_element(By.CSS_SELECTOR, "button.redrive").click()
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.ID, "note"))
    assert browser.find_element(By.ID, "note").text == "redrove 1 message(s)"
    assert [d.id for d in q.dead("orders")] != [first]
    back = q.get("orders")
    assert back is not None
    assert back.id == first
    assert back.attempts == 1
    browser.get(f"{dashboard}/topic?name=orders")
    shot(browser, "topic")
    browser.get(f"{dashboard}/messages?topic=orders")
    shot(browser, "messages")
    browser.get(f"{dashboard}/workers")
    shot(browser, "workers")


def test_without_the_token_the_browser_gets_the_sign_in_page(
    browser: webdriver.Chrome, dashboard: str
) -> None:
    browser.delete_all_cookies()
    for path in ("/", "/dead?topic=orders", "/workers", "/events"):
        browser.get(dashboard + path)
        assert "/login" in browser.current_url, path
        assert browser.find_elements(By.NAME, "token")
    browser.find_element(By.NAME, "token").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(browser, WAIT).until(lambda b: "not the token" in b.page_source)
    browser.get(dashboard + "/metrics")
    assert "/login" in browser.current_url  # scrapers without the token get 401


def test_what_users_wrote_renders_as_text(
    browser: webdriver.Chrome, dashboard: str, make_queue: Callable[..., Queue]
) -> None:
    q = make_queue(max_attempts=1)
    q.put(b"<script>alert(1)</script>", EVIL)
    q.put(b"x", EVIL)
    msg = q.get(EVIL)
    assert msg is not None
    msg.nack(error=EVIL)
    sign_in(browser, dashboard)
    WebDriverWait(browser, WAIT).until(lambda b: cell(b, EVIL, "ready") == "1")
    time.sleep(1.0)  # a few live updates: they insert text too
    for path in ("/", f"/messages?topic={EVIL}", f"/dead?topic={EVIL}"):
        if path != "/":
            browser.get(
                dashboard + path.replace("<", "%3C").replace(">", "%3E").replace(" ", "%20")
            )
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert is open
        assert not browser.find_elements(By.CSS_SELECTOR, "main img"), path
    assert EVIL in browser.find_element(By.CSS_SELECTOR, "h1").text
    browser.find_element(By.CSS_SELECTOR, "details.payload summary").click()
    shown = browser.find_element(By.TAG_NAME, "main").text
    assert "<script>alert(1)</script>" in shown  # the dead payload, as text
    assert "last error" in shown
    assert shown.count(EVIL) >= 2  # the heading and the last error
