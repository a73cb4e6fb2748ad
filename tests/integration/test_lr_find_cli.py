"""`trainlab lr-find` end to end: output, figures, store, the follow-up grid, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config import expand, load_sweep
from trainlab.store import open_store

runner = CliRunner()


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def sweep(tiny: dict) -> dict:
    tiny["grid"] = {"optimizer.name": ["sgd", "adam"]}
    tiny["seeds"] = [0, 1]
    tiny["lr_find"] = {"steps": 40, "start": 1e-4, "end": 100.0}
    return tiny


def test_lr_find_json_figures_store_and_reuse(sweep: dict, write_config, store_dir: Path,
                                              tmp_path: Path) -> None:
    cfg = write_config(sweep)
    result = _run("lr-find", str(cfg), "--store", str(store_dir), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    tests = data["tests"]
    assert data["suggest"] == "steepest"  # the default, what lr: auto would use
    assert [t["label"] for t in tests] == [{"optimizer.name": "sgd"}, {"optimizer.name": "adam"}]
    for t in tests:
        assert t["reused"] is False and len(t["runs"]) == 2  # both seeds share the test
        assert 10 <= t["steps"] <= 40 and t["seconds"] > 0 and len(t["lrs"]) == t["steps"]
        assert set(t["suggestions"]) >= {"steepest", "valley", "minimum", "candidates",
                                         "trusted", "flags"}
        assert [Path(p).suffix for p in t["figures"]] == [".png", ".svg"]
        assert all(Path(p).stat().st_size > 1000 for p in t["figures"])
    ranges = open_store(store_dir).lr_ranges("tiny")
    assert sorted(ranges["range_id"]) == sorted(t["range_id"] for t in tests)
    # Again: read from the store, same answer; --rerun runs it again.
    again = json.loads(_run("lr-find", str(cfg), "--store", str(store_dir), "--json").output)
    assert [t["reused"] for t in again["tests"]] == [True, True]
    assert [t["suggestions"] for t in again["tests"]] == [t["suggestions"] for t in tests]
    rerun = json.loads(_run("lr-find", str(cfg), "--store", str(store_dir), "--json",
                            "--rerun", "--out", str(tmp_path / "figs")).output)
    assert [t["reused"] for t in rerun["tests"]] == [False, False]
    assert (tmp_path / "figs" / f"{tests[0]['range_id']}.svg").is_file()


def test_lr_find_table_and_emit_grid(sweep: dict, write_config, store_dir: Path,
                                     tmp_path: Path) -> None:
    grid = tmp_path / "followup.yaml"
    result = _run("lr-find", str(write_config(sweep)), "--store", str(store_dir),
                  "--emit-grid", str(grid), "--candidates", "3")
    assert result.exit_code == 0, result.output
    assert "LR range tests of sweep tiny" in result.output and "steepest" in result.output
    assert "optimizer.lr: auto uses the steepest suggestion" in result.output
    assert f"follow-up sweep: {grid}" in result.output
    followup = load_sweep(grid)
    runs = expand(followup)
    # 2 optimizers x 3 candidates x (constant, step) x 2 seeds
    assert len(runs) == 24 and followup.seeds == [0, 1]
    assert {r.config.schedule.name for r in runs} == {"constant", "step"}
    assert _run("plan", str(grid), "--store", str(store_dir)).exit_code == 0


def test_run_with_auto_then_plan_and_show(sweep: dict, write_config, store_dir: Path) -> None:
    sweep["optimizer"]["lr"] = "auto"
    sweep["seeds"] = None
    cfg = write_config(sweep)
    before = _run("plan", str(cfg), "--store", str(store_dir))
    assert "auto (to find)" in before.output
    result = _run("run", str(cfg), "--store", str(store_dir))
    assert result.exit_code == 0, result.output
    assert result.output.count("lr-find optimizer.name=") == 2 and "by steepest" in result.output
    after = json.loads(_run("plan", str(cfg), "--store", str(store_dir), "--json").output)
    chosen = [r["lr_auto"]["lr"] for r in after["runs"]]
    assert all(isinstance(v, float) for v in chosen)
    run_id = after["runs"][0]["run_id"]
    shown = _run("show", run_id, "--store", str(store_dir))
    assert f"optimizer.lr: auto -> {chosen[0]:.4g}" in shown.output
    assert "steepest of LR range test" in shown.output


def test_a_test_that_diverges_at_once_is_stored_and_explained(tiny: dict, write_config,
                                                             store_dir: Path) -> None:
    tiny["data"]["task"] = "regression"
    tiny["optimizer"] = {"name": "sgd", "lr": 0.1}
    result = _run("lr-find", str(write_config(tiny)), "--store", str(store_dir),
                  "--start", "1e8", "--end", "1e12", "--steps", "20")
    assert result.exit_code == 1
    assert "no LR" in result.output and "note:" in result.output
    assert "Traceback" not in result.output
    assert list(open_store(store_dir).lr_ranges()["status"]) == ["diverged"]


@pytest.mark.parametrize(("args", "message"), [
    (["--start", "1", "--end", "0.1"], "`--end` (lr_find.end) must be above start"),
    (["--start", "1", "--end", "1"], "must be above start"),
    (["--steps", "5"], "`--steps` (lr_find.steps) must be greater than or equal to 10"),
    (["--suggest", "valey"], "did you mean 'valley'"),
    (["--mode", "log"], "'exp' or 'linear'"),
    (["--smooth", "1.5"], "--smooth"),
    (["--emit-grid", "x.yaml", "--schedules", "constant,stepp"], "did you mean 'step'"),
    (["--set", "lr_find.stpes=3"], "did you mean `lr_find.steps`"),
])
def test_bad_input_exits_2_with_a_message(tiny: dict, write_config, store_dir: Path,
                                          args: list[str], message: str) -> None:
    result = _run("lr-find", str(write_config(tiny)), "--store", str(store_dir), *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (store_dir / "trainlab.db").exists()  # nothing ran, nothing stored


def test_examples_list_lr_range() -> None:
    listed = _run("examples")
    assert "lr-range" in listed.output
    sweep = load_sweep(example="lr-range")
    runs = expand(sweep)
    assert [r.config.optimizer.name for r in runs] == ["sgd", "adam"]
    assert all(r.config.optimizer.lr == "auto" and r.config.model.name == "cnn" for r in runs)
    assert runs[0].config.lr_find is not None and runs[0].config.lr_find.steps == 2000


def test_ctrl_c_stops_lr_find_within_a_step_and_exits_130(tiny: dict, write_config,
                                                          store_dir: Path) -> None:
    """A ramp of 10^6 steps (many minutes here) stops at the first Ctrl-C: exit 130, a message,
    no traceback, and no partial curve in the store."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tiny["lr_find"] = {"steps": 1_000_000, "start": 1e-9, "end": 1e-8}
    cfg = write_config(tiny)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab.cli", "lr-find", str(cfg),
                             "--store", str(store_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    started = ""
    for line in proc.stderr:  # the ramp starts right after this line
        started += line
        if "lr-find" in line and "range" in line:
            break
    assert proc.poll() is None, started
    time.sleep(1.0)  # inside the ramp
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, started + stderr
    assert "Traceback" not in stderr
    assert "interrupted (Ctrl-C)" in stderr and "rerun the same command" in stderr.lower()
    assert len(open_store(store_dir).lr_ranges("tiny")) == 0


def test_the_follow_up_report_shows_its_range_tests_and_the_test_name_says_what_to_do(
        sweep: dict, write_config, store_dir: Path, tmp_path: Path) -> None:
    sweep["seeds"] = None
    grid = tmp_path / "followup.yaml"
    found = _run("lr-find", str(write_config(sweep)), "--store", str(store_dir),
                 "--emit-grid", str(grid), "--candidates", "2", "--schedules", "constant")
    assert found.exit_code == 0, found.output
    # Before the follow-up is trained: the lr-find's own name says what to do.
    early = runner.invoke(app, ["report", "--sweep", "tiny", "--store", str(store_dir)])
    assert early.exit_code == 2
    assert "no trained runs" in early.output and "--emit-grid" in early.output
    assert _run("run", str(grid), "--store", str(store_dir), "-q").exit_code == 0
    out = tmp_path / "report"
    report = _run("report", "--sweep", "tiny-followup", "--store", str(store_dir),
                  "--out", str(out))
    assert report.exit_code == 0, report.output
    markdown = next(out.glob("*.md")).read_text()
    assert "LR range test" in markdown
    assert len(list(out.rglob("lr-range-*.png"))) == 2  # one per optimizer's test
    later = runner.invoke(app, ["report", "--sweep", "tiny", "--store", str(store_dir)])
    assert later.exit_code == 2 and "trainlab report --sweep tiny-followup" in later.output


def test_a_noisy_default_ramp_is_tested_again_longer(tiny: dict, write_config,
                                                     store_dir: Path) -> None:
    # LRs far too low to learn within the ramp and batches of 4: the 100-step curve is noise.
    tiny["data"] = {"name": "synthetic", "n_samples": 160, "shape": [6], "n_classes": 3,
                    "batch_size": 4}
    tiny["model"] = {"name": "mlp", "hidden_dim": 8}
    tiny["optimizer"] = {"name": "sgd", "lr": 0.1}
    tiny["lr_find"] = {"start": 1e-7, "end": 1e-6, "seed": 0}
    tiny.pop("grid", None)
    tiny.pop("seeds", None)
    cfg = write_config(tiny)
    data = json.loads(_run("lr-find", str(cfg), "--store", str(store_dir), "--json").output)
    (test,) = data["tests"]
    assert test["planned_steps"] == 400 and test["lengthened_from"]["steps"] == 100
    assert test["lengthened_from"]["status"] == "untrusted"
    assert "noisy" in test["lengthened_from"]["suggestions"]["flags"][0]["code"]
    assert "400-step ramp" in test["note"]
    table = _run("lr-find", str(cfg), "--store", str(store_dir))
    assert "400/400" in table.output or "/400" in table.output
    assert "100-step default ramp" in " ".join(table.output.split())
    # An explicit ramp is kept as given.
    kept = json.loads(_run("lr-find", str(cfg), "--store", str(store_dir), "--json",
                           "--steps", "100").output)
    assert kept["tests"][0]["planned_steps"] == 100 and kept["tests"][0]["lengthened_from"] is None
