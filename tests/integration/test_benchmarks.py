"""The benchmarks still run: one round of the overhead comparison on the smallest workload.

Their numbers are not asserted (timings are noise on a shared machine); what is asserted is
that every contender trained the same number of steps and the paired ratios are computed."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repository_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))


def test_overhead_benchmark_measures_every_contender(tmp_path: Path) -> None:
    from benchmarks.overhead import CONTENDERS, measure

    result = measure("digits-mlp", 1, tmp_path)
    assert set(result["step_ms"]) == set(CONTENDERS)
    assert all(v > 0 for v in result["step_ms"].values())
    assert result["engine_vs_plain"] > 0 and result["script_vs_plain"] > 0
    lo, hi = result["engine_vs_plain_range"]
    assert lo == hi == result["engine_vs_plain"]  # one round: one paired ratio


def test_engine_and_plain_take_the_same_steps(tmp_path: Path) -> None:
    from benchmarks.common import WORKLOADS, engine, plain, script

    raw = {**WORKLOADS["digits-mlp"], "train": {"epochs": 1, "seed": 0}}
    counts = []
    for contender in (engine, plain, script):
        steps: list[float] = []
        contender(raw, tmp_path / contender.__name__, steps=steps)
        counts.append(len(steps))
    assert counts[0] == counts[1] == counts[2] > 0, counts
