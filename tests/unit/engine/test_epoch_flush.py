"""Epoch records held up to FLUSH_EVERY_S (engine/loop.py): the same records reach the sink as
with a write per epoch, every one before the checkpoint that saw it, and all by the run's end."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from trainlab.config.schema import resolve_run
from trainlab.engine import loop, resume, train
from trainlab.records import MetricRecord, NullSink

RAW: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 200, "shape": [8], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 16},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 4, "seed": 3, "log_every": 4, "threads": 1},
}


class _Sink(NullSink):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[MetricRecord]] = []

    def write(self, records: Any) -> None:
        self.writes.append(list(records))
        super().write(records)


def _run(monkeypatch: pytest.MonkeyPatch, every_s: float, run_dir: Path | None = None,
         **train_opts: Any) -> _Sink:
    monkeypatch.setattr(loop, "FLUSH_EVERY_S", every_s)
    raw = copy.deepcopy(RAW)
    raw["train"].update(train_opts)
    sink = _Sink()
    outcome = train(resolve_run(raw), run_id="r", run_dir=run_dir, sink=sink)
    assert outcome.status == "ok", outcome.error
    return sink


# Measured, not computed: they differ from run to run, and some are only recorded when the
# machine was busy (perf/mfu_unreliable, perf/disturbed).
TIMING = ("time/", "throughput/", "perf/", "memory/", "machine/", "eval/latency")


def _values(sink: _Sink) -> list[tuple[str, int, int, float]]:
    return sorted((r.key, r.step, r.epoch, r.value) for w in sink.writes for r in w
                  if not r.key.startswith(TIMING))


def _keys(sink: _Sink) -> list[tuple[str, int]]:
    """Every (key, step) recorded, measured ones included, but those that depend on the
    machine's state."""
    return sorted((r.key, r.step) for w in sink.writes for r in w
                  if r.key not in ("perf/mfu_unreliable", "perf/disturbed")
                  and not r.key.startswith("machine/"))


def test_held_epochs_write_the_same_records_once_at_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    each = _run(monkeypatch, 0.0)  # every epoch written at its end, as before
    held = _run(monkeypatch, 3600.0)
    assert len(each.writes) >= 4  # one per epoch at least (plus the test's)
    # The first epoch's (nothing was written yet), the last epoch's (before its checkpoint)
    # and the test's: not one per epoch.
    assert len(held.writes) <= 3 < len(each.writes)
    assert _keys(held) == _keys(each), set(_keys(held)) ^ set(_keys(each))
    assert _values(held) == _values(each)


def test_every_checkpoint_follows_the_records_it_saw(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []  # (epoch checkpointed, latest epoch already written)
    sink_box: list[_Sink] = []
    real = resume.Resumable._checkpoint

    def checkpoint(self: Any, epoch: int, partial: Any = None) -> None:
        assert not self.buffer, "a checkpoint before its records reached the sink"
        written = [r.epoch for w in sink_box[0].writes for r in w] if sink_box else []
        seen.append((epoch, max(written, default=0)))
        real(self, epoch, partial)

    monkeypatch.setattr(resume.Resumable, "_checkpoint", checkpoint)
    original = _Sink.__init__

    def init(self: _Sink) -> None:
        original(self)
        sink_box.append(self)

    monkeypatch.setattr(_Sink, "__init__", init)
    _run(monkeypatch, 3600.0, run_dir=tmp_path / "run", checkpoint_every_s=0)
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert all(written >= epoch for epoch, written in seen)
