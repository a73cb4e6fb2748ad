"""--jobs N: a pool of worker processes writing through the parent.  The store a parallel sweep
leaves must equal a sequential sweep's row for row; a worker that dies fails only its run; Ctrl-C
still exits 130 with resumable state."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from trainlab.api import load, prepare
from trainlab.cli import app
from trainlab.errors import ConfigError
from trainlab.execute import pool
from trainlab.store import open_store

runner = CliRunner()
# Keys whose values depend only on the seed, data and arithmetic (not on timing or memory).
EXACT = ("train/", "valid/", "test/", "lr", "grad_norm", "params/")

SWEEP: dict[str, Any] = {
    "name": "jobs",
    "data": {"name": "synthetic", "n_samples": 400, "shape": [16], "n_classes": 4,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 32, "dropout": 0.1},
    "optimizer": {"name": "adam", "lr": 0.01},
    # One thread everywhere: a sequential sweep and a parallel one then do the same arithmetic.
    "train": {"epochs": 2, "log_every": 4, "threads": 1},
    "grid": {"model.hidden_dim": [8, 16], "optimizer.lr": [0.01, 0.003]},
}
SLOW: dict[str, Any] = {  # runs of about a second each: long enough to be hit mid-run
    **SWEEP, "name": "slow",
    "data": {**SWEEP["data"], "n_samples": 3000},
    "model": {"name": "mlp", "hidden_dim": 128},
    "train": {"epochs": 3, "log_every": 20, "threads": 1},
    "grid": {"model.hidden_dim": [128, 96, 64]},
}


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _rows(store: Path, sweep: str) -> pd.DataFrame:
    st = open_store(store)
    runs = st.runs(sweep)
    metrics = st.metrics(list(runs["run_id"]))
    return metrics[metrics["key"].str.startswith(EXACT)].sort_values(
        ["run_id", "key", "step"]).reset_index(drop=True)


def _cli(config: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainlab.cli", "run", str(config), "--store", str(store),
            *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_jobs_2_stores_exactly_what_jobs_1_stores(tmp_path: Path, method: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "start_method", lambda threads, gpus: method)
    config = _write(tmp_path, SWEEP)
    one = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "one"), "-q"])
    assert one.exit_code == 0, one.output
    two = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "two"), "--jobs",
                              "2"])
    assert two.exit_code == 0, two.output
    for index in (1, 2, 3, 4):  # every run's result line reaches the parent's output
        assert f"run {index} " in two.output
    runs_one = open_store(tmp_path / "one").runs("jobs")
    runs_two = open_store(tmp_path / "two").runs("jobs")
    assert list(runs_two["status"]) == ["ok"] * 4
    assert list(runs_one["run_id"]) == list(runs_two["run_id"])
    # Two worker processes trained them, neither of them the parent.
    pids = {r["env"]["pid"] for r in runs_two.to_dict(orient="records")}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(r["env"]["threads"] == 1 for r in runs_two.to_dict(orient="records"))
    rows_one, rows_two = _rows(tmp_path / "one", "jobs"), _rows(tmp_path / "two", "jobs")
    # No lost and no duplicated row: the same keys, the same values.
    assert not rows_two.duplicated(["run_id", "key", "step"]).any()
    assert len(rows_one) == len(rows_two) > 100
    pd.testing.assert_frame_equal(rows_one[["run_id", "key", "step", "epoch", "value"]],
                                  rows_two[["run_id", "key", "step", "epoch", "value"]])
    all_two = open_store(tmp_path / "two").metrics()
    assert not all_two.duplicated(["run_id", "key", "step"]).any()
    assert set(all_two["key"]) >= {"time/train", "memory/peak_bytes", "throughput/samples_per_s"}


def test_jobs_0_is_bad_input(tmp_path: Path) -> None:
    config = _write(tmp_path, SWEEP)
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                 "--jobs", "0"])
    assert result.exit_code == 2
    assert "`--jobs` must be at least 1; got 0" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s" / "trainlab.db").exists() or open_store(
        tmp_path / "s").runs().empty


def test_jobs_options_that_do_not_fit_are_bad_input(tmp_path: Path) -> None:
    config = _write(tmp_path, SWEEP)
    local = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                "--executor", "local", "--jobs", "2"])
    assert local.exit_code == 2 and "--executor pool" in local.output
    wrong = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                "--executor", "pool", "--ray-address", "auto"])
    assert wrong.exit_code == 2 and "does not apply to --executor pool" in wrong.output
    typo = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                               "--executor", "pol"])
    assert typo.exit_code == 2 and "did you mean 'pool'" in typo.output


def _running_workers(store: Path, timeout: float = 120) -> list[tuple[str, int]]:
    """(run id, worker pid) of runs that are training, once some have recorded an epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with sqlite3.connect(store / "trainlab.db", timeout=5) as conn:
                rows = conn.execute(
                    "SELECT r.run_id, r.env FROM runs r WHERE r.status='running' AND EXISTS "
                    "(SELECT 1 FROM metrics m WHERE m.run_id=r.run_id AND m.epoch>=1)"
                ).fetchall()
        except sqlite3.Error:
            rows = []
        if rows:
            import json

            return [(r[0], json.loads(r[1])["pid"]) for r in rows]
        time.sleep(0.05)
    raise AssertionError("no run started training")


