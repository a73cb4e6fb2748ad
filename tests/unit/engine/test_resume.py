"""Interruptions and faults: Ctrl-C mid-epoch, corrupt checkpoints, OOM, a full disk."""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import StopAt
from trainlab.config.schema import resolve_run
from trainlab.engine import Callback, RunState, interrupt, train
from trainlab.records import NullSink

RAW: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 300, "shape": [10], "n_classes": 4,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 32, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "slanted-triangular"},
    "train": {"epochs": 4, "seed": 3, "log_every": 5},
}
STEPS_PER_EPOCH = math.ceil(210 / 16)
EPOCH_KEYS = ("train/loss", "train/accuracy", "valid/loss", "valid/accuracy", "test/loss")
# Recorded at log points: a Ctrl-C between two of them must not add a row of its own.
STEP_KEYS = ("train/step_loss", "lr", "grad_norm")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=False)["model"]


def _values(sink: NullSink) -> dict[tuple[str, int], float]:
    return {(r.key, r.step): r.value for r in sink.records if r.key in EPOCH_KEYS + STEP_KEYS}


@pytest.fixture(autouse=True)
def _clear_flag():
    interrupt.clear()
    yield
    interrupt.clear()


@pytest.fixture
def reference(tmp_path: Path) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int], float]]:
    sink = NullSink()
    train(resolve_run(RAW), run_dir=tmp_path / "reference", sink=sink)
    return _weights(tmp_path / "reference"), _values(sink)


@pytest.mark.parametrize("stop_step", [1, STEPS_PER_EPOCH + 4, 2 * STEPS_PER_EPOCH])
def test_ctrl_c_mid_epoch_resumes_exactly(tmp_path: Path, reference, stop_step: int) -> None:
    weights, values = reference
    sink = NullSink()
    first = train(resolve_run(RAW), run_dir=tmp_path / "cut", sink=sink,
                  callbacks=[StopAt(stop_step)])
    assert first.status == "interrupted"
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert saved["step"] == stop_step
    interrupt.clear()
    second = train(resolve_run(RAW), run_dir=tmp_path / "cut", sink=sink)
    assert second.status == "ok", second.error
    resumed = _weights(tmp_path / "cut")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    # Epoch sums survive the cut: the interrupted epoch's train loss is the uninterrupted one.
    assert _values(sink) == values
    assert len({(r.key, r.step) for r in sink.records}) == len(sink.records)


def _every_epoch() -> dict[str, Any]:
    """RAW with a checkpoint at every epoch's end (the same run id: the interval is not in it)."""
    return {**RAW, "train": {**RAW["train"], "checkpoint_every_s": 0}}


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, reference) -> None:
    weights, values = reference
    run_dir, sink = tmp_path / "run", NullSink()
    stop = StopAt(3 * STEPS_PER_EPOCH)  # the end of epoch 3: last.pt = epoch 3, .prev = 2
    assert train(resolve_run(_every_epoch()), run_dir=run_dir, sink=sink,
                 callbacks=[stop]).status == "interrupted"
    interrupt.clear()
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(RuntimeWarning, match="corrupt or incomplete"):
        outcome = train(resolve_run(RAW), run_dir=run_dir, sink=sink)
    assert outcome.status == "ok"
    assert "resumed from the previous one (epoch 2" in outcome.summary["notes"][0]
    resumed = _weights(run_dir)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    assert _values(sink) == values


def test_no_usable_checkpoint_restarts_from_scratch(tmp_path: Path, reference) -> None:
    weights, _ = reference
    run_dir = tmp_path / "run"
    train(resolve_run(RAW), run_dir=run_dir, callbacks=[StopAt(2 * STEPS_PER_EPOCH + 1)])
    interrupt.clear()
    for name in ("last.pt", "last.pt.prev"):
        (run_dir / name).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning):
        outcome = train(resolve_run(RAW), run_dir=run_dir)
    assert "restarted the run from scratch" in outcome.summary["notes"][0]
    resumed = _weights(run_dir)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_epoch_checkpoints_are_at_least_checkpoint_every_s_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.engine import resume  # where checkpoints are written

    written: list[int] = []
    save = resume.save_atomic

    def counting(payload: dict[str, Any], path: Path, **kw: Any) -> None:
        if path.name == "last.pt":
            written.append(payload["epoch"])
        save(payload, path, **kw)

    monkeypatch.setattr(resume, "save_atomic", counting)
    assert resolve_run(_every_epoch()).run_id == resolve_run(RAW).run_id
    train(resolve_run(_every_epoch()), run_dir=tmp_path / "every")
    assert written == [1, 2, 3, 4]
    written.clear()
    spaced = {**RAW, "train": {**RAW["train"], "checkpoint_every_s": 3600}}
    train(resolve_run(spaced), run_dir=tmp_path / "spaced")
    assert written == [4]  # the last epoch always writes one
    written.clear()
    interrupted = train(resolve_run(spaced), run_dir=tmp_path / "cut",
                        callbacks=[StopAt(2 * STEPS_PER_EPOCH)])  # Ctrl-C at epoch 2's end
    assert interrupted.status == "interrupted"
    assert written == [2]


class _FailAt(Callback):
    """A crash (not a Ctrl-C) at a chosen step: nothing is saved for it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: RunState) -> None:
        if state.step == self.step:
            raise RuntimeError("crash")


def test_a_crash_after_skipped_checkpoints_resumes_from_the_older_one(
        tmp_path: Path, reference) -> None:
    """Epochs whose checkpoint was skipped (checkpoint_every_s) are redone from the last one
    written, their records replaced: the result equals an uninterrupted run's."""
    weights, values = reference
    run_dir, sink = tmp_path / "run", NullSink()
    # Ctrl-C at the end of epoch 1: last.pt holds epoch 1.
    train(resolve_run(RAW), run_dir=run_dir, sink=sink, callbacks=[StopAt(STEPS_PER_EPOCH)])
    interrupt.clear()
    spaced = {**RAW, "train": {**RAW["train"], "checkpoint_every_s": 3600}}
    crashed = train(resolve_run(spaced), run_dir=run_dir, sink=sink,
                    callbacks=[_FailAt(3 * STEPS_PER_EPOCH - 2)])  # inside epoch 3
    assert crashed.status == "failed"
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] == 1
    assert any(r.key == "valid/loss" and r.epoch == 2 for r in sink.records)
    outcome = train(resolve_run(spaced), run_dir=run_dir, sink=sink)
    assert outcome.status == "ok", outcome.error
    resumed = _weights(run_dir)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    assert _values(sink) == values
    assert len({(r.key, r.step) for r in sink.records}) == len(sink.records)


class _Raise(Callback):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def on_step_end(self, state: RunState) -> None:
        if state.step == 3:
            raise self.exc


def test_out_of_memory_is_stored_as_oom_with_a_suggestion() -> None:
    exc = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    outcome = train(resolve_run(RAW), callbacks=[_Raise(exc)])
    assert outcome.status == "oom"
    assert "data.batch_size=16" in (outcome.error or "") and "data.batch_size=8" in (
        outcome.error or "")


def test_a_full_disk_while_checkpointing_fails_the_run_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.engine import checkpoint

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_atomic", full_disk)
    monkeypatch.setattr("trainlab.engine.resume.save_atomic", full_disk)
    outcome = train(resolve_run(RAW), run_dir=tmp_path / "run")
    assert outcome.status == "failed"
    assert "could not write the checkpoint" in (outcome.error or "")
    assert "No space left on device" in (outcome.error or "")
