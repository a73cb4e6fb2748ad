"""When an MFU is a number to trust: the rule every writer and reader of MFU applies.

MFU is achieved FLOP/s over the device's matmul peak, measured in the process.  A peak measured
while the machine was busy is too low, and the ratio then reads above 1 (103-124 % were seen on
a busy 2-core host).  Such a ratio is never recorded, stored or shown as a number: the epoch
records ``perf/mfu_unreliable`` = 1 instead of ``perf/mfu``, the run's summary holds
``mfu: None`` with ``mfu_note``, and readers of older stores (which may hold ``perf/mfu`` > 1)
apply the same rule when they show them.  Pure Python, no torch: ``ls`` and ``show`` use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

MFU_KEY = "perf/mfu"
UNRELIABLE_KEY = "perf/mfu_unreliable"
UNRELIABLE_NOTE = ("the measured peak was below the achieved rate: the machine was busy when "
                   "the peak was measured")
UNRELIABLE_TEXT = "unreliable"  # what a table cell shows in place of the number


def mfu_record(flops_per_s: float, peak_flops: float, *,
               peak_too_low: bool = False) -> dict[str, float]:
    """``{perf/mfu: ratio}`` where the ratio is at most 1, else ``{perf/mfu_unreliable: 1}``
    (also when the run already found its peak too low: ``peak_too_low``)."""
    if peak_too_low or flops_per_s > peak_flops:
        return {UNRELIABLE_KEY: 1.0}
    return {MFU_KEY: flops_per_s / peak_flops}


def unreliable(value: Any) -> bool:
    """Whether a stored MFU value cannot be a utilization (a finite number above 1)."""
    return isinstance(value, int | float) and math.isfinite(value) and value > 1.0


def trusted_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` as shown: an ``mfu`` above 1 (an older run's) becomes None with the note."""
    out = dict(summary)
    if unreliable(out.get("mfu")):
        out.update(mfu=None, mfu_note=UNRELIABLE_NOTE)
    return out


def trusted_metric_rows(rows: Iterable[Mapping[Any, Any]]) -> list[dict[Any, Any]]:
    """Metric rows as shown: a ``perf/mfu`` above 1 becomes ``perf/mfu_unreliable`` = 1."""
    out = []
    for row in rows:
        shown = dict(row)
        if shown.get("key") == MFU_KEY and unreliable(shown.get("value")):
            shown.update(key=UNRELIABLE_KEY, value=1.0)
        out.append(shown)
    return out


__all__ = ["MFU_KEY", "UNRELIABLE_KEY", "UNRELIABLE_NOTE", "UNRELIABLE_TEXT", "mfu_record",
           "trusted_metric_rows", "trusted_summary", "unreliable"]