def test_a_worker_killed_mid_run_fails_only_its_run(tmp_path: Path) -> None:
    config = _write(tmp_path, SLOW)
    store = tmp_path / "store"
    proc = subprocess.Popen(_cli(config, store, "--jobs", "2", "-q"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, pid = _running_workers(store)[0]
    assert pid != proc.pid
    os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr  # the sweep finished, one run failed
    runs = open_store(store).runs("slow").set_index("run_id")
    assert runs.loc[victim, "status"] == "failed"
    assert "killed by signal SIGKILL" in runs.loc[victim, "error"]
    assert sorted(runs["status"]) == ["failed", "ok", "ok"]
    # A rerun retries it (from its last checkpoint) and the sweep is complete.
    rerun = subprocess.run(_cli(config, store, "-q"), env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    runs = open_store(store).runs("slow")
    assert list(runs["status"]) == ["ok"] * 3
    metrics = open_store(store).metrics(list(runs["run_id"]), ["valid/loss"])
    assert metrics.groupby("run_id").size().tolist() == [3] * 3
    assert not open_store(store).metrics().duplicated(["run_id", "key", "step"]).any()


def test_ctrl_c_with_jobs_exits_130_and_resumes(tmp_path: Path) -> None:
    config = _write(tmp_path, SLOW)
    store = tmp_path / "store"
    reference = tmp_path / "reference"
    done = subprocess.run(_cli(config, reference, "-q"), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(_cli(config, store, "--jobs", "2", "-q"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _running_workers(store)
    proc.send_signal(signal.SIGINT)  # to the parent only: it must reach the workers itself
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    statuses = set(open_store(store).runs("slow")["status"])
    assert "interrupted" in statuses and "running" not in statuses
    rerun = subprocess.run(_cli(config, store, "--jobs", "2", "-q"), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert list(open_store(store).runs("slow")["status"]) == ["ok"] * 3
    # Resumed mid-epoch, bit for bit: the results equal the uninterrupted sequential sweep's.
    pd.testing.assert_frame_equal(_rows(reference, "slow")[["run_id", "key", "step", "value"]],
                                  _rows(store, "slow")[["run_id", "key", "step", "value"]])


def test_workers_fork_only_where_it_is_safe() -> None:
    # A child forked from a process that has used torch's OpenMP pool hangs when it uses the
    # pool again (two threads here); at one thread it never does.
    linux = sys.platform.startswith("linux")
    assert pool.start_method(1, None) == ("fork" if linux else "spawn")
    assert pool.start_method(2, None) == "spawn"
    assert pool.start_method(1, ["0"]) == "spawn"  # a GPU slot is fixed before CUDA starts


def test_forked_workers_start_with_the_sweep_for_the_runs_it_has(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setattr(pool, "start_method", lambda threads, gpus: "fork")
    with open_store(tmp_path / "s") as st:
        prepared = prepare(load({**SWEEP, "grid": {"model.hidden_dim": [8]}}), st, jobs=3)
        assert prepared.executor.workers == []  # type: ignore[attr-defined]
        result = prepared.executor.execute(prepared.plan, prepared.store)
        assert [o.status for o in result.outcomes] == ["ok"]
        assert not multiprocessing.active_children()


def test_a_run_with_more_threads_gets_spawned_workers(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # train.threads: 2 in a child forked after the probes used the OpenMP pool would hang.
    monkeypatch.setattr(pool, "start_method", lambda threads, gpus: "fork")
    doc = {**SWEEP, "grid": {"model.hidden_dim": [8]},
           "train": {**SWEEP["train"], "threads": 2}}
    with open_store(tmp_path / "s") as st:
        prepared = prepare(load(doc), st, jobs=2)
        assert prepared.executor.start_method == "spawn"  # type: ignore[attr-defined]
        result = prepared.executor.execute(prepared.plan, prepared.store)
        assert [o.status for o in result.outcomes] == ["ok"]
        assert result.outcomes[0].summary["speed"]["threads"] == 2


def test_a_pool_ends_the_workers_it_has_no_run_for(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "start_method", lambda threads, gpus: "spawn")
    one_run = load({**SWEEP, "grid": {"model.hidden_dim": [8]}})
    with open_store(tmp_path / "s") as st:
        prepared = prepare(one_run, st, jobs=3)  # three workers start before planning
        try:
            assert len(prepared.executor.workers) == 1  # type: ignore[attr-defined]
        finally:
            prepared.close()
        assert not multiprocessing.active_children()
        # Bad input found after the workers started ends them too.
        unsplittable = load({**SWEEP, "data": {**SWEEP["data"], "batch_size": 1},
                             "train": {**SWEEP["train"], "nproc": 2}})
        with pytest.raises(ConfigError, match="batch_size"):
            prepare(unsplittable, st, jobs=2)
        assert not multiprocessing.active_children()
        assert len(st.runs()) == 1  # only the first sweep's run was registered


def test_lr_auto_runs_its_range_test_once_in_the_parent_with_jobs(tmp_path: Path) -> None:
    doc = {**SWEEP, "name": "auto", "optimizer": {"name": "adam", "lr": "auto"},
           "lr_find": {"steps": 20, "start": 1e-5, "end": 1.0},
           "seeds": [0, 1]}  # seed replicas share one range group
    del doc["grid"]
    result = runner.invoke(app, ["run", str(_write(tmp_path, doc)), "--store",
                                 str(tmp_path / "s"), "--jobs", "2", "-q"])
    assert result.exit_code == 0, result.output
    st = open_store(tmp_path / "s")
    runs = st.runs("auto")
    assert list(runs["status"]) == ["ok", "ok"]
    ranges = st.lr_ranges("auto")
    assert len(ranges) == 1  # one test for the group, run by the parent, not one per worker
    chosen = st.metrics(list(runs["run_id"]), ["lr/chosen"])
    assert len(chosen) == 2 and chosen["value"].nunique() == 1 and chosen["value"].iloc[0] > 0
    assert all(r["env"]["pid"] != os.getpid() for r in runs.to_dict(orient="records"))
