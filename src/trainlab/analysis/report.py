"""``trainlab report``: tables, figures and answers for one sweep, written to a directory.

Building (reading the store, checking options, computing everything) happens before any file is
written, so bad input leaves nothing behind; each file is written under a temporary name and
renamed, so a reader never sees a half-written report.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainlab.analysis.answers import Answer, answer_all, config_frame, pareto_front
from trainlab.analysis.frames import SweepFrames, load_sweep
from trainlab.analysis.layout import FigureLayout, default_layout, explicit_layout
from trainlab.analysis.plots import Clock, Figure, XAxis, curve_figures, pareto_figure
from trainlab.analysis.render import to_csv, to_html, to_latex, to_markdown
from trainlab.analysis.tables import (
    Table,
    estimate_table,
    format_number,
    summary_table,
    system_table,
)
from trainlab.errors import ConfigError


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
    summary: Table
    system: Table
    answers: list[Answer]
    figures: list[Figure]
    layouts: list[FigureLayout] = field(default_factory=list)
    store_root: str = ""
    estimates: Table | None = None  # predicted against measured, when runs were predicted
    lr_ranges: list[dict[str, Any]] = field(default_factory=list)  # the sweep's range tests

    @property
    def tables(self) -> list[Table]:
        return [t for t in (self.summary, self.system, self.estimates) if t is not None]

    def close(self) -> None:
        for fig in self.figures:
            fig.close()


def build_report(store: Any, options: ReportOptions) -> Report:
    """Read the sweep and compute every table, figure and answer (writes nothing)."""
    _check_options(options)
    frames = load_sweep(store, options.sweep, options.metric)
    summary = summary_table(frames, sort=options.sort, group=options.group)
    system = system_table(frames, order=[r["group"] for r in summary.rows])
    if options.facet is not None or options.panel or options.hue:
        layouts = explicit_layout(frames, options.facet, options.panel, options.hue)
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
    except BaseException:
        for fig in figures:
            fig.close()
        raise
    estimates = estimate_table(frames, order=[r["group"] for r in summary.rows])
    return Report(frames, options, summary, system, answers, figures, layouts,
                  str(getattr(store, "root", "")), estimates, ranges)


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
    trust = ("trusted" if sug.get("trusted") else "not trusted: " + "; ".join(
        f.get("message", f.get("code", "")) for f in sug.get("flags", [])))
    caption = (f"LR range test {record['range_id']} ({label}): loss against learning rate on a "
               "log axis (raw and smoothed), with the suggestions marked and the candidate "
               f"band shaded; right: LR against step. {result.get('steps')} steps in "
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
    for key, cost, label, scale in (("pareto_time", "train_time", "training time (s)", 1.0),
                                    ("pareto_memory", "peak_memory_bytes", "peak memory (MiB)",
                                     1 / 2**20)):
        points: list[dict[str, Any]] = [
            {"label": frames.run_numbers(r), "value": float(r[f"valid_{m.name}"]),
             cost: float(r[cost]) * scale} for _, r in ok.iterrows()]
        if not any(math.isfinite(p[cost]) for p in points):
            continue
        front = pareto_front([p[cost] for p in points], [p["value"] for p in points],
                             m.higher_is_better)
        caption = (f"Best validation {m.abbrev} of each configuration against its {label}; "
                   "labels are run numbers. Red points form the Pareto front: no other "
                   f"configuration is both cheaper and better. Finished runs only"
                   + ("; seeds averaged." if frames.seeded else "."))
        out.append(pareto_figure(frames, points, cost, label, front, key, caption))
    return out


# --- writing ------------------------------------------------------------------------------------


def default_out(sweep: str) -> Path:
    return Path("reports") / sweep


def write_report(report: Report, out: Path) -> list[Path]:
    """Write everything under ``out``; returns the files written."""
    from trainlab.analysis.html import render_html

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
    atomic_write_text(md, render_markdown(report))
    html = out / "report.html"
    atomic_write_text(html, render_html(report, pngs))
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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- Markdown -------------------------------------------------------------------------------------


def sections(report: Report) -> list[tuple[str, str, list[Figure]]]:
    """(anchor, heading, figures) of the figure sections, in report order."""
    frames = report.frames
    out = []
    for metric in frames.metrics:
        for x, over in (("epoch", "epochs"), ("time", "training time")):
            figs = [f for f in report.figures if f.section == "curves"
                    and f.name.startswith(f"{metric}-{x}-")]
            if figs:
                out.append((f"curves-{metric}-{x}", f"{metric.capitalize()} over {over}", figs))
    pareto = [f for f in report.figures if f.section == "pareto"]
    if pareto:
        out.append(("pareto", "Pareto fronts", pareto))
    ranges = [f for f in report.figures if f.section == "lr-range"]
    if ranges:
        out.append(("lr-range", "LR range tests", ranges))
    return out


def lr_range_markdown(report: Report) -> str:
    """The suggestions of each stored range test, as a Markdown table."""
    head = ("| test | steepest | valley | min / 10 | candidates | trusted | steps | seconds |\n"
            "|---|---|---|---|---|---|---|---|")
    rows = []
    for r in report.lr_ranges:
        label = ", ".join(f"{k}={v}" for k, v in (r.get("label") or {}).items()) or "all"
        cands = ", ".join(f"{c:.3g}" for c in r.get("candidates") or []) or "-"
        flags = ", ".join(f.get("code", "") for f in r.get("flags") or [])
        rows.append(f"| {label} | {_g(r.get('steepest'))} | {_g(r.get('valley'))} | "
                    f"{_g(r.get('minimum'))} | {cands} | "
                    f"{'yes' if r.get('trusted') else 'no: ' + flags} | {r.get('steps')} | "
                    f"{float(r.get('seconds') or 0):.1f} |")
    return "\n".join([head, *rows])


def _g(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g}"


def render_markdown(report: Report) -> str:
    frames = report.frames
    lines = [f"# Report: sweep {frames.name}", "", _intro(report), ""]
    lines += ["## Summary", "", to_markdown(report.summary, 1), "## Answers", ""]
    for answer in report.answers:
        lines += [f"### {answer.question}", "", answer.answer, ""]
        if answer.evidence:
            lines += [evidence_markdown(answer), ""]
    number = 0
    for _, heading, figs in sections(report):
        lines += [f"## {heading}", ""]
        for fig in figs:
            number += 1
            lines += [f"![{fig.title}](figures/{fig.name}.png)", "",
                      f"*Figure {number}: {fig.caption}*", ""]
    if report.lr_ranges:
        lines += ["## LR range test suggestions", "", lr_range_markdown(report), ""]
    lines += ["## Memory and throughput", "", to_markdown(report.system, 2)]
    if report.estimates is not None:
        lines += ["## Predicted and measured", "", to_markdown(report.estimates, 3)]
    return "\n".join(lines)


def _intro(report: Report) -> str:
    frames = report.frames
    keys = ", ".join(f"{frames.label(k)} (`{k}`)" for k in frames.varied) or "nothing"
    text = (f"{len(frames.runs)} runs with recorded epochs from the store at "
            f"`{report.store_root}`. Varied: {keys}. Quality metric: {frames.metric.name} "
            f"({frames.metric.abbrev}).")
    if frames.skipped:
        text += f" {len(frames.skipped)} runs have no recorded epoch and are left out."
    return text


def evidence_markdown(answer: Answer) -> str:
    head = "| " + " | ".join(answer.columns) + " |"
    rule = "|" + "|".join("---" for _ in answer.columns) + "|"
    body = ["| " + " | ".join(format_evidence(r.get(c)).replace("|", r"\|")
                              for c in answer.columns) + " |" for r in answer.evidence]
    return "\n".join([head, rule, *body])


def format_evidence(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else format_number(value)
    return str(value)


def file_list(paths: Sequence[Path], root: Path) -> list[str]:
    return [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]


__all__ = ["Report", "ReportOptions", "atomic_write_bytes", "atomic_write_text",
           "build_report", "default_out", "evidence_markdown", "file_list", "format_evidence",
           "render_markdown", "sections", "write_report"]
