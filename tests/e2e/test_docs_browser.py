"""The documentation site in headless Chromium: the home page, a tutorial and the config
reference render with no console errors, the tutorial's figures load, the navigation reaches
the reference, and search finds a config field.  The site is built with ``mkdocs build
--strict`` and served over HTTP (search runs in a web worker, which a file:// page may not
start).  Needs ``chromium``, ``chromium-driver``, ``selenium`` and ``mkdocs-material``; run
with ``python -m pytest -m browser``."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The built site, served on a free local port: its base URL."""
    pytest.importorskip("material", reason="mkdocs-material is not installed: "
                        "pip install -e '.[docs]' to build the documentation site")
    out = tmp_path_factory.mktemp("site")
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    built = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stdout + built.stderr
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _errors(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _wait(predicate: Any, timeout: float = 20.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("page, heading", [
    ("", "trainlab"),
    ("tutorials/wikitext-lm/", "WikiText-2"),
    ("reference/config/", "Config"),
])
def test_a_page_renders_with_no_console_errors(browser: Any, site: str, page: str,
                                               heading: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site + page)
    title = browser.find_element(By.CSS_SELECTOR, "article h1").text
    assert heading.lower() in title.lower()
    assert len(browser.find_elements(By.CSS_SELECTOR, "nav.md-nav a")) > 10
    assert _errors(browser) == []


def test_a_tutorial_shows_its_figures(browser: Any, site: str) -> None:
    """The tutorial's figures (copied from its generated report) load, not broken images."""
    from selenium.webdriver.common.by import By

    browser.get(site + "tutorials/wikitext-lm/")
    images = browser.find_elements(By.CSS_SELECTOR, "article img")
    assert len(images) >= 2
    assert _wait(lambda: all(browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0;", img)
        for img in images)), "a tutorial figure did not load"
    assert _errors(browser) == []


def test_navigation_reaches_the_config_reference(browser: Any, site: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site)
    link = next(a for a in browser.find_elements(By.CSS_SELECTOR, "nav.md-nav a")
                if a.get_attribute("href", ) and a.get_attribute("href").rstrip("/").endswith(
                    "reference/config"))
    browser.execute_script("arguments[0].click();", link)
    assert _wait(lambda: browser.current_url.rstrip("/").endswith("reference/config"))
    assert "data_on_device" in browser.page_source
    assert _errors(browser) == []


def test_search_finds_a_config_field(browser: Any, site: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site)
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    browser.execute_script("arguments[0].focus();", box)
    box.send_keys("pin_memory")
    assert _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item")), \
        "search returned nothing for pin_memory"
    results = " ".join(e.text for e in
                       browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
    assert "pin_memory" in results or "loader" in results.lower()
    assert _errors(browser) == []
