"""The estimate of stacked runs (train.stack): one probe of the stacked step per stack shape,
every run of a stack predicted the stack's time and memory, no solo probe (and no
torch._dynamo import) for them; train.stack: auto capped by a memory budget, an explicit size
kept."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.helpers import ReadsAValue
from trainlab import stacks
from trainlab.cli import app
from trainlab.config.schema import RunConfig, resolve_run
from trainlab.engine.stack import train_stack
from trainlab.estimate import estimate_runs
from trainlab.estimate.stacked import BUDGET_ENV, layout, sweep_seconds
from trainlab.records import NullSink


def _grid(n_lrs: int, seeds: int = 2, stack: Any = "auto", epochs: int = 3,
          limit: int | None = 960) -> dict[str, RunConfig]:
    lrs = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1e-4, 3e-4][:n_lrs]
    data: dict[str, Any] = {"name": "digits", "batch_size": 32}
    if limit is not None:
        data["limit"] = limit
    configs = [resolve_run({
        "data": data, "model": {"name": "mlp", "hidden_dim": 32},
        "optimizer": {"name": "adam", "lr": lr},
        "train": {"epochs": epochs, "seed": seed, "threads": 1, "stack": stack}})
        for lr in lrs for seed in range(seeds)]
    return {c.run_id: c for c in configs}


@pytest.fixture(autouse=True)
def _forget_caps() -> Iterator[None]:
    """What an estimate remembers for the executor's stacks stays in this test."""
    yield
    stacks.remember_caps({})


def test_a_stacked_grid_gets_the_stacks_step_and_no_solo_probe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    configs = _grid(4)  # 8 runs, one stack of 8

    def no_solo_probe(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the solo probe ran for a stacked run")

    monkeypatch.setattr(sys.modules["trainlab.estimate"], "probe", no_solo_probe)
    estimates = estimate_runs(configs)
    assert len(estimates) == 8
    first = next(iter(estimates.values()))
    assert first.method == "probe" and first.note is None
    assert (first.stack, first.stack_size, first.stack_step) == (1, 8, "batched matmul")
    # One step time for the stack, and every member the stack's times and memory.
    for e in estimates.values():
        assert (e.stack, e.step_s, e.epoch_train_s, e.run_s, e.peak_bytes) == (
            first.stack, first.step_s, first.epoch_train_s, first.run_s, first.peak_bytes)
    assert sweep_seconds(estimates) == pytest.approx(first.run_s)  # the stack counted once
    # Memory is the stack's: 8 models' weights, gradients and Adam state.
    assert first.param_bytes == first.grad_bytes == 8 * 4 * first.params_total
    assert first.optimizer_bytes >= 8 * 2 * 4 * first.params_total  # two moments a model
    assert first.per_model_bytes is not None
    assert 4 * 4 * first.params_total < first.per_model_bytes < first.param_bytes

    # The prediction against a stacked epoch measured (loosely: the machine is shared).
    ids = list(configs)
    outcomes = train_stack(list(configs.values()), ids, [None] * 8, sink := NullSink())
    assert all(o.status == "ok" for o in outcomes)
    epochs = [r.value for r in sink.records if r.key == "time/epoch_train"
              and r.run_id == ids[0]]
    measured = statistics.median(epochs)
    assert measured / 3 < first.epoch_train_s < 3 * measured, (first.epoch_train_s, epochs)
    # The stack's own tensors at their peak: measured the way the stack measures its first
    # step.
    assert first.tensor_peak_bytes == pytest.approx(outcomes[0].summary["tensor_peak_bytes"],
                                                    rel=0.05)



def test_a_model_the_stacked_step_cannot_batch_falls_back_to_the_solo_probe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trainlab.engine.stack.build_model", lambda spec, info: ReadsAValue())
    estimates = estimate_runs(_grid(1, epochs=1))
    for e in estimates.values():
        assert e.method == "probe" and e.stack is None and e.stack_size is None
        assert e.note is not None and "cannot batch" in e.note and "alone" in e.note


def _one_model_bytes(configs: dict[str, RunConfig]) -> int:
    found = layout(configs, budget=10**12)
    (bytes_one,) = found.per_model.values()
    return bytes_one


def test_auto_within_a_tiny_budget_splits_the_stack_and_the_executor_follows() -> None:
    configs = _grid(8)  # 16 runs
    budget = 5 * _one_model_bytes(configs) + 1  # holds 5 models
    estimates = estimate_runs(configs, calibrate=False, stack_budget=budget)
    sizes = [e.stack_size for e in estimates.values()]
    assert sizes == [4] * 16  # as even as the cap allows: four stacks of 4, none alone
    assert sorted({e.stack for e in estimates.values()}) == [1, 2, 3, 4]
    note = next(iter(estimates.values())).note
    assert note is not None and "capped by memory: 16 runs as 4 stacks of 4" in note
    assert "at most 5 a stack" in note
    # The sweep's time counts each of the four stacks once.
    assert sweep_seconds(estimates) == pytest.approx(4 * next(iter(estimates.values())).run_s)
    # The executor's own plan (no limit passed) follows the estimate's caps.
    planned = layout(configs, budget=10**12).plan  # uncapped: one stack of 16
    assert [len(s) for s in planned.stacks] == [16]
    items = [p for s in planned.stacks for p in s]
    assert [len(s) for s in stacks.plan_stacks(items).stacks] == [4, 4, 4, 4]
    # Without a budget problem, auto stacks up to AUTO_STACK.
    assert [len(s) for s in layout(configs, budget=10**12).plan.stacks] == [16]


def test_an_explicit_stack_size_is_kept_and_warned_about() -> None:
    configs = _grid(4, stack=8)
    budget = 3 * _one_model_bytes(configs)
    found = layout(configs, budget=budget)
    assert [len(s) for s in found.plan.stacks] == [8]
    assert not found.plan.capped
    estimates = estimate_runs(configs, calibrate=False, stack_budget=budget)
    e = next(iter(estimates.values()))
    assert e.stack_size == 8
    assert e.note is not None and "train.stack: 8 kept as given" in e.note
    assert "auto would stack 3" in e.note


def test_plan_says_when_memory_capped_a_stack(write_config: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"name": "grid16", "data": {"name": "digits", "batch_size": 32, "limit": 960},
           "model": {"name": "mlp", "hidden_dim": 32}, "optimizer": {"name": "adam"},
           "train": {"epochs": 1, "stack": "auto", "threads": 1},
           "grid": {"optimizer.lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1e-4, 3e-4]},
           "seeds": [0, 1]}
    path = write_config(doc)
    bytes_one = _one_model_bytes(_grid(8))
    monkeypatch.setenv(BUDGET_ENV, str(6 * bytes_one + 1))
    result = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "S1 (5)" in result.output and "S3 (6)" in result.output
    assert "train.stack: auto capped by memory: 16 runs as 3 stacks of 6 and 5" in result.output
    assert f"{BUDGET_ENV}=" in result.output
    monkeypatch.delenv(BUDGET_ENV)
    result = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "300"})
    assert "S1 (16)" in result.output and "capped by memory" not in result.output


