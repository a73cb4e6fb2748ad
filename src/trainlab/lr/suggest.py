"""Reading an LR range test's curve: suggestions and how far to trust them.

Every function here is a pure function of the curve: ``lrs`` (the learning rate of each point,
increasing) and ``losses`` (the loss measured after the update made at that LR).  None of them
touches torch, so each is tested on curves written by hand.

- :func:`steepest` — the LR where the loss falls fastest per *decade* of LR, d loss / d log(lr).
  Differentiating against the index instead (as some tools do) is only right for an
  exponential ramp; against log(lr) it is right for any ramp.
- :func:`valley` — the middle of the longest descending stretch of the fall (fastai's
  "valley"): robust to noise, where the steepest point can be a blip.
- :func:`minimum_tenth` — the LR of the lowest loss divided by 10 (the classic rule of thumb:
  at the minimum the loss is already about to blow up).
- :func:`candidates` — N LRs spaced log-uniformly between where the loss starts falling fast
  and where it bottoms out: the candidates to train with a fixed LR and with a decay.
- :func:`assess` — flags that say when the curve cannot be trusted.

The curves given to the suggestion functions are smoothed first (:func:`smooth_zero_lag`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

METHODS = ("valley", "steepest", "minimum")
"""Single-LR suggestion methods (the names ``lr_find.suggest`` accepts)."""

FALL_FRACTION = 0.1
"""The fall runs from 10 % to 90 % of the loss's whole drop (see :func:`fall_range`)."""

MIN_POINTS = 10
"""Fewer points than this between the start of the fall and the minimum: too few to trust."""

NOISE_MARGIN = 3.0
"""A drop (smoothed start to minimum) smaller than this x the step-to-step noise is no fall:
the zero-lag smoothed minimum of a flat, noisy curve already sits about one noise std below
its start, and a slow drift hidden in the noise adds as much again."""

ArrayLike = Sequence[float] | np.ndarray


# --- smoothing ----------------------------------------------------------------------------------


