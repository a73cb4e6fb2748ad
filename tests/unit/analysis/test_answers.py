"""Answers on hand-made stores whose right answers are known (see conftest.lm_runs)."""

from __future__ import annotations

import math

import pytest

from tests.unit.analysis.fakes import LM_VARIED, lm_runs
from trainlab.analysis.answers import (
    answer_all,
    overfit_spans,
    pareto_front,
    tolerance_bound,
)
from trainlab.analysis.frames import METRICS, load_sweep


def _answers(store, **kw):
    frames = load_sweep(store, "lm")
    return {a.key: a for a in answer_all(frames, **kw)}


def test_wall_clock_first_to_reach_the_target(lm_store) -> None:
    answer = _answers(lm_store)["wall_clock"]
    assert answer.runs == ["3"]
    assert "88.00" in answer.answer and "after 4.0 s" in answer.answer
    assert "(epoch 2)" in answer.answer
    assert "Next: run 6 at 16.0 s (epoch 4)" in answer.answer
    assert "4 of 6 configurations never reach it" in answer.answer
    reached = [(e["run"], e["epoch"], e["seconds"]) for e in answer.evidence if e["seconds"]]
    assert reached == [("3", 2, 4.0), ("6", 4, 16.0)]


def test_wall_clock_with_an_explicit_target(lm_store) -> None:
    answer = _answers(lm_store, target=149.0)["wall_clock"]
    # PPL <= 149: run 3 at epoch 2 (4 s), run 6 at epoch 1 (4 s), run 1 at epoch 3 (9 s),
    # run 5 at epoch 2 (12 s); the sgd runs never.  Equal times keep the table's order.
    assert [(e["run"], e["epoch"], e["seconds"]) for e in answer.evidence] == [
        ("3", 2, 4.0), ("6", 1, 4.0), ("1", 3, 9.0), ("5", 2, 12.0), ("2", None, None),
        ("4", None, None)]
    assert "the target you gave" in answer.answer


def test_best_at_an_equal_time_budget(lm_store) -> None:
    answer = _answers(lm_store)["time_budget"]
    assert answer.runs == ["3"]
    assert "4.0 s" in answer.answer and "85.00" in answer.answer and "run 6 with 140.0" in \
        answer.answer
    by_run = {e["run"]: e for e in answer.evidence}
    assert by_run["5"]["validations within budget"] == 0
    assert by_run["1"]["best valid PPL within budget"] == 260


def test_generalization_ignores_runs_outside_the_tolerance(lm_store) -> None:
    answer = _answers(lm_store)["generalization"]
    assert answer.runs == ["3"]
    gaps = {e["run"]: e for e in answer.evidence}
    assert gaps["3"]["within tolerance"] and gaps["6"]["within tolerance"]
    assert not gaps["4"]["within tolerance"]
    assert math.isclose(gaps["3"]["gap (valid PPL / train PPL)"], 80 / 70)
    assert "Runs 4, 2, 1 have smaller gaps" in answer.answer


def test_pareto_fronts(lm_store) -> None:
    answers = _answers(lm_store)
    assert answers["pareto_time"].runs == ["4", "3"]
    assert answers["pareto_memory"].runs == ["4", "3"]
    front = [e["run"] for e in answers["pareto_time"].evidence if e["on front"]]
    assert front == ["4", "3"]


def test_overfitting_and_divergence(lm_store) -> None:
    answers = _answers(lm_store)
    over = answers["overfitting"]
    assert over.runs == ["5"]
    assert over.evidence[0]["from epoch"] == 2 and over.evidence[0]["to epoch"] == 4
    assert "90.00 -> 99.00" in over.answer
    assert answers["divergence"].answer == "No: all 6 runs finished normally."


def test_diverged_and_pending_runs_are_named_and_never_win(make_store) -> None:
    runs = lm_runs()
    # The diverged run would be the best of all by its last validation.
    runs[0] = {**runs[0], "status": "diverged", "valid": [260, 50, 40, 30],
               "error": "train loss became nan by step 40"}
    runs.append({"values": {"model.name": "gpt", "model.layers": 4, "optimizer.name": "adam"},
                 "status": "pending", "train": [], "valid": [], "time": []})
    frames = load_sweep(make_store("lm", LM_VARIED, runs), "lm")
    answers = {a.key: a for a in answer_all(frames)}
    assert "1 diverged, 1 pending of 7 runs" in answers["divergence"].answer
    assert "nan" in answers["divergence"].answer
    assert answers["divergence"].runs == ["1", "7"]
    assert "1" not in answers["wall_clock"].runs + answers["pareto_time"].runs
    assert answers["generalization"].runs == ["3"]


@pytest.mark.parametrize(("train", "valid", "k", "spans"), [
    ([5, 4, 3, 2, 1], [5, 4, 4.5, 5, 6], 2, [(2, 5)]),  # 3 worse epochs in a row
    ([5, 4, 3, 2, 1], [5, 4, 4.5, 4, 6], 2, []),  # never 2 in a row
    ([5, 4, 3, 2, 1], [5, 6, 7, 3, 4], 2, [(1, 3)]),
    ([5, 4, 4, 2, 1], [5, 6, 7, 8, 9], 2, [(3, 5)]),  # train flat at epoch 3: streak restarts
    ([5, 4, 3, 2, 1], [5, 6, 7, 8, 9], 5, []),
])
def test_overfit_spans(train, valid, k, spans) -> None:
    epochs = list(range(1, len(train) + 1))
    assert overfit_spans(train, valid, epochs, False, k) == spans


