"""Pareto fronts that do not split hairs: differences within a measurement's noise are ties.

A front drawn over a 0.3 MiB difference in memory (or 1 % in training time on a noisy machine)
ranks measurement noise.  Each measure has a noise per configuration:

- memory: the larger of 2 % of the peak and the spread over its seeds (sample std), and at
  least 1 MiB for the process's peak (RSS, the CUDA allocator's: pages, cached blocks and the
  runtime move it by that much); the peak of the run's own tensors is counted tensor by
  tensor, so 0.5 against 0.75 MiB is a real difference there;
- training time: the run's own epoch-to-epoch spread (coefficient of variation of its
  training seconds per epoch, applied to its total), at least 1 %, and the spread over seeds;
- the validation metric: the spread over seeds (none with one seed: only equal values tie).

A point dominates another when it is at least as good on both measures within the noise and
better by more than the noise on one.  The front is the points nothing dominates; of front points
within the noise of each other on both measures one stays (the best value, then the cheapest)
and the others are marked ``tie``, as is a point that only a within-noise difference kept on
the exact front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainlab.analysis.fmt import mib

MEMORY_FLOOR_MIB = 1.0
MEMORY_SHARE = 0.02
TIME_SHARE = 0.01

TENSORS = "tensor_peak_bytes"  # the run's own tensors: no absolute floor


def noise_text(cost: str) -> str:
    """The noise rule of ``cost`` in words, for captions and answers."""
    if cost == "train_time":
        return ("time differences within the run's own epoch-to-epoch spread (at least "
                f"{TIME_SHARE:.0%}) or the spread over seeds are ties")
    share = (f"{MEMORY_SHARE:.0%}" if cost == TENSORS
             else f"max({MEMORY_FLOOR_MIB:g} MiB, {MEMORY_SHARE:.0%})")
    return f"memory differences within {share} or the spread over seeds are ties"


@dataclass(frozen=True)
class Front:
    """The points on the front (by cost, cheapest first) and the tied ones: point -> the
    front point it ties with."""

    front: list[int]
    ties: dict[int, int] = field(default_factory=dict)


def pareto_front(costs: Sequence[float], values: Sequence[float],
                 higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and value (exact
    comparisons; equal points dominate neither), cheapest first."""
    sign = -1.0 if higher_is_better else 1.0
    pts = [(c, sign * v, i) for i, (c, v) in enumerate(zip(costs, values))
           if math.isfinite(c) and math.isfinite(v)]
    front = [i for c, v, i in pts
             if not any(c2 <= c and v2 <= v and (c2 < c or v2 < v) for c2, v2, _ in pts)]
    return sorted(front, key=lambda i: costs[i])


def noisy_front(costs: Sequence[float], values: Sequence[float], higher_is_better: bool,
                cost_noise: Sequence[float] | None = None,
                value_noise: Sequence[float] | None = None) -> Front:
    """The Pareto front with differences within the noise as ties (see the module's doc).

    ``cost_noise`` and ``value_noise``: per point, in the units of ``costs`` and ``values``
    (none: exact comparisons).  A pair's noise is the larger of its two points'.
    """
    n = len(costs)
    cn = [_finite(x) for x in (cost_noise or [0.0] * n)]
    vn = [_finite(x) for x in (value_noise or [0.0] * n)]
    sign = 1.0 if higher_is_better else -1.0
    pts = [i for i in range(n) if math.isfinite(costs[i]) and math.isfinite(values[i])]

    def dominates(j: int, i: int, noisy: bool) -> bool:
        ec = max(cn[i], cn[j]) if noisy else 0.0
        ev = max(vn[i], vn[j]) if noisy else 0.0
        dc = costs[i] - costs[j]  # > 0: j is cheaper
        dv = sign * (values[j] - values[i])  # > 0: j is better
        return dc >= -ec and dv >= -ev and (dc > ec or dv > ev)

    exact = pareto_front(costs, values, higher_is_better)
    kept = [i for i in pts if not any(dominates(j, i, True) for j in pts if j != i)]
    if not kept:  # tolerance is not transitive: a cycle leaves nothing; fall back to exact
        return Front(sorted(exact, key=lambda i: costs[i]))
    # Front points within the noise of each other on both measures: one stays.
    order = sorted(kept, key=lambda i: (-sign * values[i], costs[i], i))
    front: list[int] = []
    ties: dict[int, int] = {}
    for i in order:
        twin = next((f for f in front if abs(costs[i] - costs[f]) <= max(cn[i], cn[f])
                     and abs(values[i] - values[f]) <= max(vn[i], vn[f])), None)
        if twin is None:
            front.append(i)
        else:
            ties[i] = twin
    # A point on the exact front that only a within-noise lead kept there: a tie with the
    # front point that now dominates it.
    for i in exact:
        if i not in front and i not in ties:
            winners = {ties.get(j, j) for j in pts if j != i and dominates(j, i, True)}
            ties[i] = min([f for f in winners if f in front] or front,
                          key=lambda f: abs(costs[f] - costs[i]))
    return Front(sorted(front, key=lambda i: costs[i]), ties)


def cost_noise(frames: object, configs: pd.DataFrame, cost: str) -> list[float]:
    """Per configuration row of ``configs``: the noise of ``cost`` in the units the fronts use
    (seconds for train_time, MiB for memory columns)."""
    out = []
    for _, row in configs.iterrows():
        spread = _finite(row.get(f"{cost}_std", math.nan))
        value = _finite(row.get(cost, math.nan))
        if cost == "train_time":
            cv = max((_epoch_cv(frames, r) for r in _run_ids(row)), default=0.0)
            out.append(max(spread, value * max(cv, TIME_SHARE)))
        else:
            floor = 0.0 if cost == TENSORS else MEMORY_FLOOR_MIB
            out.append(max(mib(spread), floor, MEMORY_SHARE * mib(value)))
    return out


def value_noise(configs: pd.DataFrame, metric: str) -> list[float]:
    """Per configuration: the spread of its best validation ``metric`` over its seeds."""
    column = f"valid_{metric}_std"
    if column not in configs.columns:
        return [0.0] * len(configs)
    return [_finite(v) for v in configs[column]]


def _epoch_cv(frames: object, run_id: str) -> float:
    """The coefficient of variation of a run's training seconds per epoch (the first epoch
    left out where there are three or more: it carries the warm-up)."""
    epochs = getattr(frames, "epochs", None)
    if epochs is None or "time/epoch_train" not in getattr(epochs, "columns", []):
        return 0.0
    times = pd.to_numeric(epochs.loc[epochs["run_id"] == run_id, "time/epoch_train"],
                          errors="coerce").dropna().to_numpy(dtype=float)
    if len(times) >= 3:
        times = times[1:]
    if len(times) < 2 or times.mean() <= 0:
        return 0.0
    return float(np.std(times, ddof=1) / times.mean())


def _run_ids(row: pd.Series) -> list[str]:
    ids = row.get("run_ids")
    return list(ids) if isinstance(ids, list | tuple) else [str(row.get("run_id"))]


def _finite(value: object) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0


__all__ = ["MEMORY_FLOOR_MIB", "MEMORY_SHARE", "TIME_SHARE", "Front", "cost_noise",
           "noise_text", "noisy_front", "pareto_front", "value_noise"]
