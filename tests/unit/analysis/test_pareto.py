"""Pareto fronts: differences within a measurement's noise are ties (issue 21)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.unit.analysis.fakes import lm_runs
from trainlab.analysis.answers import answer_all
from trainlab.analysis.frames import load_sweep
from trainlab.analysis.pareto import cost_noise, noisy_front, pareto_front
from trainlab.store import Store

VARIED = ["model.name", "model.layers", "optimizer.name"]


def test_exact_front_unchanged() -> None:
    assert pareto_front([1, 2, 3, 4], [10, 5, 7, 1], False) == [0, 1, 3]
    assert noisy_front([1, 2, 3, 4], [10, 5, 7, 1], False).front == [0, 1, 3]


def test_a_lead_within_the_noise_is_a_tie() -> None:
    # Cheaper by 0.3 MiB but worse: the dearer, better point stays; the other ties with it.
    got = noisy_front([100.0, 100.3, 200.0], [0.90, 0.91, 0.95], True, [2.0] * 3, [0.0] * 3)
    assert got.front == [1, 2] and got.ties == {0: 1}
    # Within the noise on both measures: one stays (the better value), the other ties.
    got = noisy_front([100.0, 100.3, 200.0], [0.910, 0.912, 0.95], True, [2.0] * 3, [0.005] * 3)
    assert got.front == [1, 2] and got.ties == {0: 1}
    # Beyond the noise: both stay, as the exact front has them.
    got = noisy_front([10.0, 20.0], [0.5, 0.9], True, [1.0, 1.0], [0.0, 0.0])
    assert got.front == [0, 1] and got.ties == {}
    # Lower is better (perplexity): the same rule mirrored.
    got = noisy_front([50.0, 50.5], [80.0, 81.0], False, [1.0, 1.0], [0.0, 0.0])
    assert got.front == [0] and got.ties == {}  # cheaper (within noise) and better: dominates


def _runs(memory: dict[int, float], times: dict[int, list[float]] | None = None
          ) -> list[dict[str, Any]]:
    runs = lm_runs()
    for number, mib in memory.items():
        runs[number - 1]["memory"] = mib
    for number, t in (times or {}).items():
        runs[number - 1]["time"] = t
    return runs


def test_memory_front_ties_runs_a_fraction_of_a_mib_apart(
        make_store: Callable[..., Store]) -> None:
    """Run 4 (gpt sgd, PPL 379) is cheapest; run 3 (gpt adam, PPL 80) is the front's second
    point.  Put run 3 0.3 MiB above run 4: run 4's lead is noise, run 3 dominates it."""
    frames = load_sweep(make_store("lm", VARIED, _runs({3: 240.3, 4: 240.0})), "lm")
    answer = next(a for a in answer_all(frames) if a.key == "pareto_memory")
    assert answer.runs == ["3"]
    tie = next(e for e in answer.evidence if e["run"] == "4")
    assert tie["tie with"] == "3" and not tie["on front"]
    assert "run 4 with run 3" in answer.answer and "max(1 MiB, 2%)" in answer.answer
    from trainlab.analysis.report import _pareto_figures

    figure = next(f for f in _pareto_figures(frames) if f.name == "pareto_memory")
    labels = [t.get_text() for t in figure.figure.axes[0].texts]
    assert "4 tie" in labels and "tie" in figure.caption
    assert figure.figure.axes[0].collections[1].get_offsets()[:, 0].tolist() == [240.3]


def test_time_noise_is_the_runs_own_epoch_spread(make_store: Callable[..., Store]) -> None:
    # Run 4's epochs took 1, 1.5, 0.5, 1 s; past the first (warm-up) a coefficient of
    # variation of 0.5 (std 0.5 s, mean 1 s): 2 s of its 4 s.
    frames = load_sweep(make_store("lm", VARIED, _runs({}, {4: [1, 2.5, 3, 4]})), "lm")
    configs = frames.runs.assign(run_ids=[[r] for r in frames.runs["run_id"]])
    noise = cost_noise(frames, configs, "train_time")
    steady = noise[int(configs.index[configs["index"] == 3][0])]
    shaky = noise[int(configs.index[configs["index"] == 4][0])]
    assert abs(steady - 0.08) < 1e-9  # 1 % of 8 s: the floor
    assert abs(shaky - 2.0) < 1e-9