def test_overfit_spans_for_accuracy() -> None:
    # Higher is better: validation accuracy falling while train accuracy rises.
    assert overfit_spans([0.5, 0.6, 0.7, 0.8], [0.6, 0.7, 0.65, 0.6], [1, 2, 3, 4], True, 2) \
        == [(2, 4)]


def test_pareto_front_and_tolerance() -> None:
    assert pareto_front([1, 2, 3, 4], [10, 5, 7, 1], False) == [0, 1, 3]
    assert pareto_front([1, 2, math.nan], [0.5, 0.9, 1.0], True) == [0, 1]
    assert pareto_front([1, 1], [5, 5], False) == [0, 1]  # equal points dominate neither
    assert tolerance_bound(METRICS["perplexity"], 100.0) == pytest.approx(110.0)
    assert tolerance_bound(METRICS["accuracy"], 0.9) == pytest.approx(0.89)


def test_accuracy_sweep_answers(make_store) -> None:
    runs = [
        {"values": {"optimizer.lr": 0.1}, "train": [0.6, 0.8, 0.95], "valid": [0.55, 0.7, 0.72],
         "time": [1, 2, 2.5]},
        {"values": {"optimizer.lr": 0.01}, "train": [0.5, 0.65, 0.72],
         "valid": [0.5, 0.66, 0.715], "time": [1, 2, 3]},
        {"values": {"optimizer.lr": 0.001}, "train": [0.3, 0.4, 0.45],
         "valid": [0.3, 0.41, 0.45], "time": [1, 2, 3]},
    ]
    frames = load_sweep(make_store("acc", ["optimizer.lr"], runs, metric="accuracy"), "acc")
    assert frames.metric.name == "accuracy"
    answers = {a.key: a for a in answer_all(frames)}
    # Within 1 point of 0.72: runs 1 and 2; run 2's gap (0.005) beats run 1's (0.23).
    assert answers["generalization"].runs == ["2"]
    # 0.71 is reached at epoch 3 by both: run 1 after 2.5 s, run 2 after 3 s.
    assert answers["wall_clock"].runs == ["1"]
    assert "Next: run 2 at 3.0 s" in answers["wall_clock"].answer


def test_equal_times_to_the_target_are_a_tie(make_store) -> None:
    runs = [{"values": {"optimizer.lr": lr}, "train": [3.0, 2.0], "valid": [2.5, 1.5],
             "time": [1, 2]} for lr in (0.1, 0.2)]
    frames = load_sweep(make_store("tie", ["optimizer.lr"], runs, metric="perplexity"), "tie")
    answer = {a.key: a for a in answer_all(frames)}["wall_clock"]
    assert answer.runs == ["1", "2"] and "tied with run 2" in answer.answer


def test_a_collapse_to_chance_is_instability_not_overfitting(make_store) -> None:
    from trainlab.analysis.answers import collapse

    runs = [
        {"values": {"optimizer.lr": 1e-3}, "train": [0.5, 0.9, 0.95, 0.97],
         "valid": [0.5, 0.93, 0.4, 0.08], "time": [1, 2, 3, 4]},  # collapses to chance
        {"values": {"optimizer.lr": 1e-4}, "train": [0.5, 0.7, 0.8, 0.9],
         "valid": [0.5, 0.7, 0.65, 0.6], "time": [1, 2, 3, 4]},  # overfits
    ]
    frames = load_sweep(make_store("c", ["optimizer.lr"], runs, "accuracy"), "c")
    answers = {a.key: a for a in answer_all(frames)}
    assert answers["overfitting"].runs == ["2"]
    assert "run 1, which collapsed" in answers["overfitting"].answer
    div = answers["divergence"]
    assert div.runs == ["1"] and div.evidence[0]["status"] == "collapsed"
    assert "1 collapsed of 2 runs" in div.answer and "0.93" in div.answer
    assert "0.08" in div.answer and "instability" in div.answer
    assert collapse([0.5, 0.93, 0.4, 0.08], [1, 2, 3, 4], True) == (2, 3, 0.93, 0.08)
    assert collapse([3.0, 2.0, 2.5, 3.5], [1, 2, 3, 4], False) == (2, 4, 2.0, 3.5)
    assert collapse([0.5, 0.7, 0.65, 0.6], [1, 2, 3, 4], True) is None


def test_the_best_lr_for_each_schedule(make_store) -> None:
    """CS5260's question: four LRs under a constant schedule and under StepLR; the best LR of
    each, and a warning when it sits at the edge of the LRs tried."""
    runs = []
    acc = {("constant", 0.001): 0.80, ("constant", 0.01): 0.90, ("constant", 0.1): 0.85,
           ("constant", 1.0): 0.30, ("step", 0.001): 0.70, ("step", 0.01): 0.80,
           ("step", 0.1): 0.88, ("step", 1.0): 0.92}
    for (schedule, lr), best in acc.items():
        runs.append({"values": {"schedule.name": schedule, "optimizer.lr": lr},
                     "train": [best - 0.1, best], "valid": [best - 0.1, best], "time": [1, 2]})
    store = make_store("lrs", ["schedule.name", "optimizer.lr"], runs, metric="accuracy")
    answers = {a.key: a for a in answer_all(load_sweep(store, "lrs"))}
    answer = answers["best_lr"]
    assert "schedule=constant: lr 0.01 (run 2, Acc 0.9000)" in answer.answer
    assert "schedule=step: lr 1 (run 8, Acc 0.9200) (the edge of the LRs tried" in answer.answer
    assert answer.runs == ["2", "8"]
    assert [e["best lr"] for e in answer.evidence] == [0.01, 1.0]


def test_no_lr_question_without_an_lr_sweep(lm_store) -> None:
    assert "best_lr" not in {a.key for a in answer_all(load_sweep(lm_store, "lm"))}
