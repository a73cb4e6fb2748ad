"""`trainlab report` and `trainlab compare` end to end: files written, exit codes, messages."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.unit.analysis.fakes import LM_VARIED, add_sweep, lm_runs
from trainlab.cli import app
from trainlab.store import open_store

runner = CliRunner()


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_report_writes_every_file(lm_store, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = _run("report", "--store", str(lm_store.root), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "report of sweep lm: 6 runs, 18 figures" in result.output
    for name in ("report.html", "report.md", "answers.json"):
        assert (out / name).is_file()
    for table in ("summary", "system"):
        for ext in ("md", "tex", "csv", "html"):
            assert (out / "tables" / f"{table}.{ext}").stat().st_size > 100
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(pngs) == 18 and len(list((out / "figures").glob("*.svg"))) == 18
    assert "perplexity-epoch-model-lstm-layers-1.png" in pngs
    assert "perplexity-time-model-gpt-optimizer-adam.png" in pngs
    assert {"pareto_time.png", "pareto_memory.png"} <= set(pngs)
    assert (out / "figures" / "pareto_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 18
    assert "http://" not in html and "https://" not in html  # offline: nothing fetched
    assert html.count('<details class="run"') == 6
    md = (out / "report.md").read_text()
    assert "## Answers" in md and "![Perplexity over epochs" in md
    answers = json.loads((out / "answers.json").read_text())
    assert [a["key"] for a in answers][:3] == ["wall_clock", "time_budget", "generalization"]


def test_report_json_and_options(lm_store, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = _run("report", "--store", str(lm_store.root), "--out", str(out), "--json",
                  "--panel", "optimizer", "--hue", "model", "--sort", "-valid PPL",
                  "--group", "none", "--clock", "wall", "--target", "150", "--format", "png")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["sweep"] == "lm" and "report.html" in data["files"]
    # Facets by layers (1, 2) x 2 metrics x 2 axes, plus 2 Pareto figures.
    assert len([f for f in data["files"] if f.endswith(".png")]) == 10
    csv_rows = (out / "tables" / "summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows[1:]] == ["2", "4", "1", "5", "6", "3"]


def test_report_defaults_to_the_latest_sweep_and_names_the_others(
        lm_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_sweep(lm_store, "later", ["optimizer.name"], lm_runs()[2:4])
    monkeypatch.chdir(tmp_path)
    result = _run("report", "--store", str(lm_store.root), "--format", "png")
    assert result.exit_code == 0, result.output
    assert "report of sweep later" in result.output and "others: lm" in result.output
    assert (tmp_path / "reports" / "later" / "report.html").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--sweep", "lmm"], "no sweep 'lmm'"),
    (["--sweep", "lmm"], "did you mean 'lm'"),
    (["--metric", "accuracy"], "`--metric`: 'accuracy' was not recorded"),
    (["--facet", "arch"], "`--facet`: 'arch' is not a varied key of sweep lm"),
    (["--panel", "optimiser"], "did you mean 'optimizer'"),
    (["--hue", "model,lr"], "`--hue`: 'lr'"),
    (["--sort", "speed"], "`--sort`: unknown column 'speed'"),
    (["--group", "arch"], "`--group`"),
    (["--clock", "cpu"], "`--clock`"),
    (["--overfit-epochs", "0"], "`--overfit-epochs` must be >= 1"),
    (["--format", "gif"], "`--format`: gif not supported"),
])
def test_bad_report_options_exit_2(lm_store, tmp_path: Path, args: list[str],
                                   message: str) -> None:
    out = tmp_path / "rep"
    result = _run("report", "--store", str(lm_store.root), "--out", str(out), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()  # nothing written on bad input


def test_bad_stores_exit_2(tmp_path: Path, make_store) -> None:
    missing = _run("report", "--store", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "no trainlab store" in missing.output
    empty = open_store(tmp_path / "empty")
    result = _run("report", "--store", str(empty.root))
    assert result.exit_code == 2 and "holds no sweeps" in result.output
    pending = make_store("todo", ["optimizer.name"], [
        {"values": {"optimizer.name": o}, "status": "pending", "train": [], "valid": [],
         "time": []} for o in ("adam", "sgd")])
    result = _run("report", "--store", str(pending.root), "--sweep", "todo")
    assert result.exit_code == 2
    assert "sweep 'todo' has no run with recorded epochs yet (run statuses: pending)" in \
        result.output


def test_compare(lm_store) -> None:
    ids = [r for r in lm_store.runs("lm")["run_id"]]
    result = _run("compare", ids[0][:6], ids[4], "--store", str(lm_store.root))
    assert result.exit_code == 0, result.output
    assert "model.layers" in result.output and "valid perplexity" in result.output
    assert "model.name" not in result.output  # equal in both runs
    data = json.loads(_run("compare", ids[0], ids[4], ids[2], "--store", str(lm_store.root),
                           "--json").output)
    assert data["differences"]["model.layers"] == ["1", "2", "1"]
    assert data["differences"]["model.name"] == ["lstm", "lstm", "gpt"]
    assert data["results"]["valid perplexity"] == ["100.0", "90.00", "80.00"]
    assert data["results"]["status"] == ["ok", "ok", "ok"]


@pytest.mark.parametrize(("args", "message"), [
    (["zzz", "yyy"], "no run with id 'zzz'"),
    (["lm"], "give at least two runs"),
    (["lm000100"], "give at least two runs"),
])
def test_compare_bad_input_exits_2(lm_store, args: list[str], message: str) -> None:
    result = _run("compare", *args, "--store", str(lm_store.root))
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_compare_same_run_twice(lm_store) -> None:
    run_id = lm_store.runs("lm")["run_id"][0]
    result = _run("compare", run_id, run_id[:7], "--store", str(lm_store.root))
    assert result.exit_code == 2 and "all name the same run" in result.output


def test_report_of_a_trained_sweep_with_seeds(tiny: dict, write_config, store_dir: Path,
                                             tmp_path: Path) -> None:
    """Real records from the engine (two seeds): mean, std and n per configuration."""
    tiny["grid"] = {"model.hidden_dim": [4, 16]}
    tiny["seeds"] = [0, 1]
    cfg = write_config(tiny)
    assert _run("run", str(cfg), "--store", str(store_dir), "-q").exit_code == 0
    out = tmp_path / "rep"
    result = _run("report", "--store", str(store_dir), "--out", str(out), "--format", "png")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((out / "tables" / "summary.csv").read_text())))
    assert [(r["run"], r["model.hidden_dim"], r["n"]) for r in rows] == [
        ("1 2", "4", "2"), ("3 4", "16", "2")]
    assert all(float(r["valid_accuracy_std"]) >= 0 for r in rows)
    marks = sorted(r["mark"] for r in rows)
    assert marks in (["", "best"], ["tie", "tie"])
    md = (out / "tables" / "summary.md").read_text()
    assert md.splitlines()[0].endswith("| n |") and " ± " in md
    assert not list((out / "figures").glob("*.svg"))  # --format png


def test_lm_fixture_matches_the_varied_keys(lm_store) -> None:
    assert lm_store.sweep_info("lm")["varied"] == LM_VARIED


def test_report_shows_mfu_speed_estimates_and_lr_ranges(tiny: dict, write_config,
                                                        store_dir: Path, tmp_path: Path) -> None:
    """What the other parts of trainlab record reaches the report: MFU and speed options in
    the system table, predicted against measured memory and time, and the sweep's LR range
    tests (figure and suggestions)."""
    tiny["optimizer"] = {"name": "adam", "lr": "auto"}
    tiny["lr_find"] = {"steps": 30, "start": 1e-5, "end": 10}
    tiny["grid"] = {"model.hidden_dim": [4, 16]}
    cfg = write_config(tiny)
    assert _run("run", str(cfg), "--store", str(store_dir), "-q").exit_code in (0, 1)
    out = tmp_path / "rep"
    result = _run("report", "--store", str(store_dir), "--out", str(out), "--format", "png")
    assert result.exit_code == 0, result.output
    system = list(csv.DictReader(io.StringIO((out / "tables" / "system.csv").read_text())))
    assert all(0 < float(r["mfu_pct"]) < 100 for r in system)
    assert {r["speed"] for r in system} == {"fused"}
    estimates = list(csv.DictReader(io.StringIO(
        (out / "tables" / "estimates.csv").read_text())))
    assert len(estimates) == 2
    # Memory: the run's own tensors, predicted (the probe measures a step as the run measures
    # its first) against measured, a few percent apart; far below the process's RSS.
    assert all(float(r["predicted_mem_bytes"]) > 0 and r["mem_error_pct"] for r in estimates)
    assert all(abs(float(r["mem_error_pct"])) < 25 for r in estimates), estimates
    assert all(0 < float(r["tensor_peak_bytes"]) < float(r["rss_reserved_bytes"]) / 20
               for r in system)
    assert list((out / "figures").glob("lr-range-1.png"))
    page = (out / "report.html").read_text()
    assert 'id="lr-range"' in page and 'id="estimates"' in page and "MFU" in page
    assert "LR range test suggestions" in (out / "report.md").read_text()
