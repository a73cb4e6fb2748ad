"""The LR range test figure: loss against LR (log axis) with the suggestions marked, and the LR
against the step.  Drawn headless (matplotlib's Agg canvas; no display needed), saved as PNG
and SVG.  Works from a result's ``to_dict()`` (what the store keeps), so a report can redraw it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_MARKS = (("steepest", "steepest", "tab:red", "o"), ("valley", "valley", "tab:green", "s"),
          ("minimum", "min / 10", "tab:purple", "D"))


def plot_lr_range(record: Mapping[str, Any], stem: str | Path, title: str = "") -> list[Path]:
    """Draw one range test (``LRRangeResult.to_dict()``) to ``stem``.png and ``stem``.svg."""
    fig = lr_range_figure(record, title)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    return paths


def lr_range_figure(record: Mapping[str, Any], title: str = "") -> Any:
    """The figure of one range test (a matplotlib Figure, not yet saved)."""
    # A bare Figure renders through the Agg (PNG) and SVG canvases: no pyplot, no GUI backend,
    # and no change to the backend of a session (a notebook) that imported us.
    from matplotlib.figure import Figure

    lrs = [float(v) for v in record["lrs"]]
    raw = [math.nan if v is None else float(v) for v in record["losses"]]
    smooth = [math.nan if v is None else float(v) for v in record["smoothed"]]
    sug = record["suggestions"]
    finite: list[float] = []
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax, ax_lr, ax_step = fig.subplots(1, 3, width_ratios=[2, 1, 1])
    if lrs:
        ax.plot(lrs, raw, color="0.75", lw=0.8, label="loss (raw)")
        ax.plot(lrs, smooth, color="tab:blue", lw=1.8, label="loss (smoothed)")
        candidates = sug.get("candidates") or []
        if candidates:
            ax.axvspan(min(candidates), max(candidates), color="tab:orange", alpha=0.12,
                       label="candidates")
            for c in candidates:
                ax.axvline(c, color="tab:orange", lw=0.8, ls="--")
        for key, label, colour, marker in _MARKS:
            lr = sug.get(key)
            if lr is not None:
                y = _at(lrs, smooth, lr)
                ax.plot([lr], [y], marker=marker, color=colour, ms=8, ls="none",
                        label=f"{label} {lr:.3g}")
        ax.set_xscale("log")
        finite = [v for v in smooth if math.isfinite(v)]
        if finite:
            # Keep the diverging tail from squashing the interesting part of the curve.
            low, start = min(finite), finite[0]
            span = max(start - low, 1e-3 * max(abs(low), 1e-9))
            ax.set_ylim(low - 0.1 * span, start + 0.6 * span)
    ax.set_xlabel("learning rate (log scale)")
    loss_kind = "validation" if record.get("settings", {}).get("loss") == "valid" else "train"
    ax.set_ylabel(f"{loss_kind} loss")
    trust = "trusted" if sug.get("trusted") else "NOT trusted: " + ", ".join(
        f["code"] for f in sug.get("flags", []))
    ax.set_title(f"{title}  ({trust})".strip(), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax_lr.plot(range(1, len(lrs) + 1), lrs, color="tab:blue")
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title(f"{record.get('steps', len(lrs))} steps in {record.get('seconds', 0):.1f} s,"
                    f" stopped: {record.get('stopped')}", fontsize=10)
    ax_lr.grid(True, which="both", alpha=0.3)
    # Loss against step: where the ramp's time went (an exponential ramp spends as many steps
    # per decade at 1e-7 as at 1), and for --valid tests the validation loss as measured.
    steps = range(1, len(lrs) + 1)
    ax_step.plot(steps, raw, color="0.75", lw=0.8, label="raw")
    ax_step.plot(steps, smooth, color="tab:blue", lw=1.8, label="smoothed")
    if lrs and finite:
        ax_step.set_ylim(*ax.get_ylim())
    ax_step.set_xlabel("step")
    ax_step.set_ylabel(f"{loss_kind} loss")
    ax_step.set_title(f"{loss_kind} loss against step", fontsize=10)
    ax_step.grid(True, alpha=0.3)
    ax_step.legend(fontsize=8, loc="lower left")
    return fig


def _at(lrs: list[float], values: list[float], lr: float) -> float:
    """The curve's value at ``lr`` (the nearest point in log LR)."""
    best = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(lr)))
    value = values[best]
    return value if math.isfinite(value) else math.nan


__all__ = ["lr_range_figure", "plot_lr_range"]
