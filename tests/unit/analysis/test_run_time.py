"""Per-run total time predicted and measured, the train-loss column and run-number order
(issue 21, CS3450's tables)."""

from __future__ import annotations

from collections.abc import Callable

from tests.unit.analysis.fakes import LM_VARIED, lm_runs
from trainlab.analysis.frames import load_sweep
from trainlab.analysis.render import to_csv, to_markdown
from trainlab.analysis.tables import DISTURBED_SYMBOL, estimate_table, summary_table
from trainlab.store import Store


def _predicted(store: Store, disturbed: int | None = None) -> None:
    runs = load_sweep(store, "lm").runs
    store.set_estimates({run_id: {
        "method": "probe", "peak_bytes": 100 * 2**20, "epoch_train_s": 2.2, "run_s": 10.0,
        "disturbed": i == disturbed} for i, run_id in zip(runs["index"], runs["run_id"])})


def test_estimates_table_has_the_whole_runs_time(make_store: Callable[..., Store]) -> None:
    store = make_store("lm", LM_VARIED, lm_runs())
    _predicted(store)
    frames = load_sweep(store, "lm")
    # Measured: from the set-up's end (the step-0 records, at 0 s in fakes) to the last record
    # (fakes: 0.5 s of evaluation per epoch, so training time + 0.5 x epochs), e.g. run 1:
    # 12 s of training, 4 epochs -> 14 s.
    assert dict(zip(frames.runs["index"], frames.runs["total_time"]))[1] == 14.0
    table = estimate_table(frames)
    assert table is not None
    col = {c.key: c for c in table.columns}
    row = {r["index"]: i for i, r in enumerate(table.rows)}
    assert table.cell(row[1], col["predicted_run_time"]) == "10.0"
    assert table.cell(row[1], col["total_time"]) == "14.0"
    assert table.cell(row[1], col["run_error_pct"]) == "-28.6"  # 10 / 14 - 1
    assert "T pred." in to_markdown(table) and "run_error_pct" in to_csv(table).splitlines()[0]
    assert "T: the whole run's seconds predicted" in table.caption


def test_a_disturbed_prediction_has_no_run_time_error(make_store: Callable[..., Store]) -> None:
    store = make_store("lm", LM_VARIED, lm_runs())
    _predicted(store, disturbed=2)
    table = estimate_table(load_sweep(store, "lm"))
    assert table is not None
    col = {c.key: c for c in table.columns}
    row = {r["index"]: i for i, r in enumerate(table.rows)}
    assert table.cell(row[2], col["run_error_pct"]) == DISTURBED_SYMBOL
    assert table.cell(row[2], col["predicted_run_time"]).endswith(DISTURBED_SYMBOL)


def test_train_loss_beside_accuracy_and_run_number_order(
        make_store: Callable[..., Store]) -> None:
    runs = [{"values": {"model.hidden_dim": h}, "train": [0.5, tr], "valid": [0.5, va],
             "time": [1, 2], "test": va} for h, tr, va in ((64, 0.9, 0.8), (16, 0.7, 0.6),
                                                              (32, 0.8, 0.7))]
    store = make_store("mlp", ["model.hidden_dim"], runs, metric="accuracy")
    frames = load_sweep(store, "mlp")
    table = summary_table(frames)
    headers = [c.header for c in table.columns]
    assert "train Loss" in headers and "train Acc" in headers
    loss = next(c for c in table.columns if c.header == "train Loss")
    assert [table.cell(i, loss) for i in range(3)] == ["0.3000", "0.2000", "0.1000"]  # 1 - accuracy
    # Default: by the varied key; `--sort run` (or #): experiment-number order.
    assert [r["index"] for r in table.rows] == [2, 3, 1]
    ordered = summary_table(frames, sort="run")
    assert [r["index"] for r in ordered.rows] == [1, 2, 3]
    assert "Sorted by run." in ordered.caption