def test_estimating_a_stacked_plan_does_not_import_dynamo() -> None:
    code = textwrap.dedent("""
        import sys
        from trainlab.config.schema import resolve_run
        from trainlab.estimate import estimate_runs

        configs = [resolve_run({
            "data": {"name": "digits", "batch_size": 32, "limit": 480},
            "model": {"name": "mlp", "hidden_dim": 32}, "optimizer": {"name": "adam", "lr": lr},
            "train": {"epochs": 1, "seed": 0, "threads": 1, "stack": "auto"}})
            for lr in (0.001, 0.01, 0.1)]
        estimates = estimate_runs({c.run_id: c for c in configs})
        assert {e.stack_size for e in estimates.values()} == {3}, estimates
        print("dynamo imported:", "torch._dynamo" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dynamo imported: False" in done.stdout


def test_the_estimate_table_marks_stacked_rows_and_counts_a_stack_once(
        write_config: Any) -> None:
    doc = {"name": "grid4", "data": {"name": "digits", "batch_size": 32, "limit": 480},
           "model": {"name": "mlp", "hidden_dim": 32}, "optimizer": {"name": "adam"},
           "train": {"epochs": 1, "stack": "auto", "threads": 1},
           "grid": {"optimizer.lr": [0.001, 0.01]}, "seeds": [0, 1]}
    path = write_config(doc)
    result = CliRunner().invoke(app, ["estimate", str(path), "--no-calibrate"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert result.output.count("S1 (4)") == 4
    assert "ms/step, s/epoch and run time are its stack's" in result.output
    result = CliRunner().invoke(app, ["estimate", str(path), "--no-calibrate", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["stack_size"] for r in data["runs"]} == {4}
    assert data["total_run_s"] == pytest.approx(data["runs"][0]["run_s"])
