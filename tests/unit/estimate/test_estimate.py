"""Estimates: exact state bytes, traced activations, a probe that changes nothing, and the
GPU sampler's lifecycle."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from trainlab.components import build_model, build_optimizer, load_dataset
from trainlab.config.schema import resolve_component, resolve_run
from trainlab.engine import train
from trainlab.engine.sampler import GpuSampler, nvml_sampler
from trainlab.errors import ConfigError
from trainlab.estimate import estimate_run, largest_fitting_batch, memory_budget
from trainlab.estimate.memory import optimizer_state_bytes, state_bytes, trace
from trainlab.estimate.probe import trimmed_mean

RAW: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 256, "shape": [16], "n_classes": 4,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 64, "layers": 2},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 2, "log_every": 4},
}
OPTIMIZERS = [
    {"name": "sgd"}, {"name": "sgd", "momentum": 0.5}, {"name": "momentum"},
    {"name": "nesterov"}, {"name": "adam"}, {"name": "adam", "amsgrad": True}, {"name": "adamw"},
    {"name": "rmsprop"}, {"name": "rmsprop", "momentum": 0.9}, {"name": "adagrad"},
]


@pytest.mark.parametrize("spec", OPTIMIZERS, ids=lambda s: "-".join(map(str, s.values())))
def test_optimizer_state_bytes_are_exact(spec: dict) -> None:
    data = load_dataset(resolve_run(RAW).data)
    model = build_model(resolve_component("model", RAW["model"]), data.info)
    opt_spec = resolve_component("optimizer", spec)
    optimizer = build_optimizer(opt_spec, model.parameters())
    torch.nn.functional.cross_entropy(model(data.train.inputs[:8]),
                                      data.train.targets[:8]).backward()
    optimizer.step()
    real = sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor))
    trainable = list(model.parameters())
    assert optimizer_state_bytes(opt_spec, trainable) == real
    parts = state_bytes(model, opt_spec, trainable)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert parts.params == parts.grads == weights


def test_tied_weights_and_frozen_parameters_are_counted_once() -> None:
    info = load_dataset(resolve_component("data", {"name": "pydoc-lm", "seq_len": 8,
                                                   "limit": 32})).info
    model = build_model(resolve_component("model", {"name": "gpt", "embed_dim": 16}), info)
    unique = {id(p): p for p in model.parameters()}.values()
    adam = resolve_component("optimizer", {"name": "adam"})
    parts = state_bytes(model, adam, list(unique))
    assert parts.params == sum(p.numel() * 4 for p in unique)
    frozen = state_bytes(model, adam, [])
    assert frozen.grads == frozen.optimizer == 0


def test_traced_activations_grow_linearly_with_the_batch() -> None:
    config = resolve_run(RAW)
    info = load_dataset(config.data).info
    small = trace(config.model, config.finetune, info, 32)
    large = trace(config.model, config.finetune, info, 128)
    assert small is not None and large is not None
    # Two hidden layers of 64 floats per example must at least be kept for the backward pass.
    assert small["activations"] >= 32 * 64 * 2 * 4
    assert large["activations"] == pytest.approx(4 * small["activations"], rel=0.1)
    assert small["params"] == large["params"] > 0


def test_the_probe_changes_nothing_in_the_run_it_predicts(tmp_path: Path) -> None:
    config = resolve_run({**RAW, "model": {**RAW["model"], "dropout": 0.3}})
    train(config, run_dir=tmp_path / "alone")
    estimate = estimate_run(config)
    train(config, run_dir=tmp_path / "after")
    a = torch.load(tmp_path / "alone" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "after" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert estimate.method == "probe" and estimate.step_s > 0 and estimate.step_bytes >= 0
    steps = (256 - round(256 * 0.15) * 2 + 31) // 32
    assert estimate.epoch_train_s == pytest.approx(steps * estimate.step_s)
    assert estimate.params_total == 16 * 64 + 64 + 64 * 64 + 64 + 64 * 4 + 4


def test_the_probe_averages_step_times_without_the_extremes() -> None:
    # An epoch is the sum of its steps: the mean predicts it, one descheduled step does not.
    steps = [1.0] * 8 + [2.0] * 10 + [100.0, 0.001]
    assert trimmed_mean(steps) == pytest.approx((7 * 1.0 + 9 * 2.0) / 16)  # 2 cut each side
    assert trimmed_mean([3.0, 5.0]) == 4.0  # too few values to trim: the plain mean


def test_the_probe_times_a_minimum_window_on_tiny_steps() -> None:
    from trainlab.estimate.probe import probe

    config = resolve_run(RAW)  # a 16-64-64-4 MLP: 100 steps take well under 0.1 s
    short = probe(config, max_steps=100, min_window_s=0.0)
    assert short.steps_timed == 100
    window = probe(config, max_steps=100, min_window_s=0.5)
    assert window.steps_timed > 100  # went on past max_steps until the window was long enough
    assert window.steps_timed <= 2000  # never more than 20 x max_steps


def test_flops_method_and_shared_probes() -> None:
    config = resolve_run(RAW)
    flops = estimate_run(config, calibrate=False)
    assert flops.method == "flops" and flops.probe_s == 0
    assert flops.step_s == pytest.approx(flops.flops_per_step / flops.peak_flops_per_s)
    cache: dict[str, Any] = {}
    first = estimate_run(config, cache=cache)
    other_lr = copy.deepcopy(RAW)
    other_lr["optimizer"]["lr"] = 0.1  # the LR cannot change step time: same probe
    second = estimate_run(resolve_run(other_lr), cache=cache)
    assert len(cache) == 1 and first.step_s == second.step_s


def test_largest_fitting_batch() -> None:
    config = resolve_run(RAW)
    est = estimate_run(config, calibrate=False)
    fixed = est.base_bytes + est.param_bytes + est.grad_bytes + est.optimizer_bytes
    per_example = (est.peak_bytes - fixed) / 32
    assert largest_fitting_batch(config, int(fixed + 100 * per_example) + 1, est) == 100
    assert largest_fitting_batch(config, fixed - 1, est) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("8e9", 8_000_000_000), ("16GiB", 16 * 2**30), ("512 MB", 512_000_000), ("100", 100)])
def test_memory_budget_parses_sizes(text: str, expected: int) -> None:
    assert memory_budget(text, torch.device("cpu")) == expected


@pytest.mark.parametrize("text", ["lots", "12 parsecs", "-"])
def test_memory_budget_rejects_nonsense(text: str) -> None:
    with pytest.raises(ConfigError, match="--fit-memory"):
        memory_budget(text, torch.device("cpu"))


def test_sampler_starts_aggregates_and_stops_cleanly() -> None:
    calls = []

    def read() -> tuple[float, float]:
        calls.append(time.perf_counter())
        return 50.0 + len(calls), 1e9 * len(calls)

    sampler = GpuSampler(read, interval=0.01)
    sampler.start()
    assert sampler.running
    time.sleep(0.15)
    drained = sampler.drain()
    sampler.stop()
    assert not sampler.running
    assert not any(t.name == "trainlab-gpu-sampler" for t in threading.enumerate())
    assert drained["gpu/samples"] >= 3
    assert drained["gpu/utilization_max"] == 50.0 + drained["gpu/samples"]
    assert sampler.drain() == {} or sampler.drain()["gpu/samples"] <= 1


def test_a_failing_reader_does_not_kill_the_sampler() -> None:
    def read() -> tuple[float, float]:
        raise RuntimeError("driver gone")

    sampler = GpuSampler(read, interval=0.01)
    sampler.start()
    time.sleep(0.05)
    assert sampler.running and sampler.drain() == {}
    sampler.stop()


def test_no_sampler_without_a_gpu() -> None:
    assert nvml_sampler(torch.device("cpu"), 0.5) is None
    outcome = train(resolve_run(RAW))
    assert not any(k.startswith("gpu/") for k in outcome.summary)
    assert not any(t.name == "trainlab-gpu-sampler" for t in threading.enumerate())
