"""train.stack under --jobs N and Ray: each stack is one unit of work that one worker process
trains as one model, the parent storing every run under its own id; the results equal the
local executor's stacked runs; a member already trained is skipped and one that another
process holds is ``busy``, the rest still stack; a worker that dies mid-stack fails only the
stack's runs it held."""

from __future__ import annotations

import os
import socket
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

import trainlab
from trainlab.api import load, prepare
from trainlab.cli import app
from trainlab.execute import pool
from trainlab.execute.units import OWN_CALLBACKS, Claims, Unit, plan_units
from trainlab.hooks import RunOutcome
from trainlab.plan import PlannedRun
from trainlab.store import open_store

runner = CliRunner()
GRID: dict[str, Any] = {  # 8 runs that differ in LR and seed only: two stacks of 4
    "name": "stackjobs", "data": {"name": "digits", "batch_size": 64, "limit": 256},
    "model": {"name": "mlp", "hidden_dim": 16}, "optimizer": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 2, "threads": 1, "log_every": 2, "stack": 4},
    "grid": {"optimizer.lr": [0.02, 0.05, 0.1, 0.2]}, "seeds": [0, 1]}


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _final(store: Path, key: str = "valid/loss") -> pd.Series:
    st = open_store(store)
    metrics = st.metrics(list(st.runs(GRID["name"])["run_id"]), [key])
    return metrics.sort_values("step").groupby("run_id")["value"].last().sort_index()


def _stacked(store: Path) -> dict[str, float]:
    st = open_store(store)
    metrics = st.metrics(list(st.runs(GRID["name"])["run_id"]), ["perf/stacked"])
    return dict(zip(metrics["run_id"], metrics["value"]))


def _check_like_local(tmp_path: Path, store: Path, output: str, workers: int = 2) -> None:
    """Every run ok, stacked x4, one process per stack, the local executor's values."""
    runs = open_store(store).runs(GRID["name"])
    assert list(runs["status"]) == ["ok"] * 8
    assert sorted(_stacked(store).values()) == [4.0] * 8
    assert all(s["speed"]["stacked"] == 4 for s in runs["summary"])
    # Each stack trained in one worker process (not this one), the two stacks in two.
    pids = {tuple(env["stack"]): env["pid"] for env in runs["env"]}
    assert len(pids) == 2 and os.getpid() not in pids.values()
    assert len({(tuple(env["stack"]), env["pid"]) for env in runs["env"]}) == 2
    assert len(set(pids.values())) >= workers
    for index in range(1, 9):
        assert f"run {index} " in output
    local = runner.invoke(app, ["run", str(tmp_path / "grid.yaml"), "--store",
                                str(tmp_path / "local"), "-q", "--no-estimate"])
    assert local.exit_code == 0, local.output
    assert sorted(_stacked(tmp_path / "local").values()) == [4.0] * 8
    pd.testing.assert_series_equal(_final(store), _final(tmp_path / "local"), rtol=1e-5)


def test_jobs_2_trains_two_stacks_at_once_as_the_local_executor_does(tmp_path: Path) -> None:
    config = _write(tmp_path, GRID)
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "jobs"),
                                 "--jobs", "2", "--no-estimate"])
    assert result.exit_code == 0, result.output
    assert "8 to train" in result.output
    _check_like_local(tmp_path, tmp_path / "jobs", result.output)
    # GRID sets train.threads: 1; with auto a stack picks within its worker's share.
    auto = _write(tmp_path, {**GRID, "train": {**GRID["train"], "threads": "auto"}})
    result = runner.invoke(app, ["run", str(auto), "--store", str(tmp_path / "auto"),
                                 "--jobs", "2", "--no-estimate", "-q"])
    assert result.exit_code == 0, result.output
    share = max(1, pool.usable_cores() // 2)
    runs = open_store(tmp_path / "auto").runs(GRID["name"])
    assert all(1 <= s["speed"]["threads"] <= share for s in runs["summary"])
    assert sorted(_stacked(tmp_path / "auto").values()) == [4.0] * 8


def test_a_trained_member_is_skipped_and_a_held_one_is_busy_the_rest_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "start_method", lambda threads, gpus: "spawn")
    with open_store(tmp_path / "st") as st:
        done = trainlab.run({**GRID, "grid": {"optimizer.lr": [0.02]}, "seeds": [0]},
                            store=st, estimate=False)  # run 1 of the grid, trained alone
        assert [o.status for o in done.outcomes] == ["ok"]
        prepared = prepare(load(GRID), st, jobs=2)
        try:
            plan = prepared.plan
            assert len(plan.todo) == 7 and done.outcomes[0].run_id not in {
                p.run_id for p in plan.todo}
            held = plan.todo[1].run_id  # in the first stack: another live process holds it
            sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            try:
                with sqlite3.connect(tmp_path / "st" / "trainlab.db") as conn:
                    conn.execute("UPDATE runs SET status='running', host=?, pid=?, heartbeat=? "
                                 "WHERE run_id=?", (socket.gethostname(), sleeper.pid,
                                                    time.time(), held))
                result = prepared.executor.execute(plan, prepared.store)
            finally:
                sleeper.kill()
                sleeper.wait()
        finally:
            prepared.close()
        assert result.exit_code == 0  # busy is another process's run: not a failure
        status = {o.run_id: o.status for o in result.outcomes}
        assert len(status) == 7 and status.pop(held) == "busy"
        assert set(status.values()) == {"ok"}
        stacked = _stacked(tmp_path / "st")
        # Runs 2-5 made the first stack (run 1 was done), less the held one: 3; runs 6-8: 3.
        assert held not in stacked and sorted(stacked.values()) == [3.0] * 6
        runs = st.runs(GRID["name"]).set_index("run_id")
        assert runs.loc[done.outcomes[0].run_id, "status"] == "ok"
        assert runs.loc[held, "status"] == "running"  # left to its holder