def ema(values: ArrayLike, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average: causal, as the range test sees the losses.

    ``beta`` is the weight of the past (0: no smoothing).  Bias correction makes the first
    values averages of what came so far instead of being pulled towards zero.
    """
    x = np.asarray(values, dtype=float)
    out = np.empty_like(x)
    avg = 0.0
    for i, v in enumerate(x):
        avg = beta * avg + (1.0 - beta) * v
        out[i] = avg / (1.0 - beta ** (i + 1)) if beta > 0 else v
    return out


def smooth_zero_lag(values: ArrayLike, beta: float) -> np.ndarray:
    """Forward then backward EMA: smooth without shifting the curve to the right.

    A causal EMA reports at point i mostly what happened several points earlier (a mean lag of
    beta / (1 - beta) points): on an exponential ramp of 100 steps over 8 decades with
    beta = 0.9 that is a factor of ~5 in LR, all of it towards larger, less stable LRs.  Running
    the EMA forward and then backward cancels the lag.
    """
    x = np.asarray(values, dtype=float)
    if beta <= 0 or len(x) < 2:
        return x.copy()
    return ema(ema(x, beta)[::-1], beta)[::-1]


def _clean(lrs: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if lr.shape != loss.shape or lr.ndim != 1:
        raise ValueError(f"lrs and losses must be 1-D and of equal length; got {lr.shape} and "
                         f"{loss.shape}")
    keep = np.isfinite(loss) & np.isfinite(lr) & (lr > 0)
    return lr[keep], loss[keep]


# --- suggestions --------------------------------------------------------------------------------


def steepest(lrs: ArrayLike, losses: ArrayLike) -> float | None:
    """The LR where d loss / d log(lr) is most negative, looking only up to the minimum.

    None when the curve has fewer than 3 points or never falls.
    """
    lr, loss = _clean(lrs, losses)
    if len(lr) < 3:
        return None
    end = int(np.argmin(loss)) + 1
    if end < 3:
        return None
    slope = np.gradient(loss[:end], np.log(lr[:end]))
    i = int(np.argmin(slope))
    return float(lr[i]) if slope[i] < 0 else None


def valley(lrs: ArrayLike, losses: ArrayLike,
           fraction: float = FALL_FRACTION) -> float | None:
    """The LR halfway (in points) along the longest descending stretch of the fall.

    The stretch is the longest strictly decreasing subsequence (points may be skipped, so a
    little noise does not break it), as in fastai's ``valley``, searched within the curve's
    10-90 % fall (:func:`fall_range`): a clean curve creeps down from its very first point and
    creeps on along its floor, and a stretch that ran through either would put the valley
    decades away from the fall.  None when no stretch of at least 3 points descends.
    """
    lr, loss = _clean(lrs, losses)
    span = fall_range(lr, loss, fraction)
    if span is None:
        return None
    lr, loss = lr[span[0]:span[1] + 1], loss[span[0]:span[1] + 1]
    n = len(loss)
    length = np.ones(n, dtype=int)
    first = np.arange(n)  # where the best decreasing subsequence ending at i starts
    for i in range(1, n):
        higher = np.nonzero(loss[:i] > loss[i])[0]
        if len(higher):
            j = higher[np.argmax(length[higher])]
            length[i], first[i] = length[j] + 1, first[j]
    end = int(np.argmax(length))
    if length[end] < 3:
        return None
    start = int(first[end])
    return float(lr[start + (end - start) // 2])


def minimum_tenth(lrs: ArrayLike, losses: ArrayLike) -> float | None:
    """The LR of the lowest loss, divided by 10; None for an empty curve."""
    lr, loss = _clean(lrs, losses)
    if len(lr) == 0:
        return None
    return float(lr[int(np.argmin(loss))] / 10.0)


SUGGESTERS = {"valley": valley, "steepest": steepest, "minimum": minimum_tenth}


def fall_range(lrs: ArrayLike, losses: ArrayLike,
               fraction: float = FALL_FRACTION) -> tuple[int, int] | None:
    """Indices (into the finite points) of where the loss starts falling fast and where it
    reaches its minimum: the curve's 10-90 % fall, as a signal's rise time is measured.

    With ``drop`` = first loss - lowest loss, the fall starts at the first point at least
    ``fraction`` x drop below the first loss and ends at the first point within ``fraction`` x
    drop of the lowest.  Measuring the end by a tolerance, not at the exact lowest point,
    matters: a curve that has converged sits on a floor where the lowest point is wherever the
    noise put it, often decades of LR later and past the point where training is stable.
    None when the loss never falls.
    """
    _, loss = _clean(lrs, losses)
    if len(loss) < 2:
        return None
    low = int(np.argmin(loss))
    drop = loss[0] - loss[low]
    # A drop within rounding of the start (a flat curve smoothed) is no drop.
    if low == 0 or not drop > 1e-12 * max(1.0, abs(loss[0])):
        return None
    head = loss[: low + 1]
    start = int(np.nonzero(head <= loss[0] - fraction * drop)[0][0])
    end = int(np.nonzero(head <= loss[low] + fraction * drop)[0][0])
    return start, max(start, end)


def candidates(lrs: ArrayLike, losses: ArrayLike, n: int = 4,
               fraction: float = FALL_FRACTION) -> list[float] | None:
    """``n`` LRs spaced log-uniformly from where the loss starts falling fast to where it
    reaches its minimum (both ends included; see :func:`fall_range`), as a study picks them
    by eye.

    None when the loss never falls.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    lr, loss = _clean(lrs, losses)
    span = fall_range(lr, loss, fraction)
    if span is None:
        return None
    lo, hi = float(lr[span[0]]), float(lr[span[1]])
    if n == 1:
        return [math.sqrt(lo * hi)]
    return [float(v) for v in np.geomspace(lo, hi, n)]


# --- trust -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """Why a curve should not be trusted (or trusted less): a code and a sentence."""

    code: str  # few-points | noisy | no-descent | no-divergence | not-finite
    message: str


@dataclass(frozen=True)
class Assessment:
    flags: list[Flag] = field(default_factory=list)
    noise: float | None = None  # robust std of the loss around its smoothed curve
    drop: float | None = None  # smoothed loss at the start minus at the minimum
    fall_points: int | None = None  # points from the start of the fall to the minimum

    @property
    def trusted(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trusted"] = self.trusted
        return out


def noise_level(losses: ArrayLike) -> float:
    """Robust standard deviation of the loss's step-to-step noise.

    From second differences, which cancel the curve's trend: for independent noise of standard
    deviation s, x[i+1] - 2 x[i] + x[i-1] has standard deviation sqrt(6) s.  The median
    absolute deviation (x 1.4826) ignores the few sharp bends a clean curve has.
    """
    x = np.asarray(losses, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 3:
        return 0.0
    d2 = x[2:] - 2 * x[1:-1] + x[:-2]
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


def assess(lrs: ArrayLike, losses: ArrayLike, smoothed: ArrayLike, *, stopped: str,
           min_points: int = MIN_POINTS, fraction: float = FALL_FRACTION) -> Assessment:
    """Flags for a curve: ``losses`` as measured, ``smoothed`` as the suggestions saw them.

    ``stopped`` says why the test ended: ``diverged`` (the smoothed loss passed k x its best),
    ``not-finite`` (a NaN or infinite loss), or ``end`` (the ramp reached its last LR).
    """
    lr, raw = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    smooth = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(raw) & np.isfinite(smooth)
    flags: list[Flag] = []
    if finite.sum() < 3:
        first = lr[0] if len(lr) else float("nan")
        return Assessment([Flag("not-finite" if stopped == "not-finite" else "few-points",
                                f"the loss diverged at once: {int(finite.sum())} usable point(s) "
                                f"from lr {first:.3g}; no learning rate can be suggested. Lower "
                                "the start of the range, or check the data and initialisation "
                                "for NaN or huge values")])
    lr, raw, smooth = lr[finite], raw[finite], smooth[finite]
    span = fall_range(lr, smooth, fraction)
    low = int(np.argmin(smooth))
    # The noise up to the minimum, from 20 points at least: a minimum near the start (a flat
    # curve's, placed by the noise) leaves too few points before it to measure the noise.
    noise = noise_level(raw[: max(low + 1, min(len(raw), 20))])
    drop = float(smooth[0] - smooth[low])
    points = None if span is None else span[1] - span[0] + 1
    if span is None:
        flags.append(Flag("no-descent", f"the loss never fell below its start ({smooth[0]:.4g})"
                          f" between lr {lr[0]:.3g} and {lr[-1]:.3g}: the range is too high "
                          "(it diverged at once; lower the start) or too low (raise the end)"))
    elif points is not None and points < min_points:
        flags.append(Flag("few-points", f"only {points} points from where the loss starts "
                          f"falling (lr {lr[span[0]]:.3g}) to its minimum (lr {lr[span[1]]:.3g})"
                          f"; {min_points} or more are needed to place the suggestions: use more "
                          "steps or a narrower range"))
    if span is not None and drop < NOISE_MARGIN * noise:
        flags.append(Flag("noisy", f"the smoothed loss fell only {drop:.3g} ({smooth[0]:.4g} -> "
                          f"{smooth[low]:.4g}), less than {NOISE_MARGIN:g}x its step-to-step "
                          f"noise (robust std {noise:.3g}): no LR from {lr[0]:.3g} to "
                          f"{lr[-1]:.3g} made it learn within the ramp, and the suggestions are "
                          "where the noise put them. Use a longer ramp (more steps, or epochs) "
                          "so each LR has time to act, or another range (a higher end if the "
                          "loss never rose, a lower start if it rose at once); a larger batch "
                          "or more smoothing lowers the noise"))
    if stopped == "end" and low >= len(smooth) - 2:
        flags.append(Flag("no-divergence", f"the loss was still falling at the end of the range "
                          f"(lr {lr[-1]:.3g}): the minimum and the upper candidates are the "
                          "range's end, not the curve's; raise the end"))
    return Assessment(flags, noise, drop, points)


@dataclass(frozen=True)
class Suggestions:
    """Everything the curve suggests, with the assessment that says how far to trust it."""

    steepest: float | None
    valley: float | None
    minimum: float | None  # the LR of the lowest loss / 10
    candidates: list[float] | None
    min_loss_lr: float | None  # the LR of the lowest (smoothed) loss itself
    assessment: Assessment

    def get(self, method: str) -> float | None:
        if method not in METHODS:
            raise ValueError(f"unknown suggestion method {method!r}; valid: {', '.join(METHODS)}")
        value: float | None = getattr(self, method)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {"steepest": self.steepest, "valley": self.valley, "minimum": self.minimum,
                "candidates": self.candidates, "min_loss_lr": self.min_loss_lr,
                **self.assessment.to_dict()}


def suggest(lrs: ArrayLike, losses: ArrayLike, *, beta: float, stopped: str,
            n_candidates: int = 4, min_points: int = MIN_POINTS) -> tuple[Suggestions, np.ndarray]:
    """Smooth the raw curve without lag, then every suggestion and the trust flags.

    Before smoothing, losses after the lowest one are capped at the highest loss before it:
    otherwise the exploding tail of a diverging test (losses of 1e20 are common) would leak
    backwards through the zero-lag smoother and lift the minimum.  Returns the suggestions and
    the smoothed curve (NaN where the loss was not finite).
    """
    lr = np.asarray(lrs, dtype=float)
    raw = np.asarray(losses, dtype=float)
    finite = np.isfinite(raw)
    smoothed = np.full_like(raw, np.nan)
    if finite.any():
        values = raw[finite].copy()
        low = int(np.argmin(values))
        values[low:] = np.minimum(values[low:], values[: low + 1].max())
        smoothed[finite] = smooth_zero_lag(values, beta)
    fl, fs = lr[finite], smoothed[finite]
    verdict = assess(lr, raw, smoothed, stopped=stopped, min_points=min_points)
    enough = len(fl) >= 3
    out = Suggestions(
        steepest=steepest(fl, fs) if enough else None,
        valley=valley(fl, fs) if enough else None,
        minimum=minimum_tenth(fl, fs) if enough else None,
        candidates=candidates(fl, fs, n_candidates) if enough else None,
        min_loss_lr=float(fl[int(np.argmin(fs))]) if enough else None,
        assessment=verdict,
    )
    return out, smoothed
