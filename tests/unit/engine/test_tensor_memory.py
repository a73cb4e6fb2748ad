"""The run's own memory (memory/tensor_peak_bytes): the peak bytes of the tensors the run holds
and creates, measured over the first step on CPU, without the process around them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from tests.helpers import StopAt
from trainlab.config.schema import resolve_run
from trainlab.engine import interrupt, loop, train
from trainlab.engine.measure import TENSOR_PEAK_KEY, PeakMemory, TensorTracker, held_tensors
from trainlab.records import NullSink

CPU = torch.device("cpu")


def _digits(hidden: int, **train: Any) -> dict[str, Any]:
    return {"data": {"name": "digits", "batch_size": 32, "limit": 256},
            "model": {"name": "mlp", "hidden_dim": hidden},
            "optimizer": {"name": "adam", "lr": 1e-3},
            "train": {"epochs": 1, "log_every": 4, "device": "cpu", **train}}


# Dropout and a schedule: a measurement that drew from the RNG or touched a value would show.
SYNTHETIC: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 300, "shape": [10], "n_classes": 4,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 32, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "slanted-triangular"},
    "train": {"epochs": 3, "seed": 3, "log_every": 5, "device": "cpu"},
}


@pytest.fixture(autouse=True)
def _clear_flag() -> Iterator[None]:
    interrupt.clear()
    yield
    interrupt.clear()


def _memory(sink: NullSink, key: str) -> list[float]:
    return [r.value for r in sink.records if r.key == key]


def test_the_tracker_adds_what_operators_create_and_takes_off_what_is_freed() -> None:
    held = torch.zeros(1000)  # 4,000 bytes the run holds when tracking starts
    tracker = TensorTracker(CPU, [held, held[:10], held.view(10, 100)])  # one storage
    assert tracker.start == tracker.live == 4000
    with tracker:
        a = torch.ones(1000)  # +4,000
        b = a * 2  # +4,000: 12,000
        del a  # 8,000
        c = b.view(10, 100)  # a view allocates nothing
        d = b + c.flatten()  # +4,000: 12,000 again
        del b, c, d  # 4,000
        e = torch.ones(500)  # +2,000
    assert (tracker.peak, tracker.live) == (12000, 6000)
    del e  # after the mode ended, nothing is counted any more
    assert tracker.live == 6000 and _get_current_dispatch_mode() is None


def test_held_tensors_counts_each_storage_of_the_run() -> None:
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    data = torch.zeros(100, 8)

    class Split:
        inputs, targets = data, torch.zeros(100, dtype=torch.long)

    tracker = TensorTracker(CPU, held_tensors(model, optimizer, [Split(), None],
                                              data[:16], (data[16:32],)))
    params = (8 * 4 + 4) * 4
    state = 2 * params + 2 * 4  # exp_avg, exp_avg_sq, and a float32 step per parameter
    assert tracker.live == params + params + state + 100 * 8 * 4 + 100 * 8  # grads, data


@pytest.mark.parametrize("batch", [4, 512])  # the peak in the update; in forward/backward
def test_the_first_step_gives_the_peak_of_a_steady_one(batch: int) -> None:
    """The first step allocates Adam's moments after backward; later steps hold them from the
    start.  Measured on the first step, the steady peak is the one a second step shows."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    peaks = []
    for _ in range(2):
        memory = PeakMemory(CPU)
        memory.track_step(held_tensors(model, optimizer, (), x, y), optimizer=optimizer)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        memory.end_step()
        peaks.append(memory.tensor_peak)
    assert peaks[0] == peaks[1]
    assert not optimizer._optimizer_step_pre_hooks  # the hook is gone


def test_the_runs_own_memory_grows_with_width_while_rss_barely_moves() -> None:
    """Two widths of the digits MLP: the tensors' peak grows by the extra parameters,
    gradients and Adam's two moments (4 x the parameter bytes), while the process's peak RSS,
    hundreds of MiB of Python and torch, moves by less than that in relative terms."""
    out = {}
    for hidden in (32, 512):
        sink = NullSink()
        outcome = train(resolve_run(_digits(hidden)), sink=sink)
        assert outcome.status == "ok"
        summary = outcome.summary
        assert summary["tensor_peak_bytes"] == max(_memory(sink, TENSOR_PEAK_KEY))
        out[hidden] = (summary["tensor_peak_bytes"], summary["peak_memory_bytes"],
                       4 * summary["params_total"])  # float32 parameter bytes
    (small, rss_small, p_small), (large, rss_large, p_large) = out[32], out[512]
    grown = 4 * (p_large - p_small)  # weights + gradients + Adam's exp_avg and exp_avg_sq
    assert grown * 0.95 <= large - small <= grown * 1.25, (small, large, grown)
    # At least the state itself and the digits data; the process is far larger.
    assert small > 4 * p_small + 1797 * 64 * 4 and large > 4 * p_large
    assert large < rss_large / 100
    assert abs(rss_large / rss_small - 1) < large / small - 1, (rss_small, rss_large)


