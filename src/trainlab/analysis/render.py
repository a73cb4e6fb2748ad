"""Write a :class:`~trainlab.analysis.tables.Table` as Markdown, LaTeX (booktabs), HTML, CSV."""

from __future__ import annotations

import csv
import html
import io
import math
import re
from typing import Any

from trainlab.analysis.tables import TIE_SYMBOL, Column, Table

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))
# Symbols that must leave text mode; applied after escaping, so their own $ survive.
_LATEX_MATH = {"±": r"$\pm$", "≈": r"$\approx$", "*": r"$^{*}$", "−": r"$-$", "†": r"$^{\dagger}$"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell or caption (special characters escaped)."""
    out = _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group(0)], text)
    for symbol, math_form in _LATEX_MATH.items():
        out = out.replace(symbol, math_form)
    return out


def _text(table: Table, row: int, col: Column) -> str:
    text = table.cell(row, col)
    if table.marks[row] == "tie" and col.key == _metric_key(table):
        text = f"{text} {TIE_SYMBOL}"
    return text


def _metric_key(table: Table) -> str | None:
    return next((c.key for c in table.columns if c.key.startswith("valid_")), None)


def to_markdown(table: Table, number: int | None = None) -> str:
    headers = [c.header for c in table.columns]
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |",
             "|" + "|".join("---" if c.kind in ("text",) else "---:" for c in table.columns)
             + "|"]
    for r in range(len(table.rows)):
        cells = [_md(_text(table, r, c)) for c in table.columns]
        if table.marks[r] == "best":
            cells = [f"**{c}**" if c.strip() else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    label = f"Table {number}: " if number is not None else ""
    caption = f"\n\n*{label}{_md(table.caption)}*"
    notes = "".join(f"\n\n{_md(n)}" for n in table.notes)
    return "\n".join(lines) + caption + notes + "\n"


def _md(text: str) -> str:
    return text.replace("|", r"\|").replace("*", r"\*").replace("_", r"\_")


def to_latex(table: Table) -> str:
    """A booktabs table with a caption that explains every abbreviation and symbol."""
    spec = "".join("l" if c.kind == "text" else "r" for c in table.columns)
    out = [r"% Needs \usepackage{booktabs}.", r"\begin{table}[htbp]", r"\centering",
           r"\small", rf"\caption{{{latex_escape(table.caption)}}}",
           rf"\label{{tab:{table.name}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(latex_escape(c.header) for c in table.columns) + r" \\", r"\midrule"]
    previous = None
    for r in range(len(table.rows)):
        group = table.groups[r] if table.groups else None
        if previous is not None and group != previous:
            out.append(r"\midrule")
        previous = group
        cells = [latex_escape(_text(table, r, c)) for c in table.columns]
        if table.marks[r] == "best":
            cells = [rf"\textbf{{{c}}}" for c in cells]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    for note in table.notes:
        out.append(rf"\par\smallskip\footnotesize {latex_escape(note)}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """Raw numbers (no formatting), one column per table column plus std, n and the mark."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header: list[str] = []
    for c in table.columns:
        header.append("run" if c.kind == "run" else c.key)
        if table.seeded and c.kind not in ("text", "run", "int", "count"):
            header.append(f"{c.key}_std")
    header += ["run_ids", "mark"]
    writer.writerow(header)
    for r, values in enumerate(table.rows):
        row: list[Any] = []
        for c in table.columns:
            if c.kind == "run":
                row.append(" ".join(map(str, values.get("indices") or [values.get("index")])))
            else:
                row.append(_raw(values.get(c.key)))
            if table.seeded and c.kind not in ("text", "run", "int", "count"):
                row.append(_raw(values.get(f"{c.key}_std")))
        ids = values.get("run_ids") or [values.get("run_id")]
        row += [" ".join(str(i) for i in ids if i), table.marks[r] or ""]
        writer.writerow(row)
    return buf.getvalue()


def _raw(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def to_html(table: Table, number: int | None = None, table_id: str | None = None) -> str:
    """A sortable table (``class="sortable"``; the report's script sorts on header click)."""
    tid = table_id or f"table-{table.name}"
    out = [f'<table class="sortable" id="{tid}">']
    label = f"Table {number}. " if number is not None else ""
    out.append(f"<caption><b>{html.escape(label)}</b>{html.escape(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(
        f'<th class="{"txt" if c.kind == "text" else "num"}" scope="col">'
        f"{html.escape(c.header)}</th>" for c in table.columns) + "</tr></thead><tbody>")
    previous = None
    for r, values in enumerate(table.rows):
        classes: list[str] = [table.marks[r] or ""]
        group = table.groups[r] if table.groups else None
        if previous is not None and group != previous:
            classes.append("group-start")
        previous = group
        cells = []
        for c in table.columns:
            text = html.escape(_text(table, r, c))
            key = table.sort_value(r, c)
            sort = "" if key is None or (isinstance(key, float) and math.isnan(key)) else key
            attr = f' data-sort="{html.escape(str(sort))}"'
            if c.kind == "run":
                target = min(values.get("indices") or [values.get("index")])
                text = f'<a href="#run-{target}" class="runlink">{text}</a>'
            cells.append(f'<td class="{"txt" if c.kind == "text" else "num"}"{attr}>{text}</td>')
        cls = " ".join(x for x in classes if x)
        out.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    for note in table.notes:
        out.append(f'<p class="note">{html.escape(note)}</p>')
    return "\n".join(out)


__all__ = ["latex_escape", "to_csv", "to_html", "to_latex", "to_markdown"]
