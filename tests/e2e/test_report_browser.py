"""The HTML report in headless Chromium: loads offline with no console errors, every figure
renders, tables hold the expected rows, sorting and run links work, and a screenshot is not
blank.  Needs Debian's ``chromium`` and ``chromium-driver`` packages and ``selenium``
(``pip install -e ".[browser]"``); run with ``python -m pytest -m browser``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app

pytestmark = pytest.mark.browser

TINY_SWEEP: dict[str, Any] = {
    "name": "browser-tiny",
    "data": {"name": "synthetic", "n_samples": 256, "shape": [8], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 16},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 3, "log_every": 3, "checkpoint": False},
    "grid": {"model.hidden_dim": [4, 16], "optimizer.name": ["adam", "sgd"]},
}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real sweep (2 widths x 2 optimizers, 3 epochs), trained and reported."""
    root = tmp_path_factory.mktemp("browser")
    cfg = root / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False))
    runner = CliRunner()
    store, out = root / "store", root / "report"
    result = runner.invoke(app, ["run", str(cfg), "--store", str(store), "-q"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", "--store", str(store), "--out", str(out),
                                 "--format", "png"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _open(browser: Any, report_dir: Path) -> None:
    browser.get((report_dir / "report.html").as_uri())
    browser.get_log("browser")  # start each test with an empty console


def test_page_loads_with_no_console_errors_and_every_figure_renders(browser, report_dir):
    browser.get((report_dir / "report.html").as_uri())
    assert browser.title == "trainlab report: browser-tiny"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
        "i.naturalHeight, i.src.slice(0, 22)])")
    figures = len(list((report_dir / "figures").glob("*.png")))
    assert len(images) == figures >= 10
    assert all(done and w > 300 and h > 200 and src == "data:image/png;base64,"
               for done, w, h, src in images)
    # Nothing on the page points off the machine.
    remote = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src],[href]')).map(e => "
        "e.getAttribute('src') || e.getAttribute('href')).filter(u => /^(https?:)?\\/\\//.test(u))")
    assert remote == []


def test_tables_hold_the_expected_rows_and_sort(browser, report_dir):
    _open(browser, report_dir)
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#table-summary tbody tr')).map("
        "r => Array.from(r.cells).map(c => c.textContent))")
    assert [r[:3] for r in rows] == [["1", "4", "adam"], ["2", "4", "sgd"], ["3", "16", "adam"],
                                     ["4", "16", "sgd"]]
    system = browser.execute_script(
        "return document.querySelectorAll('#table-system tbody tr').length")
    assert system == 4
    bold = browser.execute_script(
        "return document.querySelectorAll('#table-summary tbody tr.best, "
        "#table-summary tbody tr.tie').length")
    assert bold >= 1
    toc = browser.execute_script(
        "return Array.from(document.querySelectorAll('nav.toc a')).map(a => "
        "[a.textContent, !!document.getElementById(a.getAttribute('href').slice(1))])")
    assert ("Summary", True) in [tuple(t) for t in toc] and all(ok for _, ok in toc)
    header = browser.find_element("css selector", "#table-summary thead th:nth-child(1)")
    header.click()
    header.click()  # second click: descending
    first = browser.execute_script(
        "return Array.from(document.querySelectorAll('#table-summary tbody tr')).map("
        "r => r.cells[0].textContent)")
    assert first == ["4", "3", "2", "1"]
    assert header.get_attribute("aria-sort") == "descending"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_run_number_opens_its_config(browser, report_dir):
    _open(browser, report_dir)
    assert browser.execute_script("return document.getElementById('run-3').open") is False
    browser.find_element("css selector", '#table-summary a[href="#run-3"]').click()
    assert browser.execute_script("return document.getElementById('run-3').open") is True
    config = browser.execute_script("return document.querySelector('#run-3 pre').textContent")
    assert '"hidden_dim": 16' in config and '"name": "adam"' in config


def test_screenshot_is_not_blank(browser, report_dir, tmp_path: Path):
    import numpy as np
    from matplotlib import image

    _open(browser, report_dir)
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    pixels = image.imread(str(shot))[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    # Text, tables and figures: many distinct colours, far from a uniform page.
    assert float(pixels.std()) > 0.05
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
    # The top of the page shows the title (dark text on white), not an error page.
    top = pixels[:200]
    assert (top.mean(axis=2) < 0.3).mean() > 0.002
