"""Runs whose timing other work on the machine disturbed (perf/disturbed): marked in the
tables and in `trainlab show`, left out of the time answers (made-up stores, no training)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from tests.unit.analysis.fakes import LM_VARIED, lm_runs
from trainlab.analysis.answers import answer_all
from trainlab.analysis.frames import load_sweep
from trainlab.analysis.render import to_csv
from trainlab.analysis.tables import (
    DISTURBED_SYMBOL,
    estimate_table,
    summary_table,
    system_table,
)
from trainlab.cli import app
from trainlab.store import Store

runner = CliRunner()


def _runs(disturbed: dict[int, list[float]]) -> list[dict[str, Any]]:
    """lm_runs() (see fakes: run 3 wins the time answers) with perf/disturbed recorded for
    every run: 0.0 per epoch unless ``disturbed`` gives that run's flags."""
    runs = lm_runs()
    for i, run in enumerate(runs, 1):
        run["disturbed"] = disturbed.get(i, [0.0] * len(run["valid"]))
    return runs


def test_tables_mark_the_time_cells_of_a_disturbed_run(make_store: Callable[..., Store]
                                                         ) -> None:
    frames = load_sweep(make_store("lm", LM_VARIED, _runs({3: [0.0, 1.0, 0.0, 0.0]})), "lm")
    for table in (summary_table(frames), system_table(frames)):
        row = next(i for i, r in enumerate(table.rows) if r["index"] == 3)
        other = next(i for i, r in enumerate(table.rows) if r["index"] == 4)
        timed = [c for c in table.columns if c.key in ("train_time", "samples_per_s",
                                                          "epoch_time")]
        assert timed
        for col in timed:
            assert table.cell(row, col).endswith(DISTURBED_SYMBOL)
            assert DISTURBED_SYMBOL not in table.cell(other, col)
        metric = next(c for c in table.columns if c.key == "params_total")
        assert DISTURBED_SYMBOL not in table.cell(row, metric)  # only time and throughput
        legend = [n for n in table.notes if n.startswith(DISTURBED_SYMBOL)]
        assert len(legend) == 1 and "quiet machine" in legend[0]


def test_no_legend_without_a_disturbed_run(lm_store: Store) -> None:
    table = summary_table(load_sweep(lm_store, "lm"))
    assert not any(DISTURBED_SYMBOL in n for n in table.notes)


def test_time_answers_leave_a_disturbed_run_out(make_store: Callable[..., Store]) -> None:
    frames = load_sweep(make_store("lm", LM_VARIED, _runs({3: [1.0, 0.0, 0.0, 0.0]})), "lm")
    answers = {a.key: a for a in answer_all(frames)}
    # Without the flag run 3 wins all three (test_answers.py); its timing is not trusted now.
    wall = answers["wall_clock"]
    assert wall.runs == ["6"] and "Left out: run 3" in wall.answer
    assert "3" not in [e["run"] for e in wall.evidence]
    assert answers["time_budget"].runs == ["6"]
    assert "Left out: run 3" in answers["time_budget"].answer
    assert "3" not in answers["pareto_time"].runs
    assert "Left out: run 3" in answers["pareto_time"].answer
    # Memory and quality answers do not depend on the clock.
    assert "3" in answers["pareto_memory"].runs
    assert answers["generalization"].runs == ["3"]


def test_time_answers_cannot_decide_when_every_run_is_disturbed(
        make_store: Callable[..., Store]) -> None:
    flags = {i: [1.0] * len(r["valid"]) for i, r in enumerate(lm_runs(), 1)}
    frames = load_sweep(make_store("lm", LM_VARIED, _runs(flags)), "lm")
    answers = {a.key: a for a in answer_all(frames)}
    for key in ("wall_clock", "time_budget", "pareto_time"):
        assert answers[key].answer.startswith("Could not decide"), answers[key].answer
        assert "disturbed" in answers[key].answer and answers[key].runs == []


