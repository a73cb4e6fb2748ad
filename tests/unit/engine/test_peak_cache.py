"""The matmul peak kept across processes: a fresh peak measured on a quiet machine is reused
instead of measured, an old or disturbed one is measured again, and fakes never reach the file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from trainlab.engine import contention, flops, peak_cache

CPU = torch.device("cpu")


@pytest.fixture
def sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fresh process (empty in-memory peaks) with a cache file of its own and a counting
    sampler that stands for the real one; returns the list of its readings."""
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops, "_PEAKS", {})
    monkeypatch.setattr(flops, "_MEASURED_AT", {})
    calls: list[float] = []

    def real(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
        calls.append(seconds)
        return 1e9 * len(calls)

    monkeypatch.setattr(flops, "sample_peak_flops", real)
    monkeypatch.setattr(flops, "_REAL_SAMPLER", real)
    quiet = {contention.DISTURBED_KEY: 0.0}
    monkeypatch.setattr(contention, "epoch_contention", lambda *a, **k: quiet)
    return calls


def _new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flops, "_PEAKS", {})
    monkeypatch.setattr(flops, "_MEASURED_AT", {})


def _entries() -> dict:
    return json.loads(peak_cache.cache_path().read_text())


def test_a_quiet_peak_is_reused_by_the_next_process(
        sampler: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    assert flops.measure_peak_flops(CPU) == 1e9
    [entry] = _entries().values()
    assert entry["peak"] == 1e9 and not entry["disturbed"]
    _new_process(monkeypatch)
    assert flops.measure_peak_flops(CPU) == 1e9
    # Found fresh: the run's start (refresh=PEAK_FRESH_S) does not top it up either.
    assert flops.measure_peak_flops(CPU, refresh=flops.PEAK_FRESH_S) == 1e9
    assert sampler == [0.25]
    # Other threads or dtypes are other entries.
    assert flops.measure_peak_flops(CPU, torch.float64) == 2e9 and len(_entries()) == 2


def test_an_old_entry_is_measured_again(sampler: list[float],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    flops.measure_peak_flops(CPU)
    _new_process(monkeypatch)
    later = time.time() + peak_cache.MAX_AGE_S + 1
    monkeypatch.setattr(peak_cache.time, "time", lambda: later)
    assert flops.measure_peak_flops(CPU) == 2e9 and sampler == [0.25, 0.25]


def test_a_disturbed_measurement_is_a_floor_the_next_process_measures_above(
        sampler: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    busy = {contention.DISTURBED_KEY: 1.0}
    monkeypatch.setattr(contention, "epoch_contention", lambda *a, **k: busy)
    monkeypatch.setattr(flops, "_REAL_SAMPLER", flops.sample_peak_flops)
    assert flops.measure_peak_flops(CPU) == 1e9
    assert next(iter(_entries().values()))["disturbed"]
    _new_process(monkeypatch)
    monkeypatch.setattr(flops, "sample_peak_flops", lambda *a: 0.5e9)  # lower this time
    monkeypatch.setattr(flops, "_REAL_SAMPLER", flops.sample_peak_flops)
    assert flops.measure_peak_flops(CPU) == 1e9  # measured again, the floor kept


def test_a_rate_a_run_achieved_is_a_floor_for_the_next_process(
        sampler: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    flops.measure_peak_flops(CPU)
    assert flops.raise_peak_flops(CPU, torch.float32, 7e9)
    _new_process(monkeypatch)
    assert flops.measure_peak_flops(CPU) == 7e9 and sampler == [0.25, 0.25]
    _new_process(monkeypatch)  # that quiet measurement kept the floor: trusted now
    assert flops.measure_peak_flops(CPU) == 7e9 and sampler == [0.25, 0.25]


def test_a_fake_sampler_never_touches_the_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops, "_PEAKS", {})
    assert flops.measure_peak_flops(CPU, sample=lambda *a: 3.0) == 3.0
    assert not peak_cache.cache_path().exists()


def test_an_unreadable_cache_is_ignored(sampler: list[float]) -> None:
    path = peak_cache.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert flops.measure_peak_flops(CPU) == 1e9 and sampler == [0.25]
    assert len(_entries()) == 1  # rewritten whole
