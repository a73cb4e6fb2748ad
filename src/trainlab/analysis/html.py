"""The self-contained HTML report: figures inline (base64 PNG), styles and a small script inline,
no network.  The page layout lives in ``templates/report.html``."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from trainlab.analysis.fmt import format_evidence, format_number
from trainlab.analysis.render import to_html
from trainlab.analysis.sections import (
    LR_RANGE_COLUMNS,
    Report,
    Section,
    file_link,
    lr_range_rows,
)

if TYPE_CHECKING:
    from trainlab.analysis.answers import Answer


def render_html(report: Report, pngs: dict[str, bytes], out: Path | None = None) -> str:
    """The page: a table of contents, then each of the report's sections in order; files a
    section links (profile traces) are linked relative to ``out``, the page's folder."""
    from trainlab import __version__

    frames = report.frames
    esc = html.escape
    body = [f"<h1>Report: sweep {esc(frames.name)}</h1>", f'<p class="meta">{_meta(report)}</p>',
            '<nav class="toc" aria-label="contents"><b>Contents</b><ol>'
            + "".join(f'<li><a href="#{s.id}">{esc(s.title)}</a></li>' for s in report.sections)
            + "</ol></nav>"]
    for section in report.sections:
        body += _section(report, section, pngs)
        if section.links:  # inside the section: before its closing tag
            body[-1:-1] = [_links(section.links, out)]
    template = Template(resources.files("trainlab.analysis").joinpath(
        "templates/report.html").read_text(encoding="utf-8"))
    return template.substitute(title=esc(f"trainlab report: {frames.name}"),
                               version=esc(__version__), body="\n".join(body))


def _section(report: Report, section: Section, pngs: dict[str, bytes]) -> list[str]:
    esc = html.escape
    start = f'<section id="{esc(section.id)}"><h2>{esc(section.title)}</h2>'
    if section.kind == "table":
        assert section.table is not None
        return [start + '<div class="scroll">', to_html(section.table, section.number),
                "</div></section>"]
    body = [start]
    if section.kind == "answers":
        body += [_answer(a) for a in report.answers]
    elif section.kind == "figures":
        for number, fig in section.numbered_figures():
            data = base64.b64encode(pngs[fig.name]).decode("ascii")
            body.append(
                f'<figure id="fig-{esc(fig.name)}"><img src="data:image/png;base64,{data}" '
                f'alt="{esc(fig.title)}"><figcaption><b>Figure {number}.</b> '
                f"{esc(fig.caption)} <span class=\"meta\">(files: figures/{esc(fig.name)}.png, "
                f".svg)</span></figcaption></figure>")
    elif section.kind == "lr-ranges":
        body.append(_lr_range_table(report))
    elif section.kind == "runs":
        frames = report.frames
        body.append("<p>Each run's resolved config (every default filled in), summary and "
                    "environment; run numbers in the tables link here.</p>")
        body += [_run(frames, row) for _, row in frames.runs.sort_values("index").iterrows()]
        for s in frames.skipped:
            body.append(f'<details class="run" id="run-{s["index"]}"><summary>run {s["index"]}'
                        f' · {esc(str(s["run_id"]))} · {esc(str(s["status"]))} · no epoch '
                        f"recorded</summary><pre>{esc(str(s.get('error') or ''))}</pre></details>")
    body.append("</section>")
    return body


def _links(links: tuple[tuple[str, str], ...], out: Path | None) -> str:
    esc = html.escape
    items = "".join(f'<li><a href="{esc(file_link(path, out))}">{esc(text)}</a></li>'
                    for text, path in links)
    return f'<ul class="files">{items}</ul>'


def _lr_range_table(report: Report) -> str:
    """The stored range tests' suggestions, as a sortable HTML table."""
    rows = lr_range_rows(report.lr_ranges)
    esc = html.escape
    return ('<div class="scroll"><table class="sortable"><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in LR_RANGE_COLUMNS) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table></div>")


def _meta(report: Report) -> str:
    frames = report.frames
    varied = ", ".join(f"{frames.label(k)} (<code>{html.escape(k)}</code>)"
                       for k in frames.varied) or "nothing"
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    skipped = (f" {len(frames.skipped)} runs without a recorded epoch are left out."
               if frames.skipped else "")
    return (f"{len(frames.runs)} runs from the store at <code>{html.escape(report.store_root)}"
            f"</code>; varied: {varied}; quality metric: {html.escape(frames.metric.name)}. "
            f"Generated {when}.{skipped}")


def _answer(answer: Answer) -> str:
    esc = html.escape
    parts = [f'<div class="answer" id="answer-{esc(answer.key)}"><h3>{esc(answer.question)}</h3>',
             f"<p>{esc(answer.answer)}</p>"]
    if answer.figure:
        parts.append(f'<p class="meta">See the figure <a href="#fig-{esc(answer.figure)}">'
                     f"{esc(answer.figure.replace('_', ' '))}</a>.</p>")
    if answer.evidence:
        head = "".join(f'<th scope="col">{esc(c)}</th>' for c in answer.columns)
        rows = []
        for r in answer.evidence:
            cells = []
            for c in answer.columns:
                value = r.get(c)
                sort = value if isinstance(value, int | float) and not isinstance(value, bool) \
                    else ""
                text = format_evidence(value)
                if c == "run" and value is not None:
                    first = str(value).replace("-", ",").split(",")[0].strip()
                    text = f'<a href="#run-{esc(first)}" class="runlink">{esc(text)}</a>'
                else:
                    text = esc(text)
                cells.append(f'<td data-sort="{esc(str(sort))}">{text}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f'<div class="scroll"><table class="sortable evidence">'
                     f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
                     "</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _run(frames: Any, row: Any) -> str:
    esc = html.escape
    summary = row["summary"] or {}
    m = frames.metric.name
    headline = []
    for key in (f"best_valid_{m}", f"test_{m}"):
        if isinstance(summary.get(key), int | float):
            headline.append(f"{key.replace('_', ' ')} {format_number(float(summary[key]))}")
    desc = frames.describe(row) or "base config"
    payload = json.dumps({"run_id": row["run_id"], "config": row["config"], "summary": summary,
                          "env": row["env"]}, indent=1, default=str)
    error = (f'<p class="note">{esc(str(row["error"]))}</p>' if row["error"] else "")
    return (f'<details class="run" id="run-{row["index"]}"><summary>run {row["index"]} · '
            f"<code>{esc(row['run_id'])}</code> · {esc(str(row['status']))} · {esc(desc)}"
            f"{' · ' + esc(', '.join(headline)) if headline else ''}</summary>{error}"
            f"<pre>{esc(payload)}</pre></details>")


__all__ = ["render_html"]
