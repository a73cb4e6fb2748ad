"""Table logic: sorting, grouping, bold, ties under noise, rendering and LaTeX escaping."""

from __future__ import annotations

import csv
import io
import math
import re

import pandas as pd
import pytest

from tests.unit.analysis.fakes import LM_VARIED, lm_runs
from trainlab.analysis.frames import load_sweep
from trainlab.analysis.render import latex_escape, to_csv, to_html, to_latex, to_markdown
from trainlab.analysis.tables import (
    TIE_SYMBOL,
    format_number,
    mark_best,
    sort_frame,
    summary_table,
    system_table,
)
from trainlab.errors import ConfigError

NAN = math.nan


@pytest.mark.parametrize(("means", "stds", "higher", "eligible", "marks"), [
    ([3.0, 1.0, 2.0], [NAN] * 3, False, None, [None, "best", None]),
    ([3.0, 1.0, 2.0], [NAN] * 3, True, None, ["best", None, None]),
    ([1.0, 1.0, 2.0], [NAN] * 3, False, None, ["tie", "tie", None]),  # exact tie, no noise
    # lead 0.5 > max std 0.2: bold
    ([1.0, 1.5, 3.0], [0.1, 0.2, 0.1], False, None, ["best", None, None]),
    # lead 0.5 <= max std 0.6: tie, and run 3 (gap 2.0 > 0.6) is out of it
    ([1.0, 1.5, 3.0], [0.1, 0.6, 0.1], False, None, ["tie", "tie", None]),
    # the noisy best ties with both others
    ([1.0, 1.5, 1.8], [1.0, 0.1, 0.1], False, None, ["tie", "tie", "tie"]),
    # ineligible (diverged) rows never win
    ([0.5, 1.0, 2.0], [NAN] * 3, False, [False, True, True], [None, "best", None]),
    ([NAN, NAN], [NAN, NAN], False, None, [None, None]),
])
def test_mark_best(means, stds, higher, eligible, marks) -> None:
    assert mark_best(means, stds, higher, eligible) == marks


def test_sort_frame_numbers_ascending_text_in_sweep_order_missing_last() -> None:
    frame = pd.DataFrame({
        "index": [1, 2, 3, 4, 5, 6],
        "model.name": ["lstm", "lstm", "gpt", "gpt", "lstm", "gpt"],
        "model.layers": [1, 1, 1, 1, 10, None],
        "optimizer.name": ["sgd", "adam", "sgd", "adam", "adam", "adam"],
    })
    out = sort_frame(frame, ["model.name", "model.layers", "optimizer.name"])
    # lstm before gpt (as the sweep lists them), 10 after 1 (numbers, not text), None last.
    assert list(out["index"]) == [1, 2, 5, 3, 4, 6]
    out = sort_frame(frame, ["optimizer.name", "index"], descending=[False, True])
    assert list(out["index"]) == [3, 1, 6, 5, 4, 2]


