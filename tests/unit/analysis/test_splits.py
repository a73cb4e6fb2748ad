"""Which split is valid and which is test, with sizes and sources: `show` and the report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from tests.unit.analysis.fakes import LM_VARIED, lm_runs
from trainlab.analysis.frames import load_sweep
from trainlab.analysis.render import to_markdown
from trainlab.analysis.splits import split_rows, splits_sentence, splits_table
from trainlab.cli import app
from trainlab.store import Store

GLUE = {"train": {"size": 204, "unit": "examples",
                  "source": "the rest of dataset split train"},
        "valid": {"size": 36, "unit": "examples",
                  "source": "15% of dataset split train held out (split_seed 0)"},
        "test": {"size": 60, "unit": "examples",
                 "source": "dataset split validation (split test has no labels)"}}


def _glue_runs() -> list[dict[str, Any]]:
    return [{**r, "splits": GLUE} for r in lm_runs()]


def test_split_rows_and_older_runs() -> None:
    assert split_rows(GLUE)[2] == ("test", "60 examples",
                                   "dataset split validation (split test has no labels)")
    assert split_rows(None) == [] and split_rows({}) == []
    assert split_rows({"valid": {"size": 5}}) == [("valid", "5 examples", "not recorded")]


def test_report_states_the_splits(make_store: Callable[..., Store]) -> None:
    store = make_store("glue", LM_VARIED, _glue_runs())
    frames = load_sweep(store, "glue")
    table = splits_table(frames)
    assert table is not None and [r["split"] for r in table.rows] == ["train", "valid", "test"]
    md = to_markdown(table)
    assert "dataset split validation (split test has no labels)" in md and "| all |" in md
    assert "correspond to the test columns" in table.caption  # GLUE's swap is named
    sentence = splits_sentence(frames)
    assert sentence.startswith("Splits: valid: 15% of dataset split train held out")
    assert "test: dataset split validation" in sentence and "(60 examples)" in sentence


def test_two_datasets_get_a_block_each(make_store: Callable[..., Store]) -> None:
    runs = _glue_runs()
    other = {k: {**v, "size": v["size"] * 2} for k, v in GLUE.items()}
    for r in runs[3:]:
        r["splits"] = other
    frames = load_sweep(make_store("two", LM_VARIED, runs), "two")
    table = splits_table(frames)
    assert table is not None and len(table.rows) == 6
    assert [table.cell(i, table.columns[-1]) for i in (0, 3)] == ["1-3", "4-6"]
    assert splits_sentence(frames).endswith("see the Data splits table.")


def test_no_splits_recorded_no_table(lm_store: Store) -> None:
    frames = load_sweep(lm_store, "lm")
    assert splits_table(frames) is None and splits_sentence(frames) == ""


def test_report_and_show_print_the_splits(make_store: Callable[..., Store],
                                          tmp_path: Path) -> None:
    # Two runs varying one key: few figures, a quick report.
    store = make_store("glue", ["optimizer.name"], _glue_runs()[:2])
    runner = CliRunner()
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "--store", str(store.root), "--out", str(out),
                                 "--format", "png"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "## Data splits" in md and (out / "tables" / "splits.csv").is_file()
    run_id = store.runs("glue")["run_id"].iloc[0]
    shown = runner.invoke(app, ["show", run_id, "--store", str(store.root)],
                          catch_exceptions=False, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "data splits" in shown.output
    assert "dataset split validation (split test has no labels)" in shown.output
    assert "picks the best epoch" in shown.output
