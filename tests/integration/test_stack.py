"""train.stack end to end: plan shows the stacks, each stacked run is stored as its own, a
kill mid-stack followed by a rerun finishes every run, bad values exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import trainlab
from trainlab.analysis.frames import speed_text
from trainlab.cli import app
from trainlab.config import expand
from trainlab.config.schema import SweepConfig
from trainlab.plan import PlannedRun
from trainlab.stacks import plan_stacks
from trainlab.store import open_store

runner = CliRunner()


def _sweep(**train: Any) -> dict[str, Any]:
    return {"name": "stacked", "data": {"name": "digits", "batch_size": 64, "limit": 256},
            "model": {"name": "mlp", "hidden_dim": 16},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "train": {"epochs": 2, "threads": 1, "stack": 2, **train},
            "grid": {"optimizer.lr": [0.05, 0.1]}, "seeds": [0, 1],
            "runs": [{"optimizer.name": "rmsprop"}, {"model.hidden_dim": 8}]}


def _planned(doc: dict[str, Any]) -> list[PlannedRun]:
    return [PlannedRun(r, "new", "train", {}) for r in expand(SweepConfig.model_validate(doc))]


def test_runs_that_differ_per_model_stack_and_the_others_say_why() -> None:
    planned = _planned(_sweep())
    stacks = plan_stacks(planned)
    # 4 SGD runs (2 LRs x 2 seeds) in stacks of 2, the narrower MLP's two seeds in one;
    # rmsprop alone (no stacked version).
    assert [len(s) for s in stacks.stacks] == [2, 2, 2]
    assert len(stacks.alone) == 2 and all("rmsprop" in r for r in stacks.alone.values())
    narrow = [p for p in planned if p.run.config.model.hidden_dim == 8]  # type: ignore[attr-defined]
    alone = plan_stacks([p for p in planned if p is not narrow[-1]]).alone
    assert "no other run" in alone[narrow[0].run_id]
    auto = plan_stacks(_planned(_sweep(stack="auto")))
    assert [len(s) for s in auto.stacks] == [4, 2]


def test_a_schedule_cycling_momentum_trains_alone() -> None:
    """The stacked optimizer keeps momentum fixed: onecycle with cycle_momentum would train
    differently stacked than alone, so such runs do not stack (without it they do)."""
    doc = {**_sweep(), "runs": [],
           "schedule": {"name": "onecycle", "cycle_momentum": True},
           "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    stacks = plan_stacks(_planned(doc))
    assert not stacks.stacks and len(stacks.alone) == 4
    assert all("cycle_momentum" in why for why in stacks.alone.values())
    doc["schedule"] = {"name": "onecycle"}
    assert [len(s) for s in plan_stacks(_planned(doc)).stacks] == [2, 2]


def test_stack_is_in_the_run_id_only_when_set() -> None:
    doc = _sweep()
    doc["train"] = {"epochs": 2, "threads": 1}
    off = [r.run_id for r in expand(SweepConfig.model_validate(doc))]
    doc["train"]["stack"] = "off"
    assert [r.run_id for r in expand(SweepConfig.model_validate(doc))] == off
    doc["train"]["stack"] = 2
    assert not set(off) & {r.run_id for r in expand(SweepConfig.model_validate(doc))}


@pytest.mark.parametrize("value", [0, -3, "many", 1.5])
def test_a_bad_stack_exits_2(value: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(_sweep(stack=value)))
    result = runner.invoke(app, ["plan", str(cfg), "--store", str(tmp_path / "st")])
    assert result.exit_code == 2
    assert "train.stack" in result.output and "off, auto" in result.output


def test_plan_shows_the_stacks(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(_sweep()))
    result = runner.invoke(app, ["plan", str(cfg), "--store", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "S1 (2)" in text and "alone" in text
    assert "trains alone" in text and "rmsprop" in text


def test_stacked_runs_are_stored_as_their_own_and_a_kill_is_redone(tmp_path: Path) -> None:
    doc = _sweep()
    doc.pop("runs")
    st = open_store(tmp_path / "st")
    write, writes = st.write, []

    def killed(records: Any) -> None:  # the third write meets a Ctrl-C: a kill mid-stack
        writes.append(1)
        if len(writes) == 3:
            raise KeyboardInterrupt
        write(records)

    st.write = killed  # type: ignore[method-assign]
    first = trainlab.run(doc, store=st, estimate=False)
    assert first.interrupted
    del st.write  # the store's own again
    assert set(st.runs("stacked")["status"]) <= {"interrupted", "pending"}
    again = trainlab.run(doc, store=st, estimate=False)
    assert again.exit_code == 0
    runs = st.runs("stacked")
    assert list(runs["status"]) == ["ok"] * 4
    metrics = st.metrics()
    assert not metrics.duplicated(["run_id", "key", "step"]).any()
    stacked = metrics[metrics["key"] == "perf/stacked"]
    assert sorted(stacked["value"]) == [2.0] * 4
    for _, row in runs.iterrows():
        own = metrics[metrics["run_id"] == row["run_id"]]
        assert {"valid/loss", "test/accuracy", "train/step_loss", "lr"} <= set(own["key"])
        assert (tmp_path / "st" / "runs" / row["run_id"] / "best.pt").is_file()
    # Each run's recorded LR is its own.
    lrs = metrics[metrics["key"] == "lr"].groupby("run_id")["value"].first()
    assert sorted(lrs) == [0.05, 0.05, 0.1, 0.1]
    # Tables mark them: the speed column says stacked.
    assert all(speed_text(s["speed"]) == "stacked x2" for s in runs["summary"])


@pytest.mark.parametrize("fits", [2, 1])
def test_an_out_of_memory_split_stores_each_run_with_the_stacks_memory(
        fits: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack of 4 that runs out of memory trains as two stacks of 2 (or, when those do
    not fit either, each run alone by the solo path); each run's table row shows memory (a
    stack's, and its summary says so) and says how its stack was split."""
    from trainlab.cli.common import cost_cells
    from trainlab.engine.stack import _StackTrainer

    warm = _StackTrainer._warm_step

    def step(self: Any, *args: Any) -> Any:
        if len(self.members) > fits:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 99999999999 bytes")
        return warm(self, *args)

    monkeypatch.setattr(_StackTrainer, "_warm_step", step)
    doc = _sweep(stack=4)
    doc.pop("runs")
    st = open_store(tmp_path / "st")
    assert trainlab.run(doc, store=st, estimate=False).exit_code == 0
    runs = st.runs("stacked")
    assert list(runs["status"]) == ["ok"] * 4
    for summary in runs["summary"]:
        assert "a stack of 4 runs ran out of memory" in summary["stack_split"][0]
        assert len(summary["stack_split"]) == 3 - fits
        if fits == 2:
            assert summary["memory_of"] == "stack of 2" and summary["stacked"] == 2
        else:  # the solo path's run: its own memory and time
            assert "memory_of" not in summary and "stacked" not in summary
        _, _, tensors, rss, _ = cost_cells(summary)
        assert tensors and rss  # the table's memory cells are not blank
    metrics = st.metrics()
    stacked = set(metrics[metrics["key"] == "perf/stacked"]["value"])
    assert stacked == ({2.0} if fits == 2 else set())
    assert not metrics.duplicated(["run_id", "key", "step"]).any()
