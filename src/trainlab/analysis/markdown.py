"""The Markdown report (``report.md``): the report's sections in order, figures linked from
``figures/``.  Sections marked ``html_only`` (the runs' configs) are left to the HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trainlab.analysis.fmt import format_evidence
from trainlab.analysis.render import to_markdown
from trainlab.analysis.sections import (
    LR_RANGE_COLUMNS,
    Report,
    Section,
    file_link,
    lr_range_rows,
)

if TYPE_CHECKING:
    from trainlab.analysis.answers import Answer


def render_markdown(report: Report, out: Path | None = None) -> str:
    """The report's sections in order; files a section links are relative to ``out``."""
    frames = report.frames
    lines = [f"# Report: sweep {frames.name}", "", _intro(report), ""]
    for section in report.sections:
        if not section.html_only:
            lines += [f"## {section.title}", "", *_body(report, section)]
            if section.links:
                lines += [*(f"- [{text}]({file_link(path, out)})"
                            for text, path in section.links), ""]
    return "\n".join(lines)


def _body(report: Report, section: Section) -> list[str]:
    if section.kind == "table":
        assert section.table is not None
        return [to_markdown(section.table, section.number)]  # ends in a newline
    lines: list[str] = []
    if section.kind == "answers":
        for answer in report.answers:
            lines += [f"### {answer.question}", "", answer.answer, ""]
            if answer.evidence:
                lines += [evidence_markdown(answer), ""]
    elif section.kind == "figures":
        for number, fig in section.numbered_figures():
            lines += [f"![{fig.title}](figures/{fig.name}.png)", "",
                      f"*Figure {number}: {fig.caption}*", ""]
    elif section.kind == "lr-ranges":
        lines += [lr_range_markdown(report), ""]
    return lines


def lr_range_markdown(report: Report) -> str:
    """The suggestions of each stored range test, as a Markdown table."""
    head = "| " + " | ".join(LR_RANGE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in LR_RANGE_COLUMNS) + "|"
    rows = ["| " + " | ".join(cells) + " |" for cells in lr_range_rows(report.lr_ranges)]
    return "\n".join([head, rule, *rows])


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


__all__ = ["evidence_markdown", "lr_range_markdown", "render_markdown"]
