"""What a report is: its options, what was built, and its ordered list of sections.

A report is a list of :class:`Section` s in reading order.  The Markdown renderer
(``markdown.py``) and the HTML renderer (``html.py``) both walk that list: each heading is
written once (here, or as the :class:`~trainlab.analysis.tables.Table`'s title), tables and
figures are numbered by their place in the list, and the HTML table of contents is the list.
``report.py`` builds the list; adding a table to the report is a function in ``tables.py``
plus one :func:`table_section` entry there.

Imports flow one way: ``report`` -> ``html``/``markdown`` -> ``sections``; this module needs
nothing but the standard library at run time (the other analysis types only for annotations).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainlab.analysis.fmt import format_sig

if TYPE_CHECKING:
    from trainlab.analysis.answers import Answer
    from trainlab.analysis.frames import SweepFrames
    from trainlab.analysis.layout import FigureLayout
    from trainlab.analysis.plots import Clock, Figure
    from trainlab.analysis.tables import Table

SectionKind = Literal["table", "answers", "figures", "lr-ranges", "runs"]


@dataclass(frozen=True)
class Section:
    """One part of the report under one heading (``## title``, ``<h2>``)."""

    id: str  # the HTML anchor; a table's file stem (tables/<id>.md, ...)
    title: str  # the heading, the same in every renderer
    kind: SectionKind  # what it holds: a table, the answers, figures, the LR range
    #                    tests' suggestions, or the runs and their configs
    table: Table | None = None  # kind "table"
    figures: tuple[Figure, ...] = ()  # kind "figures"
    number: int | None = None  # set by number_sections: the table's number, or the number
    #                            of the first of the figures
    html_only: bool = False  # the page only (the runs' configs as JSON)
    links: tuple[tuple[str, str], ...] = ()  # (text, file) listed after the section's body:
    #                                          files linked relative to the report

    def numbered_figures(self) -> list[tuple[int, Figure]]:
        """(figure number, figure) for each of the section's figures."""
        return list(enumerate(self.figures, self.number or 1))


ANSWERS = Section("answers", "Answers", "answers")
LR_RANGE_SUGGESTIONS = Section("lr-range-suggestions", "LR range test suggestions", "lr-ranges")
RUNS = Section("runs", "Runs and their configs", "runs", html_only=True)


def table_section(table: Table | None) -> Section | None:
    """A table under its own title, anchored by its name (None for a table not built)."""
    return None if table is None else Section(table.name, table.title, "table", table=table)


def figure_sections(frames: SweepFrames, figures: Sequence[Figure]) -> list[Section]:
    """The figures by section: each metric over epochs then over time, the Pareto fronts, the
    LR range tests (a section only where it holds figures)."""
    out = []
    for metric in frames.metrics:
        for x, over in (("epoch", "epochs"), ("time", "training time")):
            figs = tuple(f for f in figures if f.section == "curves"
                         and f.name.startswith(f"{metric}-{x}-"))
            if figs:
                out.append(Section(f"curves-{metric}-{x}", f"{metric.capitalize()} over {over}",
                                   "figures", figures=figs))
    for kind, anchor, title in (("pareto", "pareto", "Pareto fronts"),
                                ("lr-range", "lr-range", "LR range tests")):
        figs = tuple(f for f in figures if f.section == kind)
        if figs:
            out.append(Section(anchor, title, "figures", figures=figs))
    return out


def number_sections(sections: Iterable[Section | None]) -> list[Section]:
    """The sections in order (None entries dropped), tables and figures numbered by it."""
    out = []
    tables = figures = 0
    for section in sections:
        if section is None:
            continue
        if section.kind == "table":
            tables += 1
            section = replace(section, number=tables)
        elif section.kind == "figures":
            section = replace(section, number=figures + 1)
            figures += len(section.figures)
        out.append(section)
    return out


# --- what was built -----------------------------------------------------------------------------


@dataclass
class ReportOptions:
    sweep: str | None = None
    metric: str | None = None  # default: the task's metric (perplexity, accuracy, rmse)
    facet: list[str] | None = None
    panel: str | None = None
    hue: list[str] | None = None
    sort: str | None = None
    group: str | None = None
    target: float | None = None
    clock: Clock = "train"
    overfit_epochs: int = 2
    formats: tuple[str, ...] = ("png", "svg")


@dataclass
class Report:
    frames: SweepFrames
    options: ReportOptions
    sections: list[Section]  # in reading order, numbered (see number_sections)
    answers: list[Answer]
    figures: list[Figure]
    layouts: list[FigureLayout] = field(default_factory=list)
    store_root: str = ""
    lr_ranges: list[dict[str, Any]] = field(default_factory=list)  # the sweep's range tests

    @property
    def tables(self) -> list[Table]:
        """The tables in report order (each written to tables/<name>.md, .tex, .csv, .html)."""
        return [s.table for s in self.sections if s.table is not None]

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)

    @property
    def summary(self) -> Table:
        return self._required("summary")

    @property
    def system(self) -> Table:
        return self._required("system")

    @property
    def estimates(self) -> Table | None:
        """Predicted against measured, when runs were predicted."""
        return self.table("estimates")

    def _required(self, name: str) -> Table:
        table = self.table(name)
        if table is None:
            raise LookupError(f"the report has no {name} table")
        return table

    def close(self) -> None:
        for fig in self.figures:
            fig.close()


# --- shared by the renderers --------------------------------------------------------------------


def file_link(path: str, out: Path | None) -> str:
    """``path`` as a link from the report in folder ``out``: relative, with forward slashes
    (a file: URI when the folder is not known)."""
    if out is None:
        return Path(path).resolve().as_uri()
    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix()


LR_RANGE_COLUMNS = ("test", "steepest", "valley", "min / 10", "candidates", "trusted", "steps",
                    "seconds")


def lr_range_rows(lr_ranges: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The suggestions of each stored range test, one row of cells (``LR_RANGE_COLUMNS``)."""
    rows = []
    for r in lr_ranges:
        label = ", ".join(f"{k}={v}" for k, v in (r.get("label") or {}).items()) or "all"
        cands = ", ".join(format_sig(c) for c in r.get("candidates") or []) or "-"
        flags = ", ".join(f.get("code", "") for f in r.get("flags") or [])
        rows.append([label, format_sig(r.get("steepest")), format_sig(r.get("valley")),
                     format_sig(r.get("minimum")), cands,
                     "yes" if r.get("trusted") else "no: " + flags, str(r.get("steps")),
                     f"{float(r.get('seconds') or 0):.1f}"])
    return rows


__all__ = ["ANSWERS", "LR_RANGE_COLUMNS", "LR_RANGE_SUGGESTIONS", "RUNS", "Report",
           "ReportOptions", "Section", "SectionKind", "figure_sections", "file_link",
           "lr_range_rows", "number_sections", "table_section"]