def _run(tmp: Path, **kw: Any) -> tuple[Any, NullSink, dict[str, torch.Tensor]]:
    sink = NullSink()
    outcome = train(resolve_run(SYNTHETIC), run_dir=tmp, sink=sink, **kw)
    weights = torch.load(tmp / "last.pt", weights_only=False)["model"]
    return outcome, sink, weights


def test_measuring_changes_no_value_of_the_run(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    measured, sink, weights = _run(tmp_path / "measured")
    with monkeypatch.context() as m:
        m.setattr(PeakMemory, "track_step", lambda self, held, **kw: None)
        plain, plain_sink, plain_weights = _run(tmp_path / "plain")
    assert measured.status == plain.status == "ok"
    assert "tensor_peak_bytes" in measured.summary
    assert "tensor_peak_bytes" not in plain.summary and not _memory(plain_sink, TENSOR_PEAK_KEY)
    assert weights.keys() == plain_weights.keys()
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)

    def values(s: NullSink) -> list[tuple[str, int, float]]:
        return [(r.key, r.step, r.value) for r in s.records
                if r.key.startswith(("train/", "valid/", "test/", "lr", "grad_norm"))]

    assert values(sink) == values(plain_sink)


def test_a_resumed_run_still_reports_it(tmp_path: Path) -> None:
    whole = train(resolve_run(SYNTHETIC), run_dir=tmp_path / "whole", sink=NullSink())
    steps = whole.summary["steps"] // 3
    cut = train(resolve_run(SYNTHETIC), run_dir=tmp_path / "cut", sink=NullSink(),
                callbacks=[StopAt(steps)])  # stops after epoch 1, whose stats are saved
    assert cut.status == "interrupted"
    interrupt.clear()
    sink = NullSink()
    resumed = train(resolve_run(SYNTHETIC), run_dir=tmp_path / "cut", sink=sink)
    assert resumed.status == "ok" and resumed.summary["epochs"] == 3
    # Epochs 2 and 3; its first step in the new process is measured again, with the
    # optimizer's state loaded from the checkpoint: the same steady peak.
    assert len(_memory(sink, TENSOR_PEAK_KEY)) == 2
    assert resumed.summary["tensor_peak_bytes"] == whole.summary["tensor_peak_bytes"]


def test_a_run_failing_in_its_first_step_leaves_no_tracker_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(config: Any, task: Any) -> Any:
        def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("a loss that fails")
        return loss

    monkeypatch.setattr(loop, "training_loss", broken)
    outcome = train(resolve_run(_digits(16)))
    assert outcome.status == "failed" and "a loss that fails" in (outcome.error or "")
    assert _get_current_dispatch_mode() is None


def test_compiled_cpu_runs_and_cuda_do_not_track(monkeypatch: pytest.MonkeyPatch) -> None:
    memory, held = PeakMemory(CPU), torch.ones(4)
    memory.track_step([held], compiled=True)  # torch.compile must see no mode
    assert _get_current_dispatch_mode() is None
    memory.end_step()
    assert TENSOR_PEAK_KEY not in memory.read()
    memory.track_step([held])
    x = torch.ones(8) * 2  # noqa: F841  (ones(8) and its double live together)
    memory.end_step()
    memory.end_step()  # idempotent
    assert memory.read()[TENSOR_PEAK_KEY] == 16 + 32 + 32
    cuda = PeakMemory(torch.device("cuda"))
    cuda.track_step([held])  # the allocator counts: no tracker
    assert cuda._tracker is None and _get_current_dispatch_mode() is None


@pytest.mark.gpu
def test_on_cuda_it_is_the_allocators_peak() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    sink = NullSink()
    outcome = train(resolve_run(_digits(64) | {"train": {"epochs": 1, "device": "cuda"}}),
                    sink=sink)
    assert outcome.status == "ok"
    assert _memory(sink, TENSOR_PEAK_KEY) == _memory(sink, "memory/peak_bytes")
    assert 0 < outcome.summary["tensor_peak_bytes"] <= outcome.summary["reserved_memory_bytes"]
