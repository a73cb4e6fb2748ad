"""The input pipeline in the report: the wait-for-data column and the input-bound answer
(made-up stores, no training)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.unit.analysis.fakes import LM_VARIED
from trainlab.analysis.answers import answer_all
from trainlab.analysis.frames import load_sweep
from trainlab.analysis.tables import system_table
from trainlab.store import Store

VARIED = ["data.loader.workers"]


def _runs(waits: dict[int, float]) -> list[dict[str, Any]]:
    """One run per worker count, each waiting ``waits[workers]`` of its training time; the
    less it waits, the shorter its epochs."""
    runs = []
    for workers, wait in waits.items():
        per_epoch = 1.0 / (1.0 - wait)
        runs.append({"values": {"data.loader.workers": workers}, "workers": workers,
                     "train": [0.5, 0.6, 0.7], "valid": [0.5, 0.6, 0.7],
                     "time": [per_epoch * e for e in (1, 2, 3)], "data_wait": [wait] * 3})
    return runs


def _answer(store: Store, name: str) -> Any:
    return next((a for a in answer_all(load_sweep(store, name))
                 if a.key == "input_pipeline"), None)


def test_an_input_bound_run_and_the_setting_that_removed_the_wait(
        make_store: Callable[..., Store]) -> None:
    store = make_store("loaders", VARIED, _runs({0: 0.6, 1: 0.3, 2: 0.02}), metric="accuracy")
    answer = _answer(store, "loaders")
    assert answer is not None
    assert answer.answer.startswith("Yes")
    assert "run 1 (workers=0) waited 60 %" in answer.answer
    assert "run 2 (workers=1) waited 30 %" in answer.answer
    assert "Least wait: run 3 (workers=2), 2 %" in answer.answer
    assert "2.45x the throughput" in answer.answer  # 1/(1-0.6) s against 1/(1-0.02) s
    assert answer.runs == ["1", "2", "3"]
    assert [row["run"] for row in answer.evidence] == ["3", "2", "1"]  # least wait first
    table = system_table(load_sweep(store, "loaders"))
    col = next(c for c in table.columns if c.key == "data_wait_pct")
    cells = {r["index"]: table.cell(i, col) for i, r in enumerate(table.rows)}
    assert cells == {1: "60", 2: "30", 3: "2.0"}


def test_no_run_input_bound(make_store: Callable[..., Store]) -> None:
    store = make_store("fast", VARIED, _runs({0: 0.04, 2: 0.01}), metric="accuracy")
    answer = _answer(store, "fast")
    assert answer is not None and answer.answer.startswith("No: no configuration")
    assert "4 %" in answer.answer and "run 1" in answer.answer


def test_every_run_waits(make_store: Callable[..., Store]) -> None:
    store = make_store("slow", VARIED, _runs({0: 0.7, 2: 0.5}), metric="accuracy")
    answer = _answer(store, "slow")
    assert answer is not None and "Every configuration waited" in answer.answer
    # 1/(1-0.7) s per epoch against 1/(1-0.5) s: workers=2 is 1.67x as fast
    assert "Fastest nonetheless: run 2 (workers=2), at 1.67x" in answer.answer


def test_tensors_in_memory_ask_no_such_question(make_store: Callable[..., Store],
                                                lm_store: Store) -> None:
    assert _answer(lm_store, "lm") is None
    table = system_table(load_sweep(lm_store, "lm"))
    assert all(c.key != "data_wait_pct" for c in table.columns)
    assert LM_VARIED  # the lm sweep varies no loader setting
