"""The bench page in a real browser: `torchqsm simulate suite --small`, `torchqsm bench`, then
``index.html`` opened from disk in headless Chromium (through Selenium and the Debian
``chromedriver``): it renders without script errors, every image decodes, every link lands,
and the page requests nothing but itself and its data URIs.

Skips when Selenium, ``chromium`` or ``chromedriver`` is missing (``.ci/run`` installs the two
Debian packages when it can).
"""

from __future__ import annotations

import base64
import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from torchqsm.bench.tables import run_anchor
from torchqsm.cli.main import main

CASES = ("baseline", "tilt-30deg")  # two cases: a slices figure each and the NRMSE-against-tilt figure
METHODS = ("tkd", "cosmos")  # the cheapest method, and one that fails (a failed row links to its section)
LOCAL_SCHEMES = ("file", "data", "about", "blob")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,900", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-default-apps")


def _executable(*names: str) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """Headless Chromium with console and network (DevTools performance) logs, or a skip."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the `test` extra)")
    browser = _executable("chromium", "chromium-browser")
    chromedriver = _executable("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file()
                                                   else None)
    if browser is None or chromedriver is None:
        pytest.skip("headless Chromium not found: install the Debian packages chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # An explicit chromedriver: Selenium Manager (which may download one) never runs.
    chrome = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def report(driver, tmp_path_factory) -> Path:
    """The report folder of tkd and cosmos on two cases of the small suite, made by the commands."""
    root = tmp_path_factory.mktemp("browser")
    suite, out = root / "suite", root / "report"
    assert main(["simulate", "suite", str(suite), "--small", *(f"--case={c}" for c in CASES)]) == 0
    assert main(["bench", str(suite), "-o", str(out), "--methods", *METHODS, "--workers", "1", "--quiet"]) == 0
    return out


@dataclass
class Loaded:
    """The page as the browser left it after its load event."""

    url: str
    requests: list[str]  # every URL the page's tab asked for (DevTools Network.requestWillBeSent)
    console: list[dict]  # the browser log: script errors, failed loads


@pytest.fixture(scope="module")
def page(driver, report) -> Loaded:
    driver.get("about:blank")  # leave the start page, then drop what it logged
    driver.get_log("performance")
    driver.get_log("browser")
    url = (report / "index.html").as_uri()
    driver.get(url)  # returns after the load event: every image has been fetched and decoded or failed
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    return Loaded(url, requests, driver.get_log("browser"))


def test_page_renders_without_errors(driver, page):
    assert driver.current_url == page.url and driver.title == "torchqsm bench"
    assert driver.execute_script("return document.readyState") == "complete"
    assert not [entry for entry in page.console if entry["level"] == "SEVERE"], page.console
    heading = driver.find_element("css selector", "h1")
    assert heading.is_displayed() and heading.text.startswith("torchqsm bench: torchqsm evaluation suite")
    tables = driver.find_elements("css selector", "table")
    assert len(tables) == 8 and all(t.is_displayed() and t.size["height"] > 20 for t in tables)
    rows = driver.find_elements("css selector", "tr.failed")
    assert len(rows) == len(CASES) and "4-D" in rows[0].text  # cosmos' one-line error, shown


def test_every_image_loads_and_every_figure_is_shown(driver, page, report):
    images = driver.execute_script(
        "return Array.from(document.images, i => ({complete: i.complete, width: i.naturalWidth, "
        "height: i.naturalHeight, shown: i.getBoundingClientRect().width, src: i.currentSrc}))")
    figures = sorted(report.glob("figures/**/*.png"))
    assert len(figures) == 2 * len(CASES) + 2  # slices and tkd per case, NRMSE against tilt, runtime
    assert len(images) == len(figures)
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0 and image["shown"] > 100, image
    prefix = "data:image/png;base64,"
    assert all(image["src"].startswith(prefix) for image in images)
    shown = sorted(base64.b64decode(image["src"][len(prefix):]) for image in images)
    assert shown == sorted(path.read_bytes() for path in figures)  # each figure once, byte for byte


def test_no_request_leaves_the_machine(driver, page):
    assert page.requests[0] == page.url and len(page.requests) > 1  # the page, then its images
    for url in page.requests:
        assert urlsplit(url).scheme in LOCAL_SCHEMES, url
    # The page's own view of what it fetched (data URIs are not listed there).
    resources = driver.execute_script('return performance.getEntriesByType("resource").map(e => e.name)')
    assert all(urlsplit(url).scheme in LOCAL_SCHEMES for url in resources), resources


def test_links_land_on_runs_and_their_figures(driver, page, report):
    links = driver.execute_script(
        "return Array.from(document.links, a => ({href: a.getAttribute('href'), url: a.href}))")
    assert links
    for link in links:
        if link["href"].startswith("#"):
            assert driver.execute_script("return document.getElementById(arguments[0]) !== null",
                                         link["href"][1:]), f"dangling link {link['href']}"
        else:  # a link to a file beside the page must point at one that exists
            target = urlsplit(link["url"])
            assert target.scheme == "file" and Path(unquote(target.path)).exists(), link
    with (report / "results.csv").open(newline="") as table:
        records = list(csv.DictReader(table))
    assert len(records) == len(CASES) * len(METHODS)
    hrefs = {link["href"] for link in links}
    for record in records:
        anchor = run_anchor(record["case"], record["method"])
        assert f"#{anchor}" in hrefs
        figures = driver.execute_script(
            "return Array.from(document.getElementById(arguments[0]).querySelectorAll('img'), i => i.naturalWidth)",
            anchor)
        if record["status"] == "ok":
            assert len(figures) == 1 and figures[0] > 0, anchor  # its run figure, decoded
        else:
            assert figures == [], anchor
    # Following a cell's link scrolls its run's section into view.
    anchor = run_anchor(CASES[0], METHODS[0])
    driver.find_element("css selector", f'td a[href="#{anchor}"]').click()
    assert driver.execute_script("return location.hash") == f"#{anchor}"
    top, height = driver.execute_script(
        "return [document.getElementById(arguments[0]).getBoundingClientRect().top, innerHeight]", anchor)
    assert -1 <= top < height / 2  # sub-pixel layout
