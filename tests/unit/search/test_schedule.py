"""Parallel trials are told as each finishes: the next ask follows the first tell, not the
batch (a fake executor whose runs finish newest first, with no training)."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from trainlab.config.schema import SweepConfig
from trainlab.execute import SweepResult
from trainlab.hooks import RunOutcome
from trainlab.plan import Plan
from trainlab.records import MetricRecord
from trainlab.store import open_store

pytest.importorskip("optuna")

from trainlab.search.driver import Search, run_search


class NewestFirst:
    """Keeps ``jobs`` runs in flight; the one started last finishes first."""

    accepts_feed = True

    def __init__(self) -> None:
        self.executions = 0

    def prepare(self, plan: Plan) -> None:
        pass

    def close(self) -> None:
        pass

    def execute(self, plan: Plan, store: Any, observer: Any = None, feed: Any = None
                ) -> SweepResult:
        self.executions += 1
        result = SweepResult(plan)
        inflight = deque(plan.todo)
        while inflight:
            planned = inflight.pop()
            lr = planned.run.config.optimizer.lr
            store.start_run(planned.run_id, {})
            store.write([MetricRecord(planned.run_id, "valid/accuracy", 1, 1, 0.0,
                                      1.0 - abs(math.log10(lr) + 2.0))])
            store.finish_run(planned.run_id, "ok", None, {})
            outcome = RunOutcome(planned.run_id, "ok", None, {})
            result.outcomes.append(outcome)
            feed.finished(planned, outcome)
            more = feed.more()
            if more is not None:
                inflight.extend(more.todo)
        return result


def test_the_next_trial_is_asked_after_the_first_tell_not_after_the_batch(
        tmp_path: Path) -> None:
    sweep = SweepConfig.model_validate({
        "name": "s", "data": {"name": "digits"}, "model": {"name": "mlp"},
        "train": {"epochs": 1}, "search": {"method": "tpe", "trials": 6,
                                           "metric": "valid/accuracy",
                                           "space": {"optimizer.lr": {"log": [1e-4, 1.0]}}}})
    executor = NewestFirst()
    with open_store(tmp_path / "st") as store:
        result = run_search(sweep, store, executor, 2)  # type: ignore[arg-type]
        runs = store.runs("s")
    assert executor.executions == 1  # one executor call (one pool) for the whole search
    assert result.exit_code == 0 and len(result.outcomes) == 6
    assert len(runs) == 6 and set(runs["status"]) == {"ok"}
    lrs = [o["optimizer.lr"] for o in runs["overrides"]]
    assert len(set(lrs)) == 6  # never two trials with the same params
    log = result.log
    # Trials 0 and 1 start together; 1 finishes first, is told, and trial 2 is asked while
    # trial 0 still trains.
    assert log[:4] == [("ask", 0), ("ask", 1), ("tell", 1), ("ask", 2)]
    assert log.index(("tell", 0)) == len(log) - 1


class Idle(NewestFirst):
    """Trains nothing: the opening trial stays in the store, unfinished."""

    def execute(self, plan: Plan, store: Any, observer: Any = None, feed: Any = None
                ) -> SweepResult:
        return SweepResult(plan)


def test_an_unfinished_trial_gains_runs_for_seeds_added_later(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "name": "s", "data": {"name": "digits"}, "model": {"name": "mlp"},
        "train": {"epochs": 1}, "seeds": [0],
        "search": {"method": "random", "trials": 2, "metric": "valid/accuracy",
                   "space": {"optimizer.lr": {"log": [1e-4, 1.0]}}}}
    with open_store(tmp_path / "st") as store:
        run_search(SweepConfig.model_validate(raw), store, Idle(), 1)  # type: ignore[arg-type]
        (stored,) = store.runs("s")["run_id"]
        search = Search(SweepConfig.model_validate({**raw, "seeds": [0, 1]}), store)
        ((_, trial),) = search.next_batch(1)
    assert [r.overrides["train.seed"] for r in trial.runs] == [0, 1]
    assert trial.runs[0].run_id == stored