def test_units_keep_sweep_order_and_say_why_a_run_trains_alone() -> None:
    doc = {**GRID, "grid": {"optimizer.lr": [0.02, 0.05, 0.1]},
           "runs": [{"optimizer.name": "rmsprop"}]}
    from trainlab.config import expand
    from trainlab.config.schema import SweepConfig

    planned = [PlannedRun(r, "new", "train", {})
               for r in expand(SweepConfig.model_validate(doc))]
    units = plan_units(planned)
    assert [len(u) for u in units] == [4, 2, 1, 1]  # 3 LRs x 2 seeds; rmsprop x 2 seeds
    assert [p.run_id for u in units for p in u.runs] == [
        p.run_id for p in planned if p.run.config.optimizer.name == "sgd"] + [
        p.run_id for p in planned if p.run.config.optimizer.name == "rmsprop"]
    assert units[0].stacked and units[0].alone is None
    assert all("rmsprop" in (u.alone or "") for u in units[2:])
    off = plan_units([PlannedRun(r, "new", "train", {}) for r in expand(SweepConfig.model_validate(
        {**doc, "train": {**doc["train"], "stack": "off"}}))])
    assert all(len(u) == 1 and u.alone is None for u in off)
    # A search trial's runs with a pruner (callbacks of their own) train alone: a stack would
    # never report an epoch to it; the others still stack.
    pruned = [PlannedRun(p.run, "new", "train", {}, (object(),)) if i < 2 else p
              for i, p in enumerate(planned)]
    units = plan_units(pruned)
    assert [len(u) for u in units] == [1, 1, 4, 1, 1]
    assert units[0].alone == units[1].alone == OWN_CALLBACKS


def test_a_dead_workers_stack_keeps_what_it_stored_and_fails_what_it_held(
        tmp_path: Path) -> None:
    from trainlab.config import expand
    from trainlab.config.schema import SweepConfig

    runs = [PlannedRun(r, "new", "train", {}) for r in expand(SweepConfig.model_validate(GRID))]
    unit = Unit(tuple(runs[:4]))
    claims = Claims()
    ids = [p.run_id for p in unit.runs]
    claims.note(("start_run", ids[0], {}), True)
    claims.note(("start_run", ids[1], {}), False)  # another process holds it
    claims.note(("start_run", ids[2], {}), True)
    claims.note(("finish_run", ids[0], "ok", None, {"epochs": 2}), None)

    class Store:
        def __init__(self) -> None:
            self.finished: list[tuple[str, str]] = []

        def finish_run(self, run_id: str, status: str, error: str | None,
                       summary: dict[str, Any]) -> None:
            self.finished.append((run_id, status))

    store = Store()
    lost = claims.lost(unit, store, "the worker died")  # type: ignore[arg-type]
    assert [o for _, o in lost] == [
        RunOutcome(ids[0], "ok", None, {"epochs": 2}),
        RunOutcome(ids[1], "busy", "another process is training or has trained this run", {}),
        RunOutcome(ids[2], "failed", "the worker died", {}),
        RunOutcome(ids[3], "failed", "the worker died", {})]
    assert store.finished == [(ids[2], "failed"), (ids[3], "failed")]  # never the held one
    skipped = claims.lost(unit, Store(), "cancelled",  # type: ignore[arg-type]
                          skip=lambda rid: rid not in claims.claimed)
    assert [o.run_id for _, o in skipped] == ids[:3]


def test_a_local_ray_trains_each_stack_as_one_task(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="CI installs the ray extra; pip install 'trainlab[ray]'")
    config = _write(tmp_path, GRID)
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "ray"),
                                 "--executor", "ray", "--cpus-per-run", "1", "--jobs", "2",
                                 "--no-estimate"])
    assert result.exit_code == 0, result.output
    # Ray may run the second task in the worker the first one left: one process or two.
    _check_like_local(tmp_path, tmp_path / "ray", result.output, workers=1)