def test_summary_table_sorted_grouped_and_bold_per_architecture(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    table = summary_table(frames)
    assert [r["index"] for r in table.rows] == [1, 2, 5, 3, 4, 6]
    assert table.groups == ["lstm"] * 3 + ["gpt"] * 3
    marks = dict(zip([r["index"] for r in table.rows], table.marks))
    assert marks == {1: None, 2: None, 5: "best", 3: "best", 4: None, 6: None}
    headers = [c.header for c in table.columns]
    assert headers[:4] == ["#", "model", "layers", "optimizer"]
    assert {"train PPL", "valid PPL", "test PPL", "ep*", "t* (s)", "T (s)", "mem (MiB)",
            "params"} <= set(headers)
    row5 = next(r for r in table.rows if r["index"] == 5)
    assert (row5["best_epoch"], row5["train_perplexity"], row5["valid_perplexity"],
            row5["time_to_best"], row5["train_time"]) == (2, 120, 90, 12, 24)
    # The caption explains every abbreviation in the headers.
    for abbrev in ("PPL:", "ep*:", "t*:", "T:", "thr:", "mem:", "params:", "#:",
                   TIE_SYMBOL):
        assert abbrev in table.caption
    assert "for each model" in table.caption


def test_group_and_sort_options(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    table = summary_table(frames, group="none", sort="-valid PPL")
    assert [r["index"] for r in table.rows] == [2, 4, 1, 5, 6, 3]
    assert table.marks == [None] * 5 + ["best"]
    table = summary_table(frames, group="optimizer", sort="optimizer,T (s)")
    assert [r["index"] for r in table.rows] == [3, 1, 6, 5, 4, 2]
    assert [r["index"] for r, m in zip(table.rows, table.marks) if m == "best"] == [3, 4]
    with pytest.raises(ConfigError, match=r"`--sort`: unknown column 'validd'.*did you mean"):
        summary_table(frames, sort="validd")
    with pytest.raises(ConfigError, match=r"`--group`.*Valid: model, layers, optimizer"):
        summary_table(frames, group="arch")


def _seeded_store(make_store, spread: float):
    runs = []
    for opt, base in (("adam", 100.0), ("sgd", 104.0)):
        for seed, delta in zip((0, 1, 2), (-spread, 0.0, spread)):
            value = base + delta
            runs.append({"values": {"optimizer.name": opt}, "seed": seed,
                         "train": [value + 50, value + 10], "valid": [value + 40, value],
                         "time": [1.0 + seed, 2.0 + seed]})
    return make_store("seeded", ["optimizer.name", "train.seed"], runs)


def test_seeds_mean_std_n_and_bold_when_the_lead_exceeds_the_noise(make_store) -> None:
    frames = load_sweep(_seeded_store(make_store, spread=1.0), "seeded")
    assert frames.seeded and frames.keys == ["optimizer.name"]
    table = summary_table(frames)
    assert len(table.rows) == 2 and table.rows[0]["n"] == 3
    assert table.rows[0]["indices"] == [1, 2, 3]
    assert table.rows[0]["valid_perplexity"] == pytest.approx(100.0)
    assert table.rows[0]["valid_perplexity_std"] == pytest.approx(1.0)
    valid = next(c for c in table.columns if c.key == "valid_perplexity")
    assert table.cell(0, valid) == "100.0 ± 1.000"
    assert table.cell(0, table.columns[0]) == "1-3"
    assert table.marks == ["best", None]  # lead 4 > std 1
    assert "mean ± sample standard deviation over n runs" in table.caption
    assert "larger than the larger of their two standard deviations" in table.caption


def test_seeds_tie_when_the_lead_is_within_the_noise(make_store) -> None:
    frames = load_sweep(_seeded_store(make_store, spread=5.0), "seeded")
    table = summary_table(frames)
    assert table.marks == ["tie", "tie"]  # lead 4 <= std 5
    assert f"100.0 ± 5.000 {TIE_SYMBOL}" in to_markdown(table)
    assert "**" not in to_markdown(table).split("\n\n")[0]


def test_markdown_latex_html_csv(lm_store) -> None:
    table = summary_table(load_sweep(lm_store, "lm"))
    md = to_markdown(table, 1)
    lines = md.splitlines()
    assert lines[0].startswith("| # | model | layers | optimizer | train PPL")
    assert lines[4].startswith("| **5** | **lstm** | **2** | **adam** |")  # third data row
    assert "*Table 1: Results of sweep lm" in md
    tex = to_latex(table)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    bold_rows = [line for line in tex.splitlines() if line.startswith(r"\textbf{")]
    assert [row.split(" & ")[:2] for row in bold_rows] == [
        [r"\textbf{5}", r"\textbf{lstm}"], [r"\textbf{3}", r"\textbf{gpt}"]]
    assert r"ep$^{*}$" in tex and r"\caption{" in tex
    # One rule between the two architectures besides the header's.
    assert tex.count(r"\midrule") == 2
    html = to_html(table, 1)
    assert len(re.findall(r"<tr class=\"best\b", html)) == 2 and "href=\"#run-5\"" in html
    rows = list(csv.reader(io.StringIO(to_csv(table))))
    assert rows[0][:4] == ["run", "model.name", "model.layers", "optimizer.name"]
    assert rows[0][-2:] == ["run_ids", "mark"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "5", "3", "4", "6"]
    assert rows[3][-1] == "best" and float(rows[3][rows[0].index("valid_perplexity")]) == 90


@pytest.mark.parametrize(("text", "escaped"), [
    ("lr_decay", r"lr\_decay"),
    ("50% & more", r"50\% \& more"),
    ("#1 {x} $5", r"\#1 \{x\} \$5"),
    ("a~b^c", r"a\textasciitilde{}b\textasciicircum{}c"),
    ("C:\\path", r"C:\textbackslash{}path"),
    ("1.0 ± 0.1", r"1.0 $\pm$ 0.1"),
    ("ep*", r"ep$^{*}$"),
    ("a<b>c|d", r"a\textless{}b\textgreater{}c\textbar{}d"),
])
def test_latex_escape(text: str, escaped: str) -> None:
    assert latex_escape(text) == escaped


def test_latex_escapes_values_and_captions(make_store) -> None:
    runs = [{"values": {"data.name": name}, "train": [3.0], "valid": [2.0], "time": [1.0]}
            for name in ("my_data%1", "b&c")]
    table = summary_table(load_sweep(make_store("esc_sweep", ["data.name"], runs), "esc_sweep"))
    tex = to_latex(table)
    assert r"my\_data\%1" in tex and r"b\&c" in tex and r"esc\_sweep" in tex
    assert "my_data" not in tex


def test_system_table(lm_store) -> None:
    table = system_table(load_sweep(lm_store, "lm"))
    headers = [c.header for c in table.columns]
    assert headers[:4] == ["#", "model", "layers", "optimizer"]
    assert {"device", "mem (MiB)", "thr (ex/s)", "t/ep (s)", "eval (s)"} <= set(headers)
    assert "util (%)" not in headers  # not measured in this store
    row = next(r for r in table.rows if r["index"] == 2)  # 4 epochs of 2 s
    assert row["epoch_time"] == 2 and row["samples_per_s"] == 50 and row["eval_time"] == 0.5
    mem = next(c for c in table.columns if c.key == "peak_memory_bytes")
    assert table.cell(table.rows.index(row), mem) == "280"
    assert all(m is None for m in table.marks)


@pytest.mark.parametrize(("value", "text"), [
    (1234.5, "1,234"), (146.199, "146.2"), (24.8123, "24.81"), (1.5, "1.500"),
    (0.90712, "0.9071"), (0.0, "0.000"), (0.00012, "0.00012"),
])
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


def test_lm_runs_fixture_is_what_the_tables_read(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    assert frames.varied == LM_VARIED and len(frames.runs) == len(lm_runs())
    assert frames.metric.name == "perplexity" and frames.metrics == ["perplexity", "loss"]


def glue_runs() -> list[dict]:
    """CoLA-like: accuracy plus validation-only F1 and MCC; run 2 collapses to chance."""
    return [
        {"values": {"finetune.name": "full", "optimizer.name": "adam"},
         "train": [0.7, 0.8, 0.85], "valid": [0.72, 0.78, 0.80], "time": [1, 2, 3], "test": 0.79,
         "extra": {"mcc": [0.2, 0.4, 0.5], "f1": [0.7, 0.8, 0.82]},
         "extra_test": {"mcc": 0.48, "f1": 0.81}},
        {"values": {"finetune.name": "adapter", "optimizer.name": "adam"},
         "train": [0.7, 0.75, 0.76], "valid": [0.70, 0.74, 0.69], "time": [1, 2, 3],
         "test": 0.73, "extra": {"mcc": [0.1, 0.3, 0.0], "f1": [0.6, 0.7, 0.0]},
         "extra_test": {"mcc": 0.29, "f1": 0.69}},
    ]


def test_summary_carries_every_recorded_metric_and_mcc_ranks(make_store) -> None:
    store = make_store("glue", ["finetune.name", "optimizer.name"], glue_runs(), "accuracy")
    frames = load_sweep(store, "glue")
    assert frames.metric.name == "accuracy"
    assert frames.metrics == ["accuracy", "loss"]  # the curves: both splits recorded
    table = summary_table(frames)
    labels = [c.header for c in table.columns]
    for label in ("train Acc", "valid Acc", "test Acc", "valid Loss", "test MCC", "valid MCC",
                  "valid F1", "test F1"):
        assert label in labels, labels
    assert "test Loss" not in labels  # no run recorded it: no empty column
    assert table.rows[1]["test_mcc"] == 0.29 and table.rows[0]["valid_mcc"] == 0.5
    assert "MCC: Matthews correlation" in table.caption
    only = [c.header for c in summary_table(frames, metrics=["mcc"]).columns]
    assert "valid MCC" in only and "valid F1" not in only and "valid Loss" not in only
    # --metric mcc: recorded on every run, so it ranks (it used to be 'not recorded').
    by_mcc = load_sweep(store, "glue", metric="mcc")
    assert by_mcc.metric.name == "mcc"
    assert [c.header for c in summary_table(by_mcc).columns][3:6] == [
        "train MCC", "valid MCC", "test MCC"]
    with pytest.raises(ConfigError, match="Recorded: accuracy, loss, f1, mcc"):
        load_sweep(store, "glue", metric="matthews")


def test_bold_singles_out_a_run_when_every_group_holds_one(make_store) -> None:
    # A PEFT sweep: each method once (its own settings vary with it): grouping by the first
    # varied key would make every row bold.
    runs = glue_runs()
    runs[0]["values"] = {"finetune.name": "lora", "finetune.rank": 8}
    runs[1]["values"] = {"finetune.name": "adapter", "finetune.bottleneck": 16}
    store = make_store("peft", ["finetune.name", "finetune.rank", "finetune.bottleneck"], runs,
                       "accuracy")
    frames = load_sweep(store, "peft")
    table = summary_table(frames)
    assert table.marks == ["best", None]  # one bold row, over the table
    assert "over the table" in table.caption
    forced = summary_table(frames, group="finetune.name")
    assert forced.marks == ["best", "best"]
    assert "holds one row, so every row is bold" in forced.caption
