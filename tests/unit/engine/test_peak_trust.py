"""MFU never above 1: the process keeps the best matmul peak measured, and an epoch that beats
the peak records ``perf/mfu_unreliable`` (not an MFU) and raises the peak for later runs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainlab.config.schema import resolve_run
from trainlab.engine import flops, train
from trainlab.engine.timing import epoch_rates
from trainlab.mfu import UNRELIABLE_NOTE, trusted_metric_rows, trusted_summary
from trainlab.records import NullSink

RAW: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 32, "limit": 256},
    "model": {"name": "mlp", "hidden_dim": 32},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 2, "log_every": 4, "device": "cpu"},
}
CPU = torch.device("cpu")


@pytest.fixture
def peaks(monkeypatch: pytest.MonkeyPatch) -> dict:
    """An empty per-process peak cache for the test (the real one is restored after)."""
    cache: dict = {}
    monkeypatch.setattr(flops, "_PEAKS", cache)
    return cache


def test_the_cache_keeps_the_best_of_several_measurements(peaks: dict) -> None:
    readings = iter([5e9, 9e9, 7e9])
    calls: list[float] = []

    def fake(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
        calls.append(seconds)
        return next(readings)

    assert flops.measure_peak_flops(CPU, sample=fake) == 5e9  # the first call measures
    assert flops.measure_peak_flops(CPU, sample=fake) == 5e9  # reused: no measurement
    assert flops.measure_peak_flops(CPU, refresh=True, sample=fake) == 9e9  # a higher one wins
    assert flops.measure_peak_flops(CPU, refresh=True, sample=fake) == 9e9  # a lower one not
    assert calls == [0.25, 0.0625, 0.0625]  # the top-ups are short
    # Per dtype: bf16's peak is its own.
    assert flops.measure_peak_flops(CPU, torch.bfloat16, sample=lambda *a: 1e9) == 1e9
    assert flops.measure_peak_flops(CPU) == 9e9
    # A rate a run achieved above the peak raises it; one below leaves it.
    assert flops.raise_peak_flops(CPU, torch.float32, 12e9)
    assert not flops.raise_peak_flops(CPU, torch.float32, 10e9)
    assert flops.measure_peak_flops(CPU) == 12e9


def test_a_real_measurement_raises_the_cache_only_when_higher(peaks: dict) -> None:
    measured = flops.sample_peak_flops(CPU, torch.float32, seconds=0.02)
    assert measured > 0 and flops.measure_peak_flops(CPU) == measured
    flops.raise_peak_flops(CPU, torch.float32, measured * 100)
    flops.sample_peak_flops(CPU, torch.float32, seconds=0.02)
    assert flops.measure_peak_flops(CPU) == measured * 100


def test_an_epoch_above_the_peak_records_no_mfu() -> None:
    rates = epoch_rates(320, 1.0, flops_per_batch=1e9, batch_size=32, peak_flops=5e9)
    assert rates["perf/flops_per_s"] == pytest.approx(1e10)
    assert "perf/mfu" not in rates and rates["perf/mfu_unreliable"] == 1.0
    exact = epoch_rates(320, 1.0, flops_per_batch=1e9, batch_size=32, peak_flops=1e10)
    assert exact["perf/mfu"] == pytest.approx(1.0)
    # A run that already found its peak too low flags every later epoch too.
    later = epoch_rates(320, 1.0, flops_per_batch=1e9, batch_size=32, peak_flops=1e11,
                        peak_too_low=True)
    assert "perf/mfu" not in later and later["perf/mfu_unreliable"] == 1.0


def test_a_run_whose_peak_was_measured_low_records_no_mfu_above_one(
        peaks: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flops, "sample_peak_flops", lambda *a, **k: 1e3)  # 1 kFLOP/s: too low
    sink = NullSink()
    outcome = train(resolve_run(RAW), sink=sink)
    assert outcome.status == "ok"
    keys = [r.key for r in sink.records]
    assert "perf/mfu" not in keys and keys.count("perf/mfu_unreliable") == 2
    assert outcome.summary["mfu"] is None and outcome.summary["mfu_note"] == UNRELIABLE_NOTE
    # The process's peak now is the rate the run achieved: a later run divides by at least it.
    achieved = max(r.value for r in sink.records if r.key == "perf/flops_per_s")
    assert flops.measure_peak_flops(CPU) == achieved
    later = NullSink()
    train(resolve_run(RAW), sink=later)
    assert all(r.value <= 1 for r in later.records if r.key == "perf/mfu")


def test_a_normal_run_records_an_mfu_in_zero_to_one() -> None:
    sink = NullSink()
    outcome = train(resolve_run(RAW), sink=sink)
    mfu = [r.value for r in sink.records if r.key == "perf/mfu"]
    assert len(mfu) == 2 and all(0 < v <= 1 for v in mfu)
    assert 0 < outcome.summary["mfu"] <= 1 and "mfu_note" not in outcome.summary


def test_older_values_above_one_are_shown_as_unreliable() -> None:
    assert trusted_summary({"mfu": 1.12, "x": 1}) == {"mfu": None, "mfu_note": UNRELIABLE_NOTE,
                                                      "x": 1}
    assert trusted_summary({"mfu": 0.4}) == {"mfu": 0.4}
    rows = trusted_metric_rows([{"key": "perf/mfu", "value": 1.24, "epoch": 1},
                                {"key": "perf/mfu", "value": 0.5, "epoch": 2}])
    assert rows == [{"key": "perf/mfu_unreliable", "value": 1.0, "epoch": 1},
                    {"key": "perf/mfu", "value": 0.5, "epoch": 2}]


def test_a_refresh_in_seconds_skips_a_peak_measured_that_recently(
        peaks: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run that `trainlab run` starts right after its estimate measured the peak does not
    measure it again (refresh=PEAK_FRESH_S); an older peak is topped up as with refresh=True."""
    monkeypatch.setattr(flops, "_MEASURED_AT", {})
    calls: list[float] = []

    def fake(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
        calls.append(seconds)
        return 5e9 + len(calls)

    flops.measure_peak_flops(CPU, sample=fake)
    assert flops.measure_peak_flops(CPU, refresh=flops.PEAK_FRESH_S, sample=fake) == 5e9 + 1
    assert calls == [0.25]
    assert flops.measure_peak_flops(CPU, refresh=0.0, sample=fake) == 5e9 + 2  # stale: topped up
    assert calls == [0.25, 0.0625]
