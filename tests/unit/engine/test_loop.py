"""The training loop: parity with a plain loop, resume, divergence, failures, records."""

from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from trainlab.components import build_model, build_optimizer, load_dataset
from trainlab.config.schema import resolve_run
from trainlab.engine import Callback, RunState, epoch_permutation, train
from trainlab.engine.tasks import lm_cross_entropy
from trainlab.records import NullSink

BASE: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 300, "shape": [10], "n_classes": 4,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 32, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 3, "seed": 7, "log_every": 1, "clip_grad_norm": None},
}


def _cfg(**sections: dict[str, Any]):
    raw = copy.deepcopy(BASE)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return resolve_run(raw)


def _plain_loop(config) -> dict[str, torch.Tensor]:
    """What a student would write: same seed, same batch order, no measurements; clipping and
    bf16 autocast as torch's docs show them."""
    data = load_dataset(config.data)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, data.info)
    opt = build_optimizer(config.optimizer, model.parameters())
    bs, clip = config.data.batch_size, config.train.clip_grad_norm
    bf16 = config.train.precision == "bf16"
    for epoch in range(1, config.train.epochs + 1):
        model.train()
        order = epoch_permutation(len(data.train), config.train.seed, epoch)
        for idx in order.split(bs):
            x, y = data.train.inputs[idx], data.train.targets[idx]
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                if data.info.task == "lm":
                    # The engine's LM loss: F.cross_entropy's value with a cheaper backward,
                    # whose gradients differ from torch's by float rounding only (checked in
                    # test_tasks.py).  Rounding compounds over Adam steps (with F.cross_entropy
                    # the weights drift ~5e-6 relative in fp32, up to ~6e-2 in bf16), so only
                    # the same function gives the bit-for-bit parity this test is about.
                    loss = lm_cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
                else:
                    loss = F.cross_entropy(out, y)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return model.state_dict()


# Parity cases, as Lightning Fabric's tests/parity_fabric: a classifier with dropout, and a
# tiny GPT (dropout in attention and MLP, tied embeddings) on a word-level LM corpus.
PARITY_MODELS: dict[str, dict[str, Any]] = {
    "mlp": {},
    "gpt": {"data": {"name": "pydoc-lm", "seq_len": 8, "limit": 96, "batch_size": 16,
                     "min_freq": 20, "valid_fraction": 0.02, "test_fraction": 0.02},
            "model": {"name": "gpt", "embed_dim": 16, "heads": 2, "layers": 1,
                      "dropout": 0.1}},
}
CLIP = 0.05  # below every step's gradient norm in both models: each step is clipped


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("clip", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("model", sorted(PARITY_MODELS))
def test_parity_with_a_plain_loop_with_every_measurement_on(
        tmp_path: Path, model: str, clip: float | None, precision: str) -> None:
    """Measuring (grad norm every step, validation each epoch, checkpoints, records) does not
    change the weights by a single bit."""
    raw = {**copy.deepcopy(BASE), **copy.deepcopy(PARITY_MODELS[model])}
    raw["train"] = {**raw["train"], "clip_grad_norm": clip, "precision": precision}
    config = resolve_run(raw)
    sink = NullSink()
    outcome = train(config, run_dir=tmp_path, sink=sink)
    assert outcome.status == "ok", outcome.error
    assert outcome.summary["speed"]["precision"] == precision
    norms = [r.value for r in sink.records if r.key == "grad_norm"]
    assert len(norms) == config.train.epochs * math.ceil(len(load_dataset(config.data).train)
                                                         / config.data.batch_size)
    if clip is not None:  # the case clips at every step (the norm is read before clipping)
        assert min(norms) > clip
    engine = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    plain = _plain_loop(config)
    assert engine.keys() == plain.keys()
    for key in plain:
        assert torch.equal(engine[key], plain[key]), key


def test_records_cover_the_contract() -> None:
    sink = NullSink()
    outcome = train(_cfg(train={"log_every": 5}), sink=sink)
    keys = Counter(r.key for r in sink.records)
    for key in ("train/loss", "train/accuracy", "valid/loss", "valid/accuracy",
                "time/epoch_train", "time/train", "throughput/samples_per_s",
                "memory/peak_bytes", "eval/latency_per_batch_s"):
        assert keys[key] == 3, key  # once per epoch
    assert keys["test/accuracy"] == keys["test/loss"] == 1
    assert keys["params/total"] == keys["params/trainable"] == 1
    steps = math.ceil(210 / 16) * 3
    assert keys["grad_norm"] == steps // 5
    assert keys["lr"] >= keys["grad_norm"]  # also at each epoch end
    assert keys["train/step_loss"] >= steps // 5
    assert len({(r.key, r.step) for r in sink.records}) == len(sink.records)
    summary = outcome.summary
    assert summary["params_total"] == 10 * 32 + 32 + 32 * 4 + 4
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["best_epoch"] in (1, 2, 3)
    assert summary["peak_memory_bytes"] > 0 and summary["samples_per_s"] > 0
    # Which split is which, how big, from where (issue 21; components' split_summary).
    assert summary["splits"]["train"]["size"] == 210
    assert "held out" in summary["splits"]["valid"]["source"]


class _CountingSink(NullSink):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, records: Any) -> None:
        self.writes += 1
        super().write(records)


