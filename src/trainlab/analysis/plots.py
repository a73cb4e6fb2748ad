"""Figures (matplotlib, Agg backend): learning curves over epochs and over training time, and
the Pareto fronts of quality against time and memory.

Every function returns :class:`Figure` objects (the matplotlib figure plus a file name, a title
and a caption), so tests read lines, labels and panels back from the figure itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainlab.analysis.files import atomic_write_bytes
from trainlab.analysis.fmt import format_value, is_missing
from trainlab.analysis.frames import SweepFrames, curves
from trainlab.analysis.layout import FigureLayout, Panel

if TYPE_CHECKING:
    import matplotlib.figure

XAxis = Literal["epoch", "time"]
Clock = Literal["train", "wall"]

MAX_COLUMNS = 4
_SPLIT_STYLE: dict[str, Any] = {"train": "--", "valid": "-"}
_SPLIT_COLOUR = {"train": "C0", "valid": "C1"}
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*")


@dataclass
class Figure:
    name: str  # file stem
    title: str
    caption: str
    figure: matplotlib.figure.Figure
    section: str = "curves"  # curves | pareto

    def save(self, directory: Path, formats: Sequence[str] = ("png", "svg"),
             dpi: int = 110) -> list[Path]:
        """Write each format atomically (a temporary name, then rename)."""
        paths = []
        for fmt in formats:
            import io

            buf = io.BytesIO()
            self.figure.savefig(buf, format=fmt, dpi=dpi, metadata=_metadata(fmt, self.title))
            path = directory / f"{self.name}.{fmt}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
        return paths

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.figure)


def _metadata(fmt: str, title: str) -> dict[str, Any]:
    # Fixed metadata keeps files byte-stable across reruns (no creation date, no version).
    if fmt == "svg":
        return {"Title": title, "Date": None, "Creator": None}
    if fmt == "png":
        return {"Title": title, "Software": None}
    return {}


def use_agg() -> None:
    """Headless rendering: never open a window, never need a display."""
    import matplotlib

    matplotlib.use("Agg", force=True)


def curve_figures(frames: SweepFrames, layouts: Sequence[FigureLayout], metric: str,
                  x: XAxis, clock: Clock = "train") -> list[Figure]:
    """One figure per layout: train (dashed) and validation (solid) ``metric`` over ``x``."""
    use_agg()
    figures = []
    for number, layout in enumerate(layouts, 1):
        figures.append(_curve_figure(frames, layout, metric, x, clock, number))
    return figures


def _curve_figure(frames: SweepFrames, layout: FigureLayout, metric: str, x: XAxis,
                  clock: Clock, number: int) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    info = _metric_info(metric)
    n = len(layout.panels)
    hue = bool(layout.hue_keys)
    # With several panels and no hue, a last panel overlays their validation curves.
    overlay = n > 1 and not hue
    total = n + overlay
    ncols = _columns(total)
    nrows = math.ceil(total / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=_grid_size(nrows, ncols), sharex=True,
                             sharey=True, squeeze=False)
    _place_grid(fig, nrows, ncols)
    xcol = "epoch" if x == "epoch" else ("time/train" if clock == "train" else "wall")
    labels = [ln.label for p in layout.panels for ln in p.lines]
    colours = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(labels))}
    seeded = False
    for i in range(total):
        ax = axes[i // ncols][i % ncols]
        letter = f"({chr(ord('a') + i)})" if total > 1 else ""
        if i < n:
            panel = layout.panels[i]
            seeded |= _draw_panel(frames, ax, panel, metric, xcol, hue, colours)
            ax.set_title(f"{letter} {panel.title}".strip(), fontsize=10)
        else:
            _draw_overlay(frames, ax, layout, metric, xcol)
            what = frames.label(layout.panel_key) if layout.panel_key else "panel"
            ax.set_title(f"{letter} validation, by {what}", fontsize=10)
        ax.set_xlabel("epoch" if x == "epoch" else _time_label(clock))
        if i % ncols == 0:
            ax.set_ylabel(f"{info['label']}" + (" (log scale)" if info["log"] else ""))
        if info["log"]:
            _log_axis(ax)
        ax.grid(True, alpha=0.3)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True, labelleft=True)
    for j in range(total, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    handles = [Line2D([], [], color="0.3" if hue else _SPLIT_COLOUR[s], linestyle=style,
                      label=s if s == "train" else "validation")
               for s, style in _SPLIT_STYLE.items()]
    if hue:
        handles += [Line2D([], [], color=c, label=lab) for lab, c in colours.items()]
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, 0.08 / height), fontsize=9)
    title = _figure_title(frames, layout, info, x)
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / height, va="top")
    name = _slug(f"{metric}-{x}-" + ("-".join(f"{frames.label(k)}-{format_value(v)}"
                                               for k, v in layout.fixed.items()
                                               if not is_missing(v)) or f"{number}"))
    caption = _curve_caption(frames, layout, info, x, clock, seeded, overlay)
    return Figure(name, title, caption, fig)


def _draw_panel(frames: SweepFrames, ax: Any, panel: Panel, metric: str, xcol: str, hue: bool,
                colours: dict[str, str]) -> bool:
    seeded = False
    for line in panel.lines:
        for split, style in _SPLIT_STYLE.items():
            xs, mean, std, n = curves(frames, line.run_ids, f"{split}/{metric}", xcol)
            if not len(xs):
                continue
            colour = colours[line.label] if hue else _SPLIT_COLOUR[split]
            ax.plot(xs, mean, linestyle=style, color=colour, marker="o", markersize=3,
                    linewidth=1.5, label=f"{line.label} {split}".strip())
            if n > 1:
                seeded = True
                ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.18,
                                linewidth=0)
    return seeded


def _draw_overlay(frames: SweepFrames, ax: Any, layout: FigureLayout, metric: str,
                  xcol: str) -> None:
    """The validation curve of every panel on one axis, coloured by panel."""
    for i, panel in enumerate(layout.panels):
        for line in panel.lines:
            xs, mean, _, _ = curves(frames, line.run_ids, f"valid/{metric}", xcol)
            if len(xs):
                # Distinct markers keep curves that coincide (Adam and AdamW) both visible.
                ax.plot(xs, mean, color=f"C{(i + 2) % 10}", marker=_MARKERS[i % len(_MARKERS)],
                        markersize=4, linewidth=1.4, alpha=0.85, markerfacecolor="none",
                        label=panel.title.split("=", 1)[-1] or str(i + 1))
    if ax.get_lines():
        ax.legend(fontsize=7, frameon=False, loc="best")


# Fixed margins in inches instead of tight_layout, which costs seconds per figure (it lays out
# every tick label of every panel; savefig's bbox_inches="tight" costs as much again).
_PANEL_W, _PANEL_H = 3.4, 2.5
_LEFT, _RIGHT, _TOP, _BOTTOM, _GAP_W, _GAP_H = 0.8, 0.25, 0.75, 0.95, 0.6, 0.8


def _grid_size(nrows: int, ncols: int) -> tuple[float, float]:
    return (_LEFT + ncols * _PANEL_W + (ncols - 1) * _GAP_W + _RIGHT,
            _TOP + nrows * _PANEL_H + (nrows - 1) * _GAP_H + _BOTTOM)


def _place_grid(fig: Any, nrows: int, ncols: int) -> None:
    width, height = _grid_size(nrows, ncols)
    fig.subplots_adjust(left=_LEFT / width, right=1 - _RIGHT / width, top=1 - _TOP / height,
                        bottom=_BOTTOM / height, wspace=_GAP_W / _PANEL_W,
                        hspace=_GAP_H / _PANEL_H)


def _columns(panels: int) -> int:
    if panels <= 3:
        return panels
    if panels == 4:
        return 2
    return 3 if panels in (5, 6, 9) else 4


def _log_axis(ax: Any, which: str = "y") -> None:
    """Log scale with plain labels at 1, 2, 5 x 10^k (no 10^k notation, no minor labels)."""
    from matplotlib import ticker

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _time_label(clock: Clock) -> str:
    return "training time (s)" if clock == "train" else "wall-clock time (s)"


def _metric_info(metric: str) -> dict[str, Any]:
    from trainlab.analysis.frames import METRICS

    m = METRICS[metric]
    return {"label": m.name, "abbrev": m.abbrev, "log": m.log_scale, "metric": m}


def _figure_title(frames: SweepFrames, layout: FigureLayout, info: dict[str, Any],
                  x: XAxis) -> str:
    over = "epochs" if x == "epoch" else "training time"
    fixed = ", ".join(f"{frames.label(k)}={format_value(v)}" for k, v in layout.fixed.items())
    by = f", by {frames.label(layout.panel_key)}" if layout.panel_key else ""
    return f"{info['label'].capitalize()} over {over}" + (f": {fixed}" if fixed else "") + by


def _curve_caption(frames: SweepFrames, layout: FigureLayout, info: dict[str, Any], x: XAxis,
                   clock: Clock, seeded: bool, overlay: bool) -> str:
    parts = [f"{info['label'].capitalize()} on the training (dashed) and validation (solid) "
             f"splits over " + ("epochs" if x == "epoch" else "time") + "."]
    if x == "time":
        if clock == "train":
            parts.append("x: cumulative training time in seconds at each epoch's end "
                         "(time/train: optimizer steps only; evaluation, checkpoints and store "
                         "writes are excluded).")
        else:
            parts.append("x: wall-clock seconds since the run started, at each epoch's end "
                         "(evaluation, checkpoints and store writes included).")
    parts.append("Training values are running averages over each epoch in training mode "
                 "(dropout active); validation is measured at each epoch's end.")
    if info["log"]:
        parts.append("Log-scaled y axis; panels share their axes.")
    else:
        parts.append("Panels share their axes.")
    if layout.fixed:
        parts.append("Fixed: " + ", ".join(f"{frames.label(k)}={format_value(v)}"
                                           for k, v in layout.fixed.items()) + ".")
    letters = []
    for i, panel in enumerate(layout.panels):
        runs = ", ".join(f"run {ln.numbers}" + (f" ({ln.label})" if ln.label else "")
                         for ln in panel.lines)
        letter = f"({chr(ord('a') + i)}) " if len(layout.panels) > 1 else ""
        letters.append(f"{letter}{panel.title + ': ' if panel.title else ''}{runs}")
    if overlay:
        letter = chr(ord("a") + len(layout.panels))
        letters.append(f"({letter}) the validation curves of ({'a'}) to "
                       f"({chr(ord(letter) - 1)}) together")
    parts.append("; ".join(letters) + ".")
    if layout.hue_keys:
        parts.append("Colour: " + ", ".join(frames.label(k) for k in layout.hue_keys) + ".")
    if seeded:
        parts.append("Lines: mean over seeds; band: ± one standard deviation.")
    return " ".join(parts)


def pareto_figure(frames: SweepFrames, points: Sequence[dict[str, Any]], x: str, xlabel: str,
                  front: Sequence[int], name: str, caption: str,
                  ties: Sequence[int] = ()) -> Figure:
    """Best validation metric against a cost; the Pareto front joined by a step line; the
    points within the noise of a front point (``ties``) drawn apart, in orange."""
    import matplotlib.pyplot as plt

    use_agg()
    info = _metric_info(frames.metric.name)
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.13)
    xs = [p[x] for p in points]
    ys = [p["value"] for p in points]
    on, tied = set(front), set(ties)
    ax.scatter([v for i, v in enumerate(xs) if i not in on | tied],
               [v for i, v in enumerate(ys) if i not in on | tied], color="0.55", s=22,
               label="dominated")
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], color="C3", s=30,
               label="Pareto front", zorder=3)
    if tied:  # after the front: collections[1] stays the front
        ax.scatter([xs[i] for i in ties], [ys[i] for i in ties], color="C1", s=26,
                   marker="D", label="tie (within noise)", zorder=3)
    ordered = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in ordered], [ys[i] for i in ordered], color="C3", linewidth=1,
            drawstyle="steps-post")
    for i, p in enumerate(points):
        ax.annotate(str(p["label"]), (xs[i], ys[i]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    finite = [v for v in xs if math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 20:
        _log_axis(ax, "x")
        xlabel = xlabel[:-1] + ", log scale)" if xlabel.endswith(")") else xlabel + " (log)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"best validation {info['label']}" + (" (log scale)" if info["log"] else ""))
    if info["log"]:
        _log_axis(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    title = f"Validation {info['label']} against {xlabel.split(' (')[0]}"
    ax.set_title(title, fontsize=11)
    return Figure(name, title, caption, fig, section="pareto")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_")[:120]


__all__ = ["Figure", "curve_figures", "pareto_figure", "use_agg"]
