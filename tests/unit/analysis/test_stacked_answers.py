"""Time answers never compare runs trained in a stack (train.stack: their times are the
stack's) with runs trained alone (made-up stores, no training)."""

from __future__ import annotations

from collections.abc import Callable

from tests.unit.analysis.fakes import LM_VARIED, lm_runs
from trainlab.analysis.answers import answer_all
from trainlab.analysis.frames import load_sweep
from trainlab.store import Store


def test_time_answers_leave_stacked_runs_out_when_others_trained_alone(
        make_store: Callable[..., Store]) -> None:
    runs = lm_runs()
    runs[2]["stacked"] = 2  # without it, run 3 wins all three time answers (test_answers.py)
    frames = load_sweep(make_store("lm", LM_VARIED, runs), "lm")
    answers = {a.key: a for a in answer_all(frames)}
    for key in ("wall_clock", "time_budget", "pareto_time"):
        assert "3" not in answers[key].runs, key
        assert "Left out: run 3, trained in a stack" in answers[key].answer, key
    assert "3" not in [e["run"] for e in answers["wall_clock"].evidence]
    assert "3" in answers["pareto_memory"].runs  # memory and quality do not use the clock
    assert answers["generalization"].runs == ["3"]


def test_time_answers_rank_runs_that_all_trained_in_stacks(
        make_store: Callable[..., Store]) -> None:
    runs = lm_runs()
    for run in runs:
        run["stacked"] = len(runs)
    answers = {a.key: a for a in answer_all(load_sweep(make_store("lm", LM_VARIED, runs),
                                                       "lm"))}
    wall = answers["wall_clock"]
    assert wall.runs == ["3"] and "comparable with stacked runs only" in wall.answer
