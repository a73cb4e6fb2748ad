"""Speed options: each is honest (results unchanged or changed only at float rounding),
recorded with the run, and measured (MFU against the measured matmul peak)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from trainlab.components import build_optimizer
from trainlab.config.schema import resolve_component, resolve_run
from trainlab.engine import train
from trainlab.engine.flops import measure_peak_flops, train_step_flops
from trainlab.errors import ConfigError
from trainlab.estimate.probe import probe
from trainlab.records import NullSink

RAW: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 32, "limit": 256},
    "model": {"name": "mlp", "hidden_dim": 32},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 2, "log_every": 4},
}


def _cfg(**changes: dict[str, Any]):
    raw = copy.deepcopy(RAW)
    for section, values in changes.items():
        raw[section] = {**raw[section], **values}
    return resolve_run(raw)


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(("spec", "fused"), [
    ({"name": "adam"}, True), ({"name": "adamw"}, True), ({"name": "adagrad"}, True),
    ({"name": "sgd"}, True), ({"name": "sgd", "momentum": 0.5}, False),
    ({"name": "momentum"}, False), ({"name": "nesterov"}, False), ({"name": "rmsprop"}, False),
    ({"name": "momentum", "fused": True}, True), ({"name": "adam", "fused": False}, False),
])
def test_fused_auto_is_on_only_where_it_is_exact(spec: dict, fused: bool) -> None:
    opt = build_optimizer(resolve_component("optimizer", spec), _params())
    assert bool(opt.defaults.get("fused")) is fused
    assert bool(opt.defaults.get("foreach")) is not fused


def test_fused_rmsprop_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rmsprop has no fused kernel"):
        build_optimizer(resolve_component("optimizer", {"name": "rmsprop", "fused": True}),
                        _params())


def test_fused_adam_changes_weights_only_at_float_rounding() -> None:
    """The claim behind fused=auto for Adam: 300 steps of an MLP differ by < 1e-6."""
    def weights(fused: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 10))
        opt = build_optimizer(resolve_component("optimizer", {"name": "adam", "fused": fused}),
                              model.parameters())
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(512, 64, generator=gen), torch.randint(0, 10, (512,), generator=gen)
        for i in range(300):
            idx = slice(i * 32 % 480, i * 32 % 480 + 32)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b = weights(True), weights(False)
    assert not torch.equal(a, b)  # different kernels ...
    assert (a - b).abs().max() < 1e-6  # ... agreeing to float rounding


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_and_is_recorded(precision: str) -> None:
    changes: dict[str, Any] = {"optimizer": {"lr": 0.01}}
    full = train(_cfg(**changes, train={"epochs": 3}))
    outcome = train(_cfg(**changes, train={"epochs": 3, "precision": precision}))
    assert outcome.status == "ok", outcome.error
    assert outcome.summary["speed"]["precision"] == precision
    assert full.summary["test_accuracy"] > 0.6  # chance is 0.1
    assert abs(outcome.summary["test_accuracy"] - full.summary["test_accuracy"]) < 0.1


def test_channels_last_gives_the_same_results_on_a_cnn(tmp_path: Path) -> None:
    base = {"model": {"name": "cnn", "channels": [4, 8], "fc": [16]}}
    a = train(_cfg(**base, train={"channels_last": False}), run_dir=tmp_path / "a")
    b = train(_cfg(**base, train={"channels_last": True}), run_dir=tmp_path / "b")
    assert a.summary["speed"]["channels_last"] is False
    assert b.summary["speed"]["channels_last"] is True
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_speed_options_are_in_the_summary_and_auto_resolves() -> None:
    outcome = train(_cfg())
    speed = outcome.summary["speed"]
    threads_auto = speed.pop("threads_auto")  # train.threads: auto (test_threads.py)
    assert speed == {"fused": True, "foreach": False, "precision": "fp32", "compile": False,
                     "channels_last": False, "data_on_device": True,
                     "threads": torch.get_num_threads(),  # one to give (tests/conftest.py)
                     "steady_heap": sys.platform.startswith("linux")}
    assert threads_auto["reason"] == "one thread"


def test_train_threads_hold_for_their_run_only() -> None:
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    one = train(_cfg(train={"threads": other}))
    assert one.summary["speed"]["threads"] == other  # what the run trained with
    assert torch.get_num_threads() == before  # the next run (or the caller) gets its own back
    assert train(_cfg()).summary["speed"]["threads"] == before
    probe(_cfg(train={"threads": other}), max_steps=3, budget_s=0.0)  # times with the run's
    assert torch.get_num_threads() == before


def test_flops_per_step_are_exact_for_an_mlp() -> None:
    cfg = _cfg()
    from trainlab.components import load_dataset

    info = load_dataset(cfg.data).info
    flops = train_step_flops(cfg.model, info, 32)
    forward = 2 * 32 * (64 * 32 + 32 * 10)
    # backward: weight gradients of both layers, input gradient of the second only
    backward = 2 * 32 * (64 * 32 + 32 * 10) + 2 * 32 * 32 * 10
    assert flops == forward + backward


def test_mfu_is_recorded_each_epoch() -> None:
    sink = NullSink()
    outcome = train(_cfg(), sink=sink)
    mfu = [r.value for r in sink.records if r.key == "perf/mfu"]
    assert len(mfu) == 2 and all(0 < v < 1 for v in mfu)
    assert 0 < outcome.summary["mfu"] < 1
    assert outcome.summary["peak_flops_per_s"] == measure_peak_flops(torch.device("cpu"))


def test_measuring_the_peak_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    measure_peak_flops(torch.device("cpu"), torch.float64, seconds=0.01)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_compile_time_is_kept_apart_from_training_time() -> None:
    """torch.compile costs seconds on CPU: python -m pytest -m slow -k compile"""
    sink = NullSink()
    outcome = train(_cfg(train={"compile": True, "epochs": 1}), sink=sink)
    assert outcome.status == "ok", outcome.error
    compile_time = outcome.summary["compile_time"]
    assert compile_time > 0.5 and outcome.summary["speed"]["compile"] is True
    assert outcome.summary["train_time"] < compile_time  # a tiny MLP trains faster than that


def test_the_first_step_is_timed_apart_as_warmup() -> None:
    sink = NullSink()
    outcome = train(_cfg(), sink=sink)
    warm = [r for r in sink.records if r.key == "time/warmup"]
    assert len(warm) == 1 and warm[0].step == 1
    assert outcome.summary["warmup_time"] == warm[0].value > 0
    epoch_one = next(r.value for r in sink.records if r.key == "time/epoch_train")
    # Epoch 1's samples/s counts the samples of the timed steps only (not the first batch).
    rate = next(r.value for r in sink.records if r.key == "throughput/samples_per_s")
    assert rate == pytest.approx((256 - 32) / epoch_one)


@pytest.mark.parametrize(("row", "batch", "chunked"), [
    (16, 32, True),  # 2 KB batches: gathered many at a time
    (64 * 64, 70, False),  # 1.1 MB batches: indexed one by one
])
def test_batches_are_gathered_in_chunks_with_the_values_of_plain_indexing(
        row: int, batch: int, chunked: bool) -> None:
    from trainlab.engine.speed import gathered

    inputs = torch.randn(1000, row)
    targets = torch.randint(0, 5, (1000,))
    batches = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).split(batch)
    out = list(gathered(inputs, targets, batches))
    assert len(out) == len(batches)  # the last, short batch included
    for (idx, x, y), want in zip(out, batches):
        assert idx is want
        assert torch.equal(x, inputs[want]) and torch.equal(y, targets[want])
        assert x.is_contiguous()
    # Chunked: neighbouring batches are slices of one gathered tensor.
    shared = out[0][1].untyped_storage().data_ptr() == out[1][1].untyped_storage().data_ptr()
    assert shared == chunked
    assert list(gathered(inputs, targets, [])) == []
