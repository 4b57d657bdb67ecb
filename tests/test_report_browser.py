"""The HTML report in a real browser: headless Chromium driven through chromedriver (selenium).

Each report (a trained and evaluated classifier and segmenter, as in tests/test_report.py) is
copied away from its run folder and opened from file:// at a normal window width (1280 px):
every image loads, the console stays clean, no request leaves the machine, nothing is wider
than the window, and the page prints to PDF. A full-page screenshot and the PDF of each are
kept under pytest's tmp path (printed at the end of each test) for a person to look at.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` package (the ``dev`` extra). Without them the tests skip, except under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from medvol.cli import main
from tests.test_evaluate import classifier_run, copy_run, evaluated_run, segmenter_run

WIDTH, HEIGHT = 1280, 900


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must open the report in a browser")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium at 1280×900 that records console messages and network requests."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        _missing("chromium or chromedriver not found (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},{HEIGHT}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # a request for another host fails (and is seen)
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(chromedriver)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver: Any) -> list[str]:
    """URLs of the requests the page made since the log was last read (DevTools network events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _open_copied_report(driver: Any, run_dir: Path, elsewhere: Path) -> Path:
    """Write the run's report, copy the report folder alone to ``elsewhere``, delete the run, open it."""
    assert main(["report", str(run_dir)]) == 0
    page = Path(shutil.copytree(run_dir / "report", elsewhere)) / "report.html"
    shutil.rmtree(run_dir)
    driver.get_log("browser")  # forget what earlier pages logged
    driver.get_log("performance")
    driver.get(page.as_uri())
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => done());"
    )
    return page


IMAGES = "return [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth, i.width]);"
# Elements whose right edge passes the body's content box, or that scroll sideways themselves.
OVERFLOWING = """
const body = document.body.getBoundingClientRect();
const right = body.right - parseFloat(getComputedStyle(document.body).paddingRight) + 0.5;
return [...document.querySelectorAll('table, figure, img, pre, p, li, h1, h2, h3')]
  .filter(e => e.getBoundingClientRect().right > right || e.scrollWidth > e.clientWidth + 1)
  .map(e => e.tagName + ': ' + e.textContent.slice(0, 60));
"""
SMALLEST_TEXT = """
const sizes = [...document.querySelectorAll('p, li, td, th, figcaption')]
  .filter(e => e.textContent.trim()).map(e => parseFloat(getComputedStyle(e).fontSize));
return Math.min(...sizes);
"""


def _check_in_browser(driver: Any, page: Path, artefacts: Path, name: str) -> None:
    html = page.read_text()
    screenshot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    (artefacts / f"{name}.png").write_bytes(base64.b64decode(screenshot["data"]))
    pdf = base64.b64decode(driver.print_page())
    assert pdf.startswith(b"%PDF-")
    assert re.search(rb"/Type\s*/Page\b(?!s)", pdf), "the PDF has no page"
    (artefacts / f"{name}.pdf").write_bytes(pdf)
    print(f"screenshot and PDF of the {name} report: {artefacts}")

    images = driver.execute_script(IMAGES)
    assert len(images) == html.count("<img "), "the browser saw another number of images than the file has"
    assert images, "the report shows no figure"
    broken = [src for src, natural_width, _ in images if natural_width == 0]
    assert not broken, f"images that did not load: {broken}"
    shrunk = [(src, shown) for src, natural, shown in images if shown < min(natural, 600)]
    assert not shrunk, f"figures drawn narrower than 600 px at {WIDTH} px: {shrunk}"

    console = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not console, f"console errors: {console}"
    urls = _requested_urls(driver)
    assert page.as_uri() in urls
    outside = [url for url in urls if not url.startswith(("file://", "data:"))]
    assert not outside, f"requests that leave the machine: {outside}"

    assert driver.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    assert driver.execute_script(OVERFLOWING) == []
    assert driver.execute_script(SMALLEST_TEXT) >= 12, "text smaller than 12 px"
    model_card = driver.execute_script(
        "return [...document.querySelectorAll('h2')].some(h => h.textContent === 'Model card')"
    )
    assert model_card


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_report_in_chromium_offline_from_a_copied_folder(
    kind: str, browser: Any, shared_data: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    trained = {"classifier": classifier_run, "segmenter": segmenter_run}[kind]
    # Long folder names, as on a real cluster: paths in the text and the tables must wrap, not overflow.
    deep = tmp_path / ("projects_" + "x" * 90) / ("hippocampus_and_adrenal_experiments_" + "y" * 80)
    run_dir = copy_run(evaluated_run(trained(shared_data, tmp_path_factory), tmp_path_factory), deep)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["root"] = str(deep / "data" / Path(config["data"]["root"]).name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    page = _open_copied_report(browser, run_dir, tmp_path / "copied elsewhere" / "report")
    artefacts = tmp_path / "artefacts"
    artefacts.mkdir()
    _check_in_browser(browser, page, artefacts, kind)
