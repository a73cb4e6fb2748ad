"""Timing arithmetic: training seconds, throughput and MFU from clock readings and counts.

Pure functions of numbers (no clock, no device), so each is unit-tested with made-up readings;
the loop reads the clocks (after an accelerator sync) and hands the readings here, as
Lightning Fabric keeps its throughput arithmetic apart from the device-bound monitor.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping

from trainlab.mfu import mfu_record


def training_seconds(start: float, end: float, *, paused: float = 0.0, io: float = 0.0,
                     before: float = 0.0) -> float:
    """Seconds spent training between two clock readings: the span, less what was paused
    inside it (validation, warm-up) and the I/O done in it (checkpoints), plus ``before``
    (the part of the epoch trained before a resume)."""
    return before + (end - start) - paused - io


def epoch_rates(samples: float, seconds: float, *, tokens_per_example: float | None = None,
                flops_per_batch: float | None = None, batch_size: int = 1,
                peak_flops: float | None = None,
                peak_too_low: bool = False) -> dict[str, float]:
    """Throughput of an epoch, as recorded: samples (and tokens) per second, and, where the
    FLOPs of a batch are known, achieved FLOP/s and MFU against ``peak_flops``.

    An MFU above 1 is not recorded: the epoch beat the peak, so the peak was measured low;
    ``perf/mfu_unreliable`` = 1 stands in its place (see :mod:`trainlab.mfu`), as it does for
    every epoch of a run that already found its peak too low (``peak_too_low``).

    FLOPs scale with samples, not batches: an epoch's last batch may be short.  With no time
    measured, the rate is NaN (not infinite); FLOP rates are then left out.
    """
    rate = samples / seconds if seconds > 0 else float("nan")
    out = {"throughput/samples_per_s": rate}
    if tokens_per_example is not None:
        out["throughput/tokens_per_s"] = rate * tokens_per_example
    if flops_per_batch is not None and seconds > 0:
        flops = flops_per_batch * samples / batch_size / seconds
        out["perf/flops_per_s"] = flops
        if peak_flops:
            out.update(mfu_record(flops, peak_flops, peak_too_low=peak_too_low))
    return out


def median_of(epochs: Iterable[Mapping[str, float]], key: str) -> float | None:
    """The median of ``key`` over the epochs that recorded a finite value of it, else None."""
    values = [e[key] for e in epochs if key in e and math.isfinite(e[key])]
    return statistics.median(values) if values else None


def trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    """The mean of ``values`` without the lowest and highest ``cut`` fraction.

    Step times are summed into an epoch, so the mean (not the median) predicts one; trimmed,
    one descheduled step among a few dozen does not move it."""
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    return statistics.fmean(ordered[k:len(ordered) - k])


def sample_steps(take: Callable[[], float], *, min_steps: int, max_steps: int,
                 budget_s: float, min_window_s: float, per: int = 1
                 ) -> tuple[list[float], list[float]]:
    """A probe's step samples: ``take()`` times ``per`` steps and returns their seconds; each
    sample is a step's mean.  Warm-up (lazy initialisation, kernel selection) lasts until
    steps stop getting faster: at least two samples, at most ten.  Then at least
    ``max_steps`` samples, more while the timed window is under ``min_window_s`` (at most 20
    times as many); past ``min_steps``, it stops once ``budget_s`` is spent.  Returns the
    timed samples and the warm-up ones."""
    times: list[float] = []
    warm: list[float] = []
    timed = 0.0  # seconds of the timed steps so far
    while len(times) < max_steps or (timed < min_window_s and len(times) < 20 * max_steps):
        seconds = take() / per
        if len(warm) < 2 or (len(warm) < 10 and not times and seconds < 0.67 * min(warm)):
            warm.append(seconds)
            continue
        times.append(seconds)
        timed += seconds * per
        if len(times) >= min_steps and timed > budget_s:
            break
    return times, warm
