"""The report as an ordered list of sections: both renderers walk it, numbering follows it,
and a new table is one entry in it."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import trainlab.analysis
from trainlab.analysis.html import render_html
from trainlab.analysis.markdown import render_markdown
from trainlab.analysis.report import ReportOptions, build_report, write_report
from trainlab.analysis.sections import (
    ANSWERS,
    LR_RANGE_SUGGESTIONS,
    RUNS,
    Report,
    Section,
    number_sections,
    table_section,
)
from trainlab.analysis.tables import Column, Table
from trainlab.store import Store

RUNS_2 = [
    {"values": {"optimizer.name": "adam"}, "train": [300, 150], "valid": [260, 160],
     "time": [3, 6], "memory": 300},
    {"values": {"optimizer.name": "sgd"}, "train": [900, 700], "valid": [880, 690],
     "time": [2, 4], "memory": 280},
]
LR_RANGE = {"label": {"model.hidden_dim": 4}, "steepest": 0.0329, "valley": 0.00304,
            "minimum": 0.0574, "candidates": [4.18e-05, 0.0127], "trusted": False,
            "flags": [{"code": "noisy"}], "steps": 30, "seconds": 0.12}


def _table(name: str, title: str) -> Table:
    return Table(name, title, [Column("x", "x", "number", "x: a number")], [{"x": 1.5}], [None],
                 [], f"The {name} table.")


def _fig(name: str) -> Any:
    return SimpleNamespace(name=name, section="curves", title=name, caption=f"{name}.")


def test_numbering_follows_the_list() -> None:
    figs_a, figs_b = (_fig("a1"), _fig("a2")), (_fig("b1"),)
    sections = number_sections([
        table_section(_table("one", "One")),
        ANSWERS,
        Section("fa", "Figures A", "figures", figures=figs_a),
        None,  # a section not built (a table of predictions when nothing was predicted)
        table_section(None),
        Section("fb", "Figures B", "figures", figures=figs_b),
        table_section(_table("two", "Two")),
        RUNS,
    ])
    assert [s.id for s in sections] == ["one", "answers", "fa", "fb", "two", "runs"]
    assert [(s.id, s.number) for s in sections if s.kind == "table"] == [("one", 1), ("two", 2)]
    numbered = [(n, f.name) for s in sections for n, f in s.numbered_figures()]
    assert numbered == [(1, "a1"), (2, "a2"), (3, "b1")]
    # The heading of a table section is the table's own title, its anchor the table's name.
    assert (sections[0].title, sections[-2].title) == ("One", "Two")


@pytest.fixture
def report(make_store: Callable[..., Store]) -> Iterator[Report]:
    store = make_store("two", ["optimizer.name"], RUNS_2)
    built = build_report(store, ReportOptions(formats=("png",)))
    yield built
    built.close()


def _md_headings(md: str) -> list[str]:
    return [line[3:] for line in md.splitlines() if line.startswith("## ")]


def _html_headings(page: str) -> tuple[list[str], list[str], list[str]]:
    toc = re.findall(r'<li><a href="#([^"]+)">([^<]+)</a></li>', page)
    h2 = re.findall(r'<section id="([^"]+)"><h2>([^<]+)</h2>', page)
    return [a for a, _ in toc], [h for _, h in toc], [a for a, _ in h2] + [h for _, h in h2]


def _pngs(report: Report) -> dict[str, bytes]:
    return {f.name: b"png" for f in report.figures}


def test_both_renderers_walk_the_same_sections(report: Report) -> None:
    ids = [s.id for s in report.sections]
    titles = [s.title for s in report.sections]
    assert ids == ["summary", "answers", "curves-perplexity-epoch", "curves-perplexity-time",
                   "curves-loss-epoch", "curves-loss-time", "pareto", "system", "runs"]
    md = render_markdown(report)
    page = render_html(report, _pngs(report))
    assert _md_headings(md) == [s.title for s in report.sections if not s.html_only]
    toc_ids, toc_titles, h2 = _html_headings(page)
    assert toc_ids == ids and toc_titles == titles and h2 == ids + titles
    # Tables and figures carry the same numbers in both, in list order.
    assert re.findall(r"\*Table (\d+):", md) == ["1", "2"]
    assert re.findall(r"<b>Table (\d+)\. </b>", page) == ["1", "2"]
    n = len(report.figures)
    assert re.findall(r"\*Figure (\d+):", md) == [str(i) for i in range(1, n + 1)]
    assert re.findall(r"<b>Figure (\d+)\.</b>", page) == [str(i) for i in range(1, n + 1)]
    assert [t.name for t in report.tables] == ["summary", "system"]


def test_a_new_table_is_one_entry(report: Report, tmp_path: Path) -> None:
    """A table (and the LR range suggestions) added to the list reach the Markdown, the page,
    its contents and tables/, numbered where they stand."""
    extra = _table("extra", "An extra table")
    sections = list(report.sections)
    sections.insert(1, table_section(extra))
    sections.insert(-2, LR_RANGE_SUGGESTIONS)
    report = replace(report, sections=number_sections(sections), lr_ranges=[LR_RANGE])
    md = render_markdown(report)
    page = render_html(report, _pngs(report))
    assert _md_headings(md)[:3] == ["Summary", "An extra table", "Answers"]
    assert "LR range test suggestions" in _md_headings(md)
    assert _md_headings(md) == [s.title for s in report.sections if not s.html_only]
    assert _html_headings(page)[1] == [s.title for s in report.sections]
    assert re.findall(r"\*Table (\d+): The (\w+) table", md) == [("2", "extra")]
    assert re.findall(r"<b>Table (\d+)\. </b>", page) == ["1", "2", "3"]
    assert "Table 3: System costs" in md
    # The suggestions: the same cells in both renderers.
    row = "model.hidden_dim=4 | 0.0329 | 0.00304 | 0.0574 | 4.18e-05, 0.0127 | no: noisy | 30 | 0.1"
    assert f"| {row} |" in md
    assert "<td>" + "</td><td>".join(row.split(" | ")) + "</td>" in page
    written = write_report(report, tmp_path / "out")
    assert {"extra.md", "extra.tex", "extra.csv", "extra.html"} <= {p.name for p in written}
    assert (tmp_path / "out" / "tables" / "extra.md").read_text().startswith("| x |")


def _imports(path: Path) -> set[str]:
    """The trainlab.analysis modules a file imports, at any level (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n.rsplit(".", 1)[-1] for n in names if n.startswith("trainlab.analysis.")}


def test_analysis_imports_flow_one_way() -> None:
    """No circle among the analysis modules: report -> html/markdown -> sections -> ...."""
    root = Path(trainlab.analysis.__file__).parent
    graph = {p.stem: _imports(p) for p in root.glob("*.py") if p.stem != "__init__"}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import circle: " + " -> ".join([*path, node])
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])
    assert {"html", "markdown", "report"}.isdisjoint(graph["sections"])
    assert "report" not in graph["html"] | graph["plots"] | graph["markdown"]
    assert graph["fmt"] == set()