def test_log_points_reach_the_store_with_the_epochs_records() -> None:
    """Log points within FLUSH_EVERY_S of the last write wait for the epoch end's one write
    (a write per log point cost as much as the step's lead over a plain loop); none is lost."""
    sink = _CountingSink()
    outcome = train(_cfg(train={"log_every": 2}), sink=sink)
    assert outcome.status == "ok", outcome.error
    steps = math.ceil(210 / 16) * 3
    assert Counter(r.key for r in sink.records)["grad_norm"] == steps // 2
    assert sink.writes <= 2 * 3 + 2  # not one per log point (19 of them)


def test_language_model_records_perplexity() -> None:
    config = resolve_run({
        "data": {"name": "pydoc-lm", "seq_len": 8, "limit": 64, "batch_size": 16},
        "model": {"name": "lstm", "embed_dim": 8, "hidden_dim": 8},
        "train": {"epochs": 1}})
    sink = NullSink()
    outcome = train(config, sink=sink)
    values = {r.key: r.value for r in sink.records}
    assert outcome.status == "ok"
    assert values["valid/perplexity"] == pytest.approx(math.exp(values["valid/loss"]))
    assert values["throughput/tokens_per_s"] == pytest.approx(
        8 * values["throughput/samples_per_s"])


def test_divergence_is_reported_not_raised() -> None:
    outcome = train(_cfg(optimizer={"name": "sgd", "lr": 1e12},
                         data={"task": "regression"}, model={"dropout": 0.0}))
    assert outcome.status == "diverged"
    assert "became" in (outcome.error or "") and "lr 1e+12" in (outcome.error or "")


class _Boom(Callback):
    def __init__(self, at_step: int, exc: BaseException) -> None:
        self.at_step, self.exc = at_step, exc

    def on_step_end(self, state: RunState) -> None:
        if state.step == self.at_step:
            raise self.exc


def test_an_exception_mid_run_is_a_failed_outcome() -> None:
    outcome = train(_cfg(), callbacks=[_Boom(5, RuntimeError("disk on fire"))])
    assert outcome.status == "failed" and "disk on fire" in (outcome.error or "")


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    config = _cfg(train={"epochs": 4})
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    train(config, run_dir=full_dir)
    sink = NullSink()
    steps_per_epoch = math.ceil(210 / 16)
    first = train(config, run_dir=cut_dir, sink=sink,
                  callbacks=[_Boom(2 * steps_per_epoch + 3, KeyboardInterrupt())])
    assert first.status == "interrupted"
    assert max(r.epoch for r in sink.records) == 3  # epoch 3 had started when it was cut
    second = train(config, run_dir=cut_dir, sink=sink)
    assert second.status == "ok"
    a = torch.load(full_dir / "last.pt", weights_only=False)["model"]
    b = torch.load(cut_dir / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    valid_epochs = sorted(r.epoch for r in sink.records if r.key == "valid/loss")
    assert valid_epochs == [1, 2, 3, 4]
    assert len({(r.key, r.step) for r in sink.records}) == len(sink.records)


def test_early_stopping_and_eval_every() -> None:
    sink = NullSink()
    outcome = train(_cfg(train={"epochs": 30, "eval_every": 7, "log_every": 50,
                                "early_stopping": {"patience": 2}},
                         optimizer={"lr": 0.05}), sink=sink)
    assert outcome.status == "ok" and "stopped early" in outcome.summary["stopped_early"]
    evals = [r.step for r in sink.records if r.key == "valid/loss"]
    assert evals[:3] == [7, 14, 21]
    assert outcome.summary["epochs"] < 30
    assert "test_accuracy" in outcome.summary


def _distance_moved(config, run_dir: Path) -> float:
    train(config, run_dir=run_dir)
    final = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    torch.manual_seed(config.train.seed)
    start = build_model(config.model, load_dataset(config.data).info).state_dict()
    return float(sum((final[k] - start[k]).pow(2).sum() for k in start) ** 0.5)


def test_gradient_clipping_bounds_each_update(tmp_path: Path) -> None:
    clip, lr = 1e-3, 1.0
    common = {"optimizer": {"name": "sgd", "lr": lr}, "model": {"dropout": 0.0}}
    clipped = _cfg(train={"clip_grad_norm": clip, "epochs": 1}, **common)
    free = _cfg(train={"epochs": 1}, **common)
    steps = math.ceil(210 / 16)
    assert _distance_moved(clipped, tmp_path / "a") <= steps * lr * clip * (1 + 1e-4)
    assert _distance_moved(free, tmp_path / "b") > 10 * steps * lr * clip


def test_seed_makes_runs_repeatable_and_different_seeds_differ(tmp_path: Path) -> None:
    a, b, c = (train(_cfg(train={"seed": s, "epochs": 1})) for s in (1, 1, 2))
    assert a.summary["test_loss"] == b.summary["test_loss"] != c.summary["test_loss"]


def test_step_callbacks_see_every_step() -> None:
    seen: list[int] = []

    class Count(Callback):
        def on_step_end(self, state: RunState) -> None:
            seen.append(state.step)

    train(_cfg(train={"epochs": 1}), callbacks=[Count()])
    assert seen == list(range(1, math.ceil(210 / 16) + 1))
