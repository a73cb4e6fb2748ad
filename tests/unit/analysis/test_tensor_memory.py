"""The run's own memory in the tables: the tensors' peak first, the process's (RSS on CPU,
reserved on CUDA) second; stores recorded before it display as before; the predicted-vs-measured
table compares tensors with tensors and says where it cannot."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from tests.unit.analysis.fakes import LM_VARIED, MiB, lm_runs
from trainlab.analysis.fmt import format_mib
from trainlab.analysis.frames import _memory_columns, load_sweep
from trainlab.analysis.tables import Table, estimate_table, summary_table, system_table
from trainlab.cli.common import COST_COLUMNS, cost_cells
from trainlab.records import MetricRecord
from trainlab.store import Store

# Runs 1-5 measured their own tensors (MiB); run 6 was recorded before trainlab did.
TENSORS = {1: 1.5, 2: 1.25, 3: 0.75, 4: 0.5, 5: 24.8, 6: None}


def _with_tensors(store: Store) -> dict[int, str]:
    runs = load_sweep(store, "lm").runs
    ids = dict(zip(runs["index"], runs["run_id"]))
    store.write([MetricRecord(ids[i], "memory/tensor_peak_bytes", 10 * e, e, float(e), mib * MiB)
                 for i, mib in TENSORS.items() if mib is not None for e in (1, 2, 3, 4)])
    return ids


def _cells(table: Table, key: str) -> dict[int, str]:
    col = next(c for c in table.columns if c.key == key)
    return {r["index"]: table.cell(i, col) for i, r in enumerate(table.rows)}


def test_a_store_from_before_keeps_its_one_memory_column(lm_store: Store) -> None:
    frames = load_sweep(lm_store, "lm")
    for table in (summary_table(frames), system_table(frames)):
        headers = [c.header for c in table.columns]
        assert "mem (MiB)" in headers and "tensors (MiB)" not in headers
        assert _cells(table, "peak_memory_bytes")[2] == "280"


def test_tensors_first_then_rss_and_blank_for_an_older_run(
        make_store: Callable[..., Store]) -> None:
    store = make_store("lm", LM_VARIED, lm_runs())
    _with_tensors(store)
    frames = load_sweep(store, "lm")
    for table in (summary_table(frames), system_table(frames)):
        headers = [c.header for c in table.columns]
        at = headers.index("tensors (MiB)")
        assert headers[at + 1] == "RSS (MiB)" and "mem (MiB)" not in headers
        tensors, rss = _cells(table, "tensor_peak_bytes"), _cells(table, "rss_reserved_bytes")
        assert tensors == {1: "1.50", 2: "1.25", 3: "0.750", 4: "0.500", 5: "24.8", 6: "-"}
        assert rss[2] == "280" and rss[6] == "320"  # the process's peak RSS, every run
        assert "tensors:" in table.caption and "RSS:" in table.caption


def test_the_estimates_table_compares_tensors_with_tensors(
        make_store: Callable[..., Store]) -> None:
    store = make_store("lm", LM_VARIED, lm_runs())
    ids = _with_tensors(store)
    # Runs 1-3 and 6 were predicted with a tensors' peak (10 % over run 1's), run 4 and 5
    # before it existed: those, and run 6 (not measured), compare the process's peaks.
    store.set_estimates({run_id: {
        "method": "probe", "peak_bytes": 200 * MiB, "epoch_train_s": 2.0, "run_s": 10.0,
        **({"tensor_peak_bytes": 1.65 * MiB} if i in (1, 2, 3, 6) else {})}
        for i, run_id in ids.items()})
    table = estimate_table(load_sweep(store, "lm"))
    assert table is not None
    predicted, measured = _cells(table, "predicted_mem_bytes"), _cells(table, "measured_mem_bytes")
    errors = _cells(table, "mem_error_pct")
    assert (predicted[1], measured[1], errors[1]) == ("1.65", "1.50", "+10.0")
    assert (predicted[4], measured[4]) == ("200", "240")  # RSS against RSS
    assert (predicted[6], measured[6]) == ("200", "320")
    note = next(n for n in table.notes if n.startswith("mem for run"))
    named = note.split(":")[0].removeprefix("mem for run ").split("; ")
    assert sorted(named) == ["4", "5", "6"] and "process's peak" in note
    assert "memory/tensor_peak_bytes" in table.caption


def test_a_gpu_run_recorded_before_has_its_allocator_peak_as_the_tensors() -> None:
    ep = pd.DataFrame({"memory/peak_bytes": [3e6, 4e6], "memory/reserved_bytes": [8e6, 9e6]})
    assert _memory_columns(ep, {"device": "cuda:0"}, None) == {
        "tensor_peak_bytes": 4e6, "rss_reserved_bytes": 9e6}
    new = ep.assign(**{"memory/tensor_peak_bytes": [3e6, 4e6]})
    assert _memory_columns(new, {}, {"device": "cuda"})["tensor_peak_bytes"] == 4e6
    cpu = _memory_columns(ep.drop(columns="memory/reserved_bytes"), {"device": "cpu"}, None)
    assert math.isnan(cpu["tensor_peak_bytes"]) and cpu["rss_reserved_bytes"] == 4e6


def test_the_cli_cost_columns() -> None:
    at = COST_COLUMNS.index("tensor MiB")
    assert COST_COLUMNS[at + 1] == "RSS/res MiB"

    def memory(summary: dict) -> list[str]:
        return cost_cells(summary)[at:at + 2]

    cpu = {"device": "cpu", "peak_memory_bytes": 340 * MiB}
    assert memory({**cpu, "tensor_peak_bytes": 0.56 * MiB}) == ["0.560", "340"]
    assert memory(cpu) == ["", "340"]  # an older CPU run: no tensors' number
    cuda = {"device": "cuda:0", "peak_memory_bytes": 1200 * MiB}
    assert memory(cuda) == ["1200", ""]  # older: the allocator's peak is the tensors'
    assert memory({**cuda, "tensor_peak_bytes": 1200 * MiB,
                   "reserved_memory_bytes": 1500 * MiB}) == ["1200", "1500"]


def test_mib_with_significant_digits_under_100() -> None:
    assert [format_mib(v * MiB, significant=3) for v in (0.5568, 1.109, 24.84, 99.97, 340.4)] \
        == ["0.557", "1.11", "24.8", "100", "340"]
    assert format_mib(1536 * MiB, significant=3) == "1,536"
    assert format_mib(2.4 * MiB) == "2"  # whole MiB unless asked


def test_the_memory_front_weighs_tensors_when_every_run_has_them(lm_store: Store) -> None:
    """lm_runs' RSS front is runs 4 then 3 (240 and 250 MiB); by their own tensors run 3
    (0.75 MiB) is cheaper than run 1 (1.5) and run 4 (0.5) cheapest: the front follows the
    tensors, and says so.  One run without them (run 6): the front stays on RSS."""
    from trainlab.analysis.answers import answer_all

    ids = _with_tensors(lm_store)
    store_answer = {a.key: a for a in answer_all(load_sweep(lm_store, "lm"))}["pareto_memory"]
    assert "process's peak resident set size" in store_answer.answer  # run 6 lacks tensors
    lm_store.write([MetricRecord(ids[6], "memory/tensor_peak_bytes", 10 * e, e, float(e),
                                 30 * MiB) for e in (1, 2, 3, 4)])
    answer = {a.key: a for a in answer_all(load_sweep(lm_store, "lm"))}["pareto_memory"]
    assert "run's own tensors" in answer.answer
    costs = {e["run"]: e["peak memory (MiB)"] for e in answer.evidence}
    assert costs["3"] == 0.75 and costs["6"] == 30
    assert answer.runs == ["4", "3"]
