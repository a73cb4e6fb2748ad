"""Timing arithmetic on made-up clock readings (no clock, no device)."""

from __future__ import annotations

import math

import pytest

from trainlab.engine.timing import epoch_rates, median_of, training_seconds


def test_training_seconds_leaves_out_pauses_and_io_and_adds_the_part_before_a_resume() -> None:
    # A clock read at 100.0 and 112.5; validation paused 2 s of it, a checkpoint took 0.5 s.
    assert training_seconds(100.0, 112.5, paused=2.0, io=0.5) == pytest.approx(10.0)
    assert training_seconds(100.0, 112.5, paused=2.0, io=0.5, before=3.0) == pytest.approx(13.0)
    assert training_seconds(5.0, 5.0) == 0.0


def test_rates_of_an_image_epoch() -> None:
    rates = epoch_rates(1000, 4.0)
    assert rates == {"throughput/samples_per_s": 250.0}


def test_rates_of_a_language_model_epoch_count_tokens() -> None:
    rates = epoch_rates(1000, 4.0, tokens_per_example=64)
    assert rates["throughput/tokens_per_s"] == 250.0 * 64


def test_flops_follow_samples_not_batches_and_mfu_is_against_the_peak() -> None:
    # 10 batches of 32 and a short last one of 8: 328 samples, 1e9 FLOPs per full batch.
    rates = epoch_rates(328, 2.0, flops_per_batch=1e9, batch_size=32, peak_flops=1e11)
    assert rates["perf/flops_per_s"] == pytest.approx(1e9 * 328 / 32 / 2.0)
    assert rates["perf/mfu"] == pytest.approx(rates["perf/flops_per_s"] / 1e11)


def test_no_time_measured_gives_nan_throughput_and_no_flop_rates() -> None:
    rates = epoch_rates(100, 0.0, flops_per_batch=1e9, batch_size=10, peak_flops=1e11)
    assert math.isnan(rates["throughput/samples_per_s"])
    assert "perf/flops_per_s" not in rates and "perf/mfu" not in rates


def test_no_peak_gives_flop_rate_without_mfu() -> None:
    rates = epoch_rates(100, 1.0, flops_per_batch=1e9, batch_size=10, peak_flops=None)
    assert rates["perf/flops_per_s"] == pytest.approx(1e10) and "perf/mfu" not in rates


def test_median_of_skips_epochs_without_a_finite_value() -> None:
    epochs = [{"a": 3.0}, {"a": float("nan")}, {"b": 1.0}, {"a": 1.0}, {"a": 2.0}]
    assert median_of(epochs, "a") == 2.0
    assert median_of(epochs, "missing") is None
    assert median_of([{"a": float("inf")}], "a") is None
