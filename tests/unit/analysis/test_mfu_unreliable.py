"""No MFU above 1 reaches the user: runs whose measured peak was too low, and older stores
holding such values, show "unreliable" with the reason in `show`, `ls`, `run --json` and the
report's tables and CSVs."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.unit.analysis.fakes import LM_VARIED, lm_runs
from trainlab.cli import app
from trainlab.mfu import UNRELIABLE_NOTE
from trainlab.records import MetricRecord
from trainlab.store import Store

runner = CliRunner()


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def _mfus(data: Any) -> list[float]:
    """Every MFU number anywhere in a JSON document."""
    if isinstance(data, dict):
        own = [v for k, v in data.items() if k == "mfu" and isinstance(v, int | float)]
        if data.get("key") == "perf/mfu":
            own.append(data["value"])
        return own + [m for v in data.values() for m in _mfus(v)]
    if isinstance(data, list):
        return [m for v in data for m in _mfus(v)]
    return []


def _check_report(store: Path, out: Path) -> None:
    result = _run("report", "--store", str(store), "--out", str(out), "--format", "png")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((out / "tables" / "system.csv").read_text())))
    cells = [r["mfu_pct"] for r in rows]
    assert "unreliable" in cells
    assert all(c in ("", "unreliable") or 0 < float(c) <= 100 for c in cells)
    md = (out / "tables" / "system.md").read_text()
    assert "unreliable" in md and UNRELIABLE_NOTE in " ".join(md.split())
    page = " ".join((out / "report.html").read_text().split())
    assert UNRELIABLE_NOTE in page


def test_a_run_against_a_peak_below_its_rate_shows_no_mfu_above_one(
        tiny: dict, write_config, store_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.engine import flops

    monkeypatch.setattr(flops, "_PEAKS", {})
    monkeypatch.setattr(flops, "sample_peak_flops", lambda *a, **k: 1e3)  # far too low
    tiny["train"] = {**tiny.get("train", {}), "device": "cpu"}
    result = _run("run", str(write_config(tiny)), "--store", str(store_dir), "--json")
    assert result.exit_code == 0, result.output
    ran = json.loads(result.stdout[result.stdout.index("{"):])
    summary = ran["runs"][0]["summary"]
    assert summary["mfu"] is None and summary["mfu_note"] == UNRELIABLE_NOTE
    run_id = ran["runs"][0]["run_id"]
    shown = json.loads(_run("show", run_id, "--store", str(store_dir), "--json").stdout)
    keys = {m["key"] for m in shown["metrics"]}
    assert "perf/mfu_unreliable" in keys and "perf/mfu" not in keys
    assert shown["summary"]["mfu_note"] == UNRELIABLE_NOTE and not _mfus(shown)
    human = " ".join(_run("show", run_id, "--store", str(store_dir)).output.split())
    assert f"MFU: unreliable ({UNRELIABLE_NOTE})" in human
    _check_report(store_dir, tmp_path / "rep")


def test_an_older_store_with_mfu_above_one_shows_it_as_unreliable(
        make_store, tmp_path: Path) -> None:
    store: Store = make_store("lm", LM_VARIED, lm_runs())
    runs = store.runs("lm")
    first = str(runs.sort_values("index")["run_id"].iloc[0])
    second = str(runs.sort_values("index")["run_id"].iloc[1])
    # As an older trainlab wrote them: MFU 1.12 and 1.24 (busy peak), then a fine run.
    store.write([MetricRecord(first, "perf/mfu", 10 * e, e, float(e), v)
                 for e, v in enumerate([1.12, 1.24, 1.03], 1)]
                + [MetricRecord(second, "perf/mfu", 10 * e, e, float(e), 0.4)
                   for e in (1, 2, 3)])
    conn = sqlite3.connect(store.root / "trainlab.db")  # the summary an older run stored
    with conn:
        conn.execute("UPDATE runs SET summary = json_set(summary, '$.mfu', 1.12) "
                     "WHERE run_id = ?", (first,))
    conn.close()
    shown = json.loads(_run("show", first, "--store", str(store.root), "--json").stdout)
    assert shown["summary"]["mfu"] is None and shown["summary"]["mfu_note"] == UNRELIABLE_NOTE
    assert not _mfus(shown)
    listed = json.loads(_run("ls", "--store", str(store.root), "--json").stdout)
    assert all(m <= 1 for m in _mfus(listed))
    _check_report(store.root, tmp_path / "rep")
    rows = list(csv.DictReader(io.StringIO(
        (tmp_path / "rep" / "tables" / "system.csv").read_text())))
    by_run = {r["run"]: r["mfu_pct"] for r in rows}
    assert by_run["1"] == "unreliable" and float(by_run["2"]) == pytest.approx(40)