def test_report_and_show_mark_the_disturbed_run(make_store: Callable[..., Store],
                                                tmp_path: Path) -> None:
    store = make_store("lm", LM_VARIED, _runs({3: [0.0, 1.0, 0.0, 0.0]}))
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "--store", str(store.root), "--out", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert DISTURBED_SYMBOL in md and "timing disturbed by other work" in md
    assert r"$^{\dagger}$" in (out / "tables" / "summary.tex").read_text()
    run_id = store.runs("lm").sort_values("index")["run_id"].iloc[2]
    shown = runner.invoke(app, ["show", run_id, "--store", str(store.root)],
                          catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    epoch_rows = [line for line in shown.output.splitlines() if "disturbed †" in line]
    assert len(epoch_rows) == 1 and "1 of 4 epochs" in shown.output


def test_estimates_table_shows_no_time_error_for_a_disturbed_run(
        make_store: Callable[..., Store]) -> None:
    # Run 3's prediction came from a disturbed probe, run 4's measured epochs were disturbed;
    # every prediction says 2.2 s per epoch (runs 3 and 4 measured 2 s and 1 s: +10 %, +120 %).
    store = make_store("lm", LM_VARIED, _runs({4: [0.0, 1.0, 0.0, 0.0]}))
    runs = load_sweep(store, "lm").runs
    ids = dict(zip(runs["index"], runs["run_id"]))
    store.set_estimates({run_id: {
        "method": "probe", "peak_bytes": 100 * 2**20, "epoch_train_s": 2.2, "run_s": 10.0,
        "disturbed": i == 3, "cpu_wait": 0.6 if i == 3 else 0.01} for i, run_id in ids.items()})
    table = estimate_table(load_sweep(store, "lm"))
    assert table is not None
    col = {c.key: c for c in table.columns}
    row = {r["index"]: i for i, r in enumerate(table.rows)}
    for index in (3, 4):
        assert table.cell(row[index], col["time_error_pct"]) == DISTURBED_SYMBOL
        assert table.cell(row[index], col["mem_error_pct"]) not in ("-", DISTURBED_SYMBOL)
    assert table.cell(row[3], col["predicted_epoch_time"]).endswith(DISTURBED_SYMBOL)
    assert DISTURBED_SYMBOL not in table.cell(row[4], col["predicted_epoch_time"])
    quiet = table.cell(row[1], col["time_error_pct"])  # run 1: 3 s measured, -26.7 %
    assert quiet == "-26.7"
    assert "time_error_pct" in to_csv(table).splitlines()[0]
    note = [n for n in table.notes if "no time error" in n]
    assert len(note) == 1 and "run 3; 4" in note[0] and "Memory errors are shown" in note[0]


def test_the_pareto_time_figure_draws_a_disturbed_run_unranked(
        make_store: Callable[..., Store]) -> None:
    """Run 3 wins the time front when trusted (see fakes); disturbed, the figure still draws it,
    marked, but the front (as the answer's) is made of the others."""
    from trainlab.analysis.report import _pareto_figures

    frames = load_sweep(make_store("lm", LM_VARIED, _runs({3: [0.0, 1.0, 0.0, 0.0]})), "lm")
    figure = next(f for f in _pareto_figures(frames) if f.name == "pareto_time")
    labels = [t.get_text() for t in figure.figure.axes[0].texts]
    assert f"3 {DISTURBED_SYMBOL}" in labels
    assert DISTURBED_SYMBOL in figure.caption
    front_x = figure.figure.axes[0].collections[1].get_offsets()[:, 0].tolist()
    assert 8.0 not in front_x  # run 3 (8 s of training) is not on the red front
    trusted = load_sweep(make_store("lm", LM_VARIED, _runs({})), "lm")
    figure = next(f for f in _pareto_figures(trusted) if f.name == "pareto_time")
    assert 8.0 in figure.figure.axes[0].collections[1].get_offsets()[:, 0].tolist()


def test_ls_marks_the_disturbed_run_and_says_why(make_store: Callable[..., Store]) -> None:
    store = make_store("lm", LM_VARIED, _runs({3: [0.0, 1.0, 0.0, 0.0]}))
    listed = runner.invoke(app, ["ls", "--store", str(store.root)], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.output.splitlines() if DISTURBED_SYMBOL in line]
    marked = [line for line in rows if "disturbed" not in line]  # the table's rows
    assert len(marked) == 1 and "│ 3 " in marked[0]
    assert "other work on the machine disturbed" in listed.output
    calm = make_store("lm", LM_VARIED, _runs({}))
    listed = runner.invoke(app, ["ls", "--store", str(calm.root)], catch_exceptions=False)
    assert DISTURBED_SYMBOL not in listed.output
