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


# --- the best weights copied into the last copy's host tensors: the same best.pt ---------------

def _old_keep_best(self: Any) -> None:
    """resume.Resumable._keep_best before _best_copy, verbatim."""
    state = self._run_state
    self.best_unsaved = {"model": {k: v.detach().to("cpu", copy=True)
                                   for k, v in self._model_state().items()},
                         "epoch": state.epoch, "step": state.step}


@pytest.mark.parametrize("every_s", [0.0, 1e9])  # best.pt at every epoch, or once at the end
def test_best_weights_kept_in_place_are_the_old_best_pt(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, every_s: float) -> None:
    import torch

    from trainlab.engine.checkpoint import load_verified
    kept_at: list[int] = []
    new_copy = resume.Resumable._best_copy

    def counting(self: Any, weights: Any) -> Any:
        kept_at.append(self._run_state.epoch)
        return new_copy(self, weights)

    monkeypatch.setattr(resume.Resumable, "_best_copy", counting)
    new = _run(monkeypatch, 0.0, tmp_path / "new", epochs=6, checkpoint_every_s=every_s)
    monkeypatch.setattr(resume.Resumable, "_keep_best", _old_keep_best)
    old = _run(monkeypatch, 0.0, tmp_path / "old", epochs=6, checkpoint_every_s=every_s)
    assert len(kept_at) >= 3  # improved more than once: the host tensors were reused
    assert _values(new) == _values(old)
    a, b = load_verified(tmp_path / "new" / "best.pt"), load_verified(tmp_path / "old" / "best.pt")
    assert a is not None and b is not None and a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]) and value.stride() == b["model"][key].stride()


def test_best_copy_reuses_only_matching_host_tensors() -> None:
    import torch

    class Holder(resume.Resumable):
        pass

    holder = Holder()
    w = {"a": torch.randn(3, 4), "b": torch.randn(4).t(), "n": torch.tensor(7)}
    first = holder._best_copy(w)
    assert all(torch.equal(first[k], w[k]) and first[k] is not w[k] for k in w)
    held = {k: v.clone() for k, v in first.items()}
    w2 = {k: v + 1 for k, v in w.items()}
    second = holder._best_copy(w2)
    assert second is first and all(torch.equal(second[k], w2[k]) for k in w)
    assert not all(torch.equal(held[k], second[k]) for k in w)  # overwritten in place
    reshaped = {"a": torch.randn(4, 3), "b": w["b"], "n": w["n"]}
    third = holder._best_copy(reshaped)  # a shape changed: new tensors
    assert third is not first and torch.equal(third["a"], reshaped["a"])
    retyped = {k: v.double() if k == "a" else v for k, v in reshaped.items()}
    assert holder._best_copy(retyped)["a"].dtype == torch.float64
    reordered = {"n": w["n"], "b": w["b"], "a": retyped["a"]}
    fourth = holder._best_copy(reordered)
    assert list(fourth) == ["n", "b", "a"] and torch.equal(fourth["a"], retyped["a"])


def test_metric_records_are_the_constructors_records() -> None:
    import dataclasses

    import numpy as np
    import torch

    from trainlab.records import metric_records
    values = {"a": 1, "b": 2.5, "c": np.float32(0.1), "d": True, "e": torch.tensor(3.25).item(),
              "f": float("nan")}
    built = metric_records("run", 7, 2, 1.5, values)
    want = [MetricRecord("run", k, 7, 2, 1.5, float(v)) for k, v in values.items()]
    assert [dataclasses.astuple(r) for r in built[:-1]] == \
        [dataclasses.astuple(r) for r in want[:-1]]
    assert built[:-1] == want[:-1] and [hash(r) for r in built[:-1]] == \
        [hash(r) for r in want[:-1]]
    assert all(type(r) is MetricRecord and type(r.value) is float for r in built)
    assert built[-1].key == "f" and built[-1].value != built[-1].value  # nan stays nan
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].value = 2.0  # type: ignore[misc]
    assert metric_records("run", 0, 0, 0.0, {}) == []
