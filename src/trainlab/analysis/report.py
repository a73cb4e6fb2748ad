"""``trainlab report``: tables, figures and answers for one sweep, written to a directory.

Building (reading the store, checking options, computing everything) happens before any file is
written, so bad input leaves nothing behind; each file is written under a temporary name and
renamed, so a reader never sees a half-written report.

``build_report`` lays the report out as an ordered list of sections (``sections.py``), which
``markdown.py`` and ``html.py`` both walk; this module imports them, never the other way round.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trainlab.analysis.answers import answer_all, config_frame, memory_cost
from trainlab.analysis.files import atomic_write_bytes, atomic_write_text
from trainlab.analysis.fmt import format_evidence, mib
from trainlab.analysis.frames import SweepFrames, load_sweep
from trainlab.analysis.html import render_html
from trainlab.analysis.layout import default_layout, explicit_layout
from trainlab.analysis.markdown import evidence_markdown, render_markdown
from trainlab.analysis.pareto import cost_noise, noise_text, noisy_front, value_noise
from trainlab.analysis.plots import Figure, XAxis, curve_figures, pareto_figure
from trainlab.analysis.profiles import (
    operator_table,
    phase_figure,
    profiled_runs,
    trace_links,
)
from trainlab.analysis.render import to_csv, to_html, to_latex, to_markdown
from trainlab.analysis.search import search_figures, search_layout, search_view, trials_table
from trainlab.analysis.sections import (
    ANSWERS,
    LR_RANGE_SUGGESTIONS,
    RUNS,
    Report,
    ReportOptions,
    Section,
    figure_sections,
    number_sections,
    table_section,
)
from trainlab.analysis.splits import splits_sentence, splits_table
from trainlab.analysis.tables import (
    DISTURBED_SYMBOL,
    estimate_table,
    summary_table,
    system_table,
)
from trainlab.errors import ConfigError


def build_report(store: Any, options: ReportOptions) -> Report:
    """Read the sweep and compute every table, figure and answer (writes nothing)."""
    _check_options(options)
    frames = load_sweep(store, options.sweep, options.metric)
    summary = summary_table(frames, sort=options.sort, group=options.group)
    splits = splits_sentence(frames)  # which split is valid, which is test (GLUE swaps)
    if splits:
        summary.caption += " " + splits
    order = [r["group"] for r in summary.rows]  # the other tables list rows in this order
    if options.facet is not None or options.panel or options.hue:
        layouts = explicit_layout(frames, options.facet, options.panel, options.hue)
    elif (trial_layout := search_layout(frames)) is not None:  # not a figure per trial
        layouts = explicit_layout(frames, *trial_layout)
    else:
        layouts = default_layout(frames)
    answers = answer_all(frames, target=options.target, overfit_epochs=options.overfit_epochs)
    figures: list[Figure] = []
    axes: tuple[XAxis, ...] = ("epoch", "time")
    # A report holds its figures until they are written (Report.close frees them): a sweep
    # with many groups opens more than matplotlib's 20 without anything leaking.
    import matplotlib

    try:
        with matplotlib.rc_context({"figure.max_open_warning": 0}):
            for metric in frames.metrics:
                for x in axes:
                    figures += curve_figures(frames, layouts, metric, x, options.clock)
            figures += _pareto_figures(frames)
            ranges = _lr_ranges(store, frames.name)
            figures += [_lr_range_figure(i, r) for i, r in enumerate(ranges, 1)]
            # Where the time goes: runs trained with train.profile (none: no section).
            profiled = profiled_runs(frames, str(getattr(store, "root", "")))
            phases = phase_figure(profiled) if profiled else None
            if phases is not None:
                figures.append(phases)
            # A search (search: in the sweep file): its trials, progress and chosen config.
            view = search_view(frames, store)
            searched = search_figures(view) if view is not None else []
            figures += searched
        # The report, section by section, in reading order: the Markdown and the HTML
        # renderers both walk this list (headings, table and figure numbers, the page's
        # contents).  A new table: a function in tables.py and one table_section line here.
        sections = number_sections([
            table_section(summary),
            table_section(splits_table(frames)),  # None: no run recorded its splits
            table_section(trials_table(view)) if view is not None else None,
            Section("search", "Search", "figures", figures=tuple(searched))
            if searched else None,
            ANSWERS,
            *figure_sections(frames, figures),
            LR_RANGE_SUGGESTIONS if ranges else None,
            Section("profile", "Where the time goes", "figures", figures=(phases,),
                    links=trace_links(profiled)) if phases is not None else None,
            table_section(operator_table(profiled)),  # None: no run was profiled
            table_section(system_table(frames, order=order)),
            table_section(estimate_table(frames, order=order)),  # None: no run was predicted
            RUNS,
        ])
    except BaseException:
        for fig in figures:
            fig.close()
        raise
    return Report(frames, options, sections, answers, figures, layouts,
                  str(getattr(store, "root", "")), ranges)


def _lr_ranges(store: Any, sweep: str) -> list[dict[str, Any]]:
    """The LR range tests stored for this sweep (none for a store without them)."""
    reader = getattr(store, "lr_ranges", None)
    if reader is None:
        return []
    frame = reader(sweep)
    return [] if frame.empty else frame.to_dict(orient="records")


def _lr_range_figure(number: int, record: dict[str, Any]) -> Figure:
    from trainlab.analysis.lr_range import lr_range_figure

    label = ", ".join(f"{k}={v}" for k, v in (record.get("label") or {}).items()) or "all runs"
    result = record["result"]
    sug = result.get("suggestions", {})
    kind = "validation" if (result.get("settings") or {}).get("loss") == "valid" else "training"
    trust = ("trusted" if sug.get("trusted") else "not trusted: " + "; ".join(
        f.get("message", f.get("code", "")) for f in sug.get("flags", [])))
    caption = (f"LR range test {record['range_id']} ({label}): loss against learning rate on a "
               "log axis (raw and smoothed), with the suggestions marked and the candidate "
               "band shaded; middle: LR against step; right: loss against step "
               f"({kind} loss, as measured). {result.get('steps')} steps in "
               f"{float(result.get('seconds') or 0):.1f} s, stopped: {result.get('stopped')}. "
               f"The curve is {trust}.")
    fig = lr_range_figure(result, label)
    return Figure(f"lr-range-{number}", f"LR range test: {label}", caption, fig, "lr-range")


def _check_options(options: ReportOptions) -> None:
    if options.clock not in ("train", "wall"):
        raise ConfigError(f"`--clock`: {options.clock!r} is not a clock; valid: train, wall",
                          field="--clock")
    if options.overfit_epochs < 1:
        raise ConfigError(f"`--overfit-epochs` must be >= 1; got {options.overfit_epochs}",
                          field="--overfit-epochs")
    bad = [f for f in options.formats if f not in ("png", "svg", "pdf")]
    if bad or not options.formats:
        raise ConfigError(f"`--format`: {', '.join(bad) or 'nothing'} not supported; valid: "
                          "png, svg, pdf (comma-separated)",
                          field="--format")
    if options.target is not None and not math.isfinite(options.target):
        raise ConfigError(f"`--target` must be a finite number; got {options.target}",
                          field="--target")


def _pareto_figures(frames: SweepFrames) -> list[Figure]:
    configs = config_frame(frames)
    ok = configs[configs["status"] == "ok"].reset_index(drop=True)
    if len(ok) < 2:
        return []
    m = frames.metric
    out = []
    memory = memory_cost(configs)
    memory_label = ("peak of its own tensors (MiB)" if memory == "tensor_peak_bytes"
                    else "peak memory (MiB)")
    disturbed = pd.to_numeric(ok.get("disturbed_epochs", pd.Series(dtype=float)),
                              errors="coerce").fillna(0) > 0
    for key, cost, label in (("pareto_time", "train_time", "training time (s)"),
                             ("pareto_memory", memory, memory_label)):
        points: list[dict[str, Any]] = [
            {"label": frames.run_numbers(r), "value": float(r[f"valid_{m.name}"]),
             cost: float(r[cost]) if cost == "train_time" else mib(float(r[cost]))}
            for _, r in ok.iterrows()]
        if not any(math.isfinite(p[cost]) for p in points):
            continue
        # Time: a configuration whose timing other work disturbed is drawn (marked †) but
        # not ranked, as the Pareto answer leaves it out.
        untrusted = (set(disturbed[disturbed].index) if cost == "train_time"
                     and len(disturbed) == len(points) else set())
        ranked = [i for i in range(len(points)) if i not in untrusted]
        # Differences within the measurement's noise are ties (analysis/pareto.py), as in the
        # Pareto answer: one front point, the others drawn and marked "tie".
        noise = cost_noise(frames, ok.iloc[ranked], cost)
        spread = value_noise(ok.iloc[ranked], m.name)
        fronted = noisy_front([points[i][cost] for i in ranked],
                              [points[i]["value"] for i in ranked], m.higher_is_better,
                              noise, spread)
        front = [ranked[j] for j in fronted.front]
        ties = [ranked[j] for j in fronted.ties]
        for i in untrusted:
            points[i]["label"] = f"{points[i]['label']} {DISTURBED_SYMBOL}"
        for i in ties:
            points[i]["label"] = f"{points[i]['label']} tie"
        caption = (f"Best validation {m.abbrev} of each configuration against its {label}; "
                   "labels are run numbers. Red points form the Pareto front: no other "
                   "configuration is both cheaper and better by more than the measurement's "
                   f"noise ({noise_text(cost)}; "
                   "validation: the spread over seeds). Finished runs only"
                   + ("; seeds averaged." if frames.seeded else "."))
        if ties:
            caption += (" Orange points marked tie are within the noise of a front point: "
                        "their lead was within the noise, so the front keeps one of them.")
        if untrusted:
            caption += (f" {DISTURBED_SYMBOL}: timing disturbed by other work on the machine "
                        "(perf/disturbed); drawn, not ranked.")
        out.append(pareto_figure(frames, points, cost, label, front, key, caption, ties))
    return out


# --- writing ------------------------------------------------------------------------------------


def default_out(sweep: str) -> Path:
    return Path("reports") / sweep


def write_report(report: Report, out: Path) -> list[Path]:
    """Write everything under ``out``; returns the files written."""
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"`--out`: cannot create {str(out)!r}: {exc}", field="--out") from None
    written: list[Path] = []
    for table in report.tables:
        for ext, text in (("md", to_markdown(table)), ("tex", to_latex(table)),
                          ("csv", to_csv(table)), ("html", to_html(table))):
            path = out / "tables" / f"{table.name}.{ext}"
            atomic_write_text(path, text)
            written.append(path)
    pngs: dict[str, bytes] = {}
    for fig in report.figures:
        paths = fig.save(out / "figures", report.options.formats)
        written += paths
        png = next((p for p in paths if p.suffix == ".png"), None)
        pngs[fig.name] = png.read_bytes() if png else _png_bytes(fig)
    answers = out / "answers.json"
    atomic_write_text(answers, json.dumps([a.to_dict() for a in report.answers], indent=1,
                                          default=_json_default) + "\n")
    md = out / "report.md"
    atomic_write_text(md, render_markdown(report, out))
    html = out / "report.html"
    atomic_write_text(html, render_html(report, pngs, out))
    return [html, md, answers, *written]


def _png_bytes(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.figure.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def file_list(paths: Sequence[Path], root: Path) -> list[str]:
    return [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]


__all__ = ["Report", "ReportOptions", "atomic_write_bytes", "atomic_write_text",
           "build_report", "default_out", "evidence_markdown", "file_list", "format_evidence",
           "render_markdown", "write_report"]
