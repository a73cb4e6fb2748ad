"""Which runs go in which figure, panel and line.

The default reads the sweep's varied keys as a report would lay them out: the first key
(usually the architecture) stays fixed within a figure; for each other key, from the last
(usually the optimizer) back, every set of configurations that differ only in that key becomes
a figure with one panel per value, unless all its runs already appear in an earlier figure.
For lm-optimizers that gives "LSTM, 1 layer: a panel per optimizer", "GPT, 1 layer: a panel per
optimizer", then "LSTM, AdamW: a panel per layer count" and the same for GPT.
``--facet``, ``--panel`` and ``--hue`` replace it with an explicit layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from trainlab.analysis.fmt import format_value
from trainlab.analysis.frames import SweepFrames, aggregate
from trainlab.analysis.tables import sort_frame
from trainlab.errors import ConfigError

MAX_PANELS_BEFORE_HUE = 8


@dataclass(frozen=True)
class Line:
    """One configuration (its seed runs averaged): a train and a valid curve."""

    label: str  # the hue label ("" when the panel holds one configuration)
    run_ids: tuple[str, ...]
    numbers: str  # run numbers in the sweep


@dataclass(frozen=True)
class Panel:
    title: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class FigureLayout:
    fixed: dict[str, Any]  # the varied keys held constant in this figure
    panel_key: str | None
    hue_keys: tuple[str, ...]
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def configurations(frames: SweepFrames) -> pd.DataFrame:
    """One row per configuration (seeds merged), sorted as the summary table sorts."""
    configs = aggregate(frames.runs, frames.keys, [])
    return sort_frame(configs, frames.keys, order_from=frames.runs)


def default_layout(frames: SweepFrames) -> list[FigureLayout]:
    configs = configurations(frames)
    keys = frames.keys
    if not keys:
        return [_figure(frames, {}, None, (), configs)]
    if len(keys) == 1:
        key = keys[0]
        if configs[key].nunique(dropna=False) > MAX_PANELS_BEFORE_HUE:
            return [_figure(frames, {}, None, (key,), configs)]
        return [_figure(frames, {}, key, (), configs)]
    figures: list[FigureLayout] = []
    covered: set[str] = set()
    for key in reversed(keys[1:]):
        others = [k for k in keys if k != key]
        for _, part in configs.groupby(_by(others), sort=False, dropna=False):
            if part[key].nunique(dropna=False) < 2 or set(part["group"]) <= covered:
                continue
            fixed = {k: part.iloc[0][k] for k in others}
            figures.append(_figure(frames, fixed, key, (), part))
            covered |= set(part["group"])
    rest = configs[~configs["group"].isin(covered)]
    first = keys[0]
    for _, part in rest.groupby(_by([first]), sort=False, dropna=False):
        # Configurations that share no one-key contrast with another: a panel each.
        figures.append(_figure(frames, {first: part.iloc[0][first]}, None, (), part,
                               panel_per_config=True))
    return figures


def explicit_layout(frames: SweepFrames, facet: Sequence[str] | None, panel: str | None,
                    hue: Sequence[str] | None) -> list[FigureLayout]:
    """``--facet`` keys split figures, ``--panel`` splits panels, ``--hue`` colours lines.

    A varied key left out of all three that still varies within a panel joins the hue, so a
    line never mixes configurations.
    """
    panel_key = frames.resolve_key(panel, "--panel") if panel else None
    hue_keys = [frames.resolve_key(h, "--hue") for h in (hue or [])]
    if facet is not None:
        facet_keys = [frames.resolve_key(f, "--facet") for f in facet]
    elif panel_key is not None:
        facet_keys = [k for k in frames.keys if k != panel_key and k not in hue_keys]
    else:
        facet_keys = [k for k in frames.keys[:1] if k not in hue_keys]
    used = [*facet_keys, *([panel_key] if panel_key else []), *hue_keys]
    duplicates = sorted({frames.label(k) for k in used if used.count(k) > 1})
    if duplicates:
        raise ConfigError(f"`--facet`/`--panel`/`--hue`: {', '.join(duplicates)} is given to "
                          "more than one of them; use each key once", field="--facet")
    configs = configurations(frames)
    split = [*facet_keys, *([panel_key] if panel_key else [])]
    auto = [k for k in frames.keys if k not in used and _varies_within(configs, split, k)]
    hue_all = (*hue_keys, *auto)
    figures = []
    groups = configs.groupby(_by(facet_keys), sort=False, dropna=False) if facet_keys else [
        ((), configs)]
    for _, part in groups:
        fixed = {k: part.iloc[0][k] for k in facet_keys}
        figures.append(_figure(frames, fixed, panel_key, hue_all, part))
    return figures


def _varies_within(configs: pd.DataFrame, split: list[str], key: str) -> bool:
    if not split:
        return configs[key].nunique(dropna=False) > 1
    counts = configs.groupby(_by(split), dropna=False)[key].nunique(dropna=False)
    return bool((counts > 1).any())


def _by(keys: Sequence[str]) -> Any:
    # A one-element list makes pandas yield tuples; a plain name yields scalars.
    return list(keys)


def _figure(frames: SweepFrames, fixed: dict[str, Any], panel_key: str | None,
            hue_keys: Sequence[str], part: pd.DataFrame, *,
            panel_per_config: bool = False) -> FigureLayout:
    panels: list[Panel] = []
    if panel_per_config:
        for _, row in part.iterrows():
            rest = [k for k in frames.keys if k not in fixed]
            title = frames.describe(row, rest) or "all runs"
            panels.append(Panel(title, (_line(frames, row, ()),)))
    elif panel_key is None:
        lines = tuple(_line(frames, row, hue_keys) for _, row in part.iterrows())
        panels.append(Panel("", lines))
    else:
        for _, sub in part.groupby(_by([panel_key]), sort=False, dropna=False):
            title = f"{frames.label(panel_key)}={format_value(sub.iloc[0][panel_key])}"
            lines = tuple(_line(frames, row, hue_keys) for _, row in sub.iterrows())
            panels.append(Panel(title, lines))
    return FigureLayout(dict(fixed), panel_key, tuple(hue_keys), tuple(panels))


def _line(frames: SweepFrames, row: pd.Series, hue_keys: Sequence[str]) -> Line:
    label = frames.describe(row, hue_keys) if hue_keys else ""
    return Line(label, tuple(row["run_ids"]), frames.run_numbers(row))


__all__ = ["FigureLayout", "Line", "Panel", "configurations", "default_layout",
           "explicit_layout"]
