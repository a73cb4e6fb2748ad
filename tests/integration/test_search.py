"""`search:` end to end on tiny digits MLPs: trials as runs, pruning, rerun, kill, grid, seeds."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.store import open_store

pytest.importorskip("optuna")

BASE: dict[str, Any] = {
    "name": "srch", "data": {"name": "digits", "batch_size": 64, "limit": 256},
    "model": {"name": "mlp", "hidden_dim": 16}, "optimizer": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 2, "seed": 0, "log_every": 100, "checkpoint_every_s": 0,
              "threads": 1}}
SPACE = {"optimizer.lr": {"log": [1.0e-4, 1.0]}, "model.hidden_dim": {"int": [8, 32],
                                                                      "step": 8}}


def _write(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}))
    return path


def _run(config: Path, store: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["run", str(config), "--store", str(store), "-q", *args])
    assert result.exit_code == 0, result.output
    return result


def _runs(store: Path) -> Any:
    with open_store(store, create=False) as st:
        return st.runs("srch"), st


def test_trials_are_runs_pruned_ones_stored_apart_and_a_rerun_trains_nothing(
        tmp_path: Path) -> None:
    config = _write(tmp_path, search={
        "method": "random", "trials": 5, "metric": "valid/accuracy", "space": SPACE,
        "prune": {"method": "asha", "min_epochs": 1}})
    _run(config, tmp_path / "st")
    with open_store(tmp_path / "st", create=False) as st:
        runs = st.runs("srch")
        assert len(runs) == 5 and set(runs["status"]) <= {"ok", "pruned"}
        assert "pruned" in set(runs["status"])  # log-uniform LRs down to 1e-4: some are bad
        pruned = runs[runs["status"] == "pruned"]
        assert (pruned["stopped_epoch"] == 1).all()
        assert all(s["pruned_epoch"] == 1 and s["epochs"] == 1 for s in pruned["summary"])
        assert all(set(o) == set(SPACE) for o in runs["overrides"])
        attempts = dict(zip(runs["run_id"], runs["attempts"]))
    again = _run(config, tmp_path / "st", "--json")
    assert '"state": "pruned"' in again.output
    with open_store(tmp_path / "st", create=False) as st:
        after = st.runs("srch")
    assert dict(zip(after["run_id"], after["attempts"])) == attempts  # nothing trained again
    plan = CliRunner().invoke(app, ["plan", str(config), "--store", str(tmp_path / "st")])
    assert plan.exit_code == 0 and "random search" in plan.output and "asha" in plan.output
    assert "0 to ask" in plan.output
    listed = CliRunner().invoke(app, ["ls", "--store", str(tmp_path / "st"), "--json"])
    assert listed.exit_code == 0 and '"status": "pruned"' in listed.output


@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]], ids=["local", "jobs2"])
def test_a_grid_makes_one_study_per_point_and_seeds_average(tmp_path: Path,
                                                            jobs: list[str]) -> None:
    config = _write(tmp_path, grid={"optimizer.name": ["sgd", "adam"]}, seeds=[0, 1],
                    search={"method": "tpe", "trials": 2, "metric": "valid/loss",
                            "space": {"optimizer.lr": {"log": [1.0e-3, 0.3]}},
                            "prune": "median"})
    # With --jobs 2 a trial's two seeds train at once, each with its pruner in its worker.
    result = _run(config, tmp_path / "st", "--json", *jobs)
    import json

    data = json.loads(result.output)
    assert [s["point"] for s in data["studies"]] == [{"optimizer.name": "sgd"},
                                                     {"optimizer.name": "adam"}]
    with open_store(tmp_path / "st", create=False) as st:
        runs = st.runs("srch")
        assert len(runs) == 2 * 2 * 2  # points x trials x seeds
        for study in data["studies"]:
            assert len(study["trials"]) == 2
            for trial in study["trials"]:
                assert len(trial["runs"]) == 2
                if trial["state"] == "pruned":
                    assert trial["value"] is None
                    continue
                assert trial["state"] == "complete"
                frame = st.metrics(trial["runs"], keys=["valid/loss"])
                best = [g["value"].min() for _, g in frame.groupby("run_id")]
                assert trial["value"] == pytest.approx(statistics.fmean(best))
        seeds = {o["train.seed"] for o in runs["overrides"]}
        assert seeds == {0, 1}


def test_a_killed_search_resumes_without_repeating_a_finished_trial(tmp_path: Path) -> None:
    config = _write(tmp_path, train={**BASE["train"], "epochs": 3},
                    search={"method": "random", "trials": 4, "metric": "valid/accuracy",
                            "space": SPACE})
    store = tmp_path / "st"
    cmd = [sys.executable, "-m", "trainlab", "run", str(config), "--store", str(store), "-q"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGKILL at a fixed point (the 5th last.pt written: inside the second trial, after the
    # first finished), not at a moment: a quiet machine can finish a trial between two polls.
    killer = Path(__file__).with_name("killer.py")
    killed = subprocess.run([sys.executable, str(killer), "checkpoint", "5", *cmd[3:]],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with open_store(store, create=False) as st:
        before = st.runs("srch").set_index("run_id")
    finished = set(before.index[before["status"] == "ok"])
    assert finished and (before["status"] == "running").any()
    _run(config, store)
    with open_store(store, create=False) as st:
        after = st.runs("srch").set_index("run_id")
    assert len(after) == 4 and set(after["status"]) == {"ok"}
    assert all(after.loc[r, "attempts"] == 1 for r in finished)  # never trained again
    params = [tuple(sorted(o.items())) for o in after["overrides"]]
    assert len(set(params)) == 4
    killed = before.index[before["status"] == "running"][0]
    assert after.loc[killed, "attempts"] == 2  # resumed, as a run of any sweep would be


def test_the_report_shows_trials_progress_importances_and_the_choice(tmp_path: Path) -> None:
    config = _write(tmp_path, train={**BASE["train"], "epochs": 1},
                    search={"method": "random", "trials": 4, "metric": "valid/accuracy",
                            "space": SPACE})
    _run(config, tmp_path / "st")
    out = tmp_path / "rep"
    result = CliRunner().invoke(app, ["report", "--store", str(tmp_path / "st"), "--out",
                                      str(out), "--format", "png"])
    assert result.exit_code == 0, result.output
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"search-progress", "search-parallel", "search-importance"} <= figures
    assert not any(name.startswith("accuracy-epoch-lr") for name in figures)  # not per trial
    table = (out / "tables" / "search-trials.md").read_text()
    assert table.count("| all |") + table.count("| **all** |") == 4
    assert "chosen " in table and "optimizer.lr=" in table.split("chosen ")[1]


def test_a_missing_optuna_says_how_to_install_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    config = _write(tmp_path, search={"space": SPACE})
    result = CliRunner().invoke(app, ["run", str(config), "--store", str(tmp_path / "st")])
    assert result.exit_code == 2
    assert "pip install 'trainlab[search]'" in result.output and "Traceback" not in result.output


def test_jobs_2_keeps_two_trials_in_flight_on_one_pool(tmp_path: Path) -> None:
    config = _write(tmp_path, search={"method": "tpe", "trials": 4, "metric": "valid/loss",
                                      "space": SPACE})
    _run(config, tmp_path / "st", "--jobs", "2")
    with open_store(tmp_path / "st", create=False) as st:
        runs = st.runs("srch")
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    params = {tuple(sorted(o.items())) for o in runs["overrides"]}
    assert len(params) == 4  # never two trials with the same params


@pytest.mark.slow
def test_a_ray_search_starts_one_local_ray_for_all_its_trials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    starts: list[int] = []
    init = ray.init

    def counting_init(*args: Any, **kwargs: Any) -> Any:
        starts.append(1)
        return init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", counting_init)
    config = _write(tmp_path, search={"method": "random", "trials": 4, "metric": "valid/loss",
                                      "space": SPACE})
    _run(config, tmp_path / "st", "--executor", "ray", "--jobs", "2")
    with open_store(tmp_path / "st", create=False) as st:
        runs = st.runs("srch")
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    assert len(starts) == 1 and not ray.is_initialized()  # one Ray, shut down at the end


def test_an_lr_range_test_bounds_the_searched_lr_and_is_run_once(tmp_path: Path) -> None:
    config = _write(tmp_path, lr_find={"steps": 30}, search={
        "method": "random", "trials": 2, "metric": "valid/loss",
        "space": {"optimizer.lr": {"from_range_test": True}}})
    plan = CliRunner().invoke(app, ["plan", str(config), "--store", str(tmp_path / "st")])
    assert plan.exit_code == 0 and "until the LR range test runs" in plan.output, plan.output
    _run(config, tmp_path / "st")
    with open_store(tmp_path / "st", create=False) as st:
        ranges = st.conn.execute("SELECT range_id, result FROM lr_ranges").fetchall()
        runs = st.runs("srch")
    assert len(ranges) == 1 and len(runs) == 2
    import json

    candidates = json.loads(ranges[0][1])["suggestions"]["candidates"]
    low, high = min(candidates), max(candidates)
    lrs = [o["optimizer.lr"] for o in runs["overrides"]]
    assert all(low * 0.99 <= lr <= high * 1.01 for lr in lrs), (lrs, candidates)
    again = _run(config, tmp_path / "st", "--json")  # the stored test, the same range
    assert f"from LR range test {ranges[0][0]}" in again.output
    with open_store(tmp_path / "st", create=False) as st:
        assert len(st.conn.execute("SELECT range_id FROM lr_ranges").fetchall()) == 1


def test_log_tensorboard_mirrors_every_trial_as_a_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="pip install 'trainlab[tensorboard]' (CI does)")
    config = _write(tmp_path, search={"method": "random", "trials": 2, "metric": "valid/loss",
                                      "space": SPACE})
    _run(config, tmp_path / "st", "--jobs", "2", "--log", "tensorboard")
    with open_store(tmp_path / "st", create=False) as st:
        runs = st.runs("srch")
    assert len(runs) == 2
    for run_id in runs["run_id"]:
        (logdir,) = (tmp_path / "st" / "tensorboard" / "srch").glob(f"*-{run_id}")
        assert any(logdir.iterdir())
