"""Stacked training (train.stack): each stacked run equals the same run trained alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.helpers import ReadsAValue
from trainlab.config.schema import RunConfig, resolve_run
from trainlab.engine import train
from trainlab.engine.checkpoint import load_verified
from trainlab.engine.stack import StackUnsupported, _StackTrainer, train_stack
from trainlab.engine.stack_optim import StackedOptimizer
from trainlab.hooks import RunOutcome
from trainlab.records import NullSink


def _config(optimizer: dict[str, Any], seed: int, schedule: dict[str, Any] | None = None,
            epochs: int = 10, log_every: int = 25, **model: Any) -> RunConfig:
    # 960 examples in batches of 32: 30 steps an epoch, 300 steps in 10 epochs.
    return resolve_run({
        "data": {"name": "digits", "batch_size": 32, "limit": 960},
        "model": {"name": "mlp", "hidden_dim": 32, **model},
        "optimizer": optimizer, "schedule": schedule or {"name": "constant"},
        "train": {"epochs": epochs, "seed": seed, "threads": 1, "log_every": log_every}})


def _solo_weights(config: RunConfig, tmp: Path) -> tuple[dict[str, torch.Tensor], float]:
    outcome = train(config, run_dir=tmp, sink=NullSink())
    assert outcome.status == "ok", outcome.error
    ckpt = load_verified(tmp / "last.pt")
    assert ckpt is not None
    return ckpt["model"], outcome.summary["best_valid_loss"]


# Each case: one stack of two runs that differ in LR, weight decay (or momentum, betas),
# schedule and seed; 300 steps.
CASES = {
    "sgd": [({"name": "sgd", "lr": 0.1}, {"name": "constant"}),
            ({"name": "sgd", "lr": 0.05, "weight_decay": 1e-3}, {"name": "step", "step_size": 3})],
    "momentum": [({"name": "momentum", "lr": 0.02, "weight_decay": 1e-4}, None),
                 ({"name": "momentum", "lr": 0.01, "momentum": 0.8}, {"name": "cosine"})],
    "adam": [({"name": "adam", "lr": 1e-3, "weight_decay": 1e-4}, {"name": "onecycle"}),
             ({"name": "adam", "lr": 3e-3, "betas": [0.8, 0.99]}, None)],
    "adamw": [({"name": "adamw", "lr": 2e-3, "weight_decay": 0.05}, None),
              ({"name": "adamw", "lr": 1e-3}, {"name": "warmup-linear"})],
}


@pytest.mark.parametrize(("name", "path"), [*((n, "batched matmul") for n in CASES),
                                            ("sgd", "vmap"), ("adam", "vmap")])
def test_a_stacked_run_equals_its_solo_run(name: str, path: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "vmap":  # the path of any model that is not Flatten/Linear/activations
        monkeypatch.setattr("trainlab.engine.stack.LinearChain.of", lambda model: None)
    configs = [_config(opt, seed, sched) for seed, (opt, sched) in enumerate(CASES[name])]
    trainer = _StackTrainer(configs, [c.run_id for c in configs], [None, None], NullSink())
    outcomes = trainer.run()
    assert [o.status for o in outcomes] == ["ok", "ok"], outcomes[0].error
    assert outcomes[0].summary["speed"]["stack_step"] == path
    for i, config in enumerate(configs):
        solo, solo_valid = _solo_weights(config, tmp_path / str(i))
        for key, value in solo.items():
            # Float rounding only: the batched matmuls (and torch's fused Adam, which the solo
            # run uses) round differently; 300 steps grow that to ~5e-7 here.
            where = f"{name} run {i} {key}"
            torch.testing.assert_close(trainer.params[key][i].detach(), value, rtol=1e-5,
                                       atol=3e-6, msg=lambda m, w=where: f"{w}: {m}")
        assert outcomes[i].summary["best_valid_loss"] == pytest.approx(solo_valid, rel=1e-5)
        assert outcomes[i].summary["stacked"] == 2


def test_stacked_optimizers_step_as_torch_optim_does() -> None:
    """One model's slice of a stacked step equals torch.optim's single-tensor step, bit for
    bit, with hyperparameters that differ between the models."""
    from trainlab.components.optimizers import OPTIMIZERS

    torch.manual_seed(0)
    for name, specs in {
        "sgd": [{"lr": 0.1, "weight_decay": 0.01}, {"lr": 0.3}],
        "nesterov": [{"lr": 0.1, "momentum": 0.5}, {"lr": 0.2, "weight_decay": 0.1}],
        "adam": [{"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.02, "eps": 1e-6}],
        "adamw": [{"lr": 0.01}, {"lr": 0.02, "weight_decay": 0.1, "betas": [0.5, 0.9]}],
    }.items():
        entry = OPTIMIZERS.get(name)
        built = [entry.spec.model_validate({"name": name, "fused": False, **s}) for s in specs]
        stacked = {"w": torch.randn(2, 5, 3, requires_grad=True)}
        solo = [stacked["w"][i].detach().clone().requires_grad_(True) for i in range(2)]
        optim = StackedOptimizer(built, stacked)
        torch_optims = [entry.build(spec, [p]) for spec, p in zip(built, solo)]
        for _ in range(3):
            grad = torch.randn(2, 5, 3)
            stacked["w"].grad = grad.clone()
            optim.step([spec.lr for spec in built])
            for i, (p, o) in enumerate(zip(solo, torch_optims)):
                p.grad = grad[i].clone()
                o.step()
        for i in range(2):
            assert torch.equal(stacked["w"][i].detach(), solo[i].detach()), name


def test_a_diverging_run_is_masked_out_and_the_others_go_on(tmp_path: Path) -> None:
    configs = [_config({"name": "sgd", "lr": 1e30}, 0, epochs=3),
               _config({"name": "sgd", "lr": 0.1}, 1, epochs=3)]
    sink = NullSink()
    outcomes = train_stack(configs, [c.run_id for c in configs], [None, None], sink)
    assert outcomes[0].status == "diverged" and "nan" in (outcomes[0].error or "")
    assert outcomes[1].status == "ok"
    _, solo_valid = _solo_weights(configs[1], tmp_path)
    assert outcomes[1].summary["best_valid_loss"] == pytest.approx(solo_valid, rel=1e-5)
    stacked = [r.value for r in sink.records if r.key == "perf/stacked"]
    assert stacked == [2.0, 2.0]
    assert not any(r.key.startswith("test/") for r in sink.records
                   if r.run_id == configs[0].run_id)



def test_a_model_vmap_cannot_batch_is_refused_before_any_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trainlab.engine.stack.build_model", lambda spec, info: ReadsAValue())
    configs = [_config({"name": "sgd", "lr": 0.1}, seed, epochs=1) for seed in (0, 1)]
    sink = NullSink()
    with pytest.raises(StackUnsupported, match="vmap cannot batch"):
        train_stack(configs, [c.run_id for c in configs], [None, None], sink)
    assert sink.records == []


def test_the_fast_path_takes_linear_chains_only() -> None:
    from trainlab.components import build_model, load_dataset
    from trainlab.components.models import MODELS
    from trainlab.engine.stack_fast import LinearChain

    config = _config({"name": "sgd"}, 0)
    info = load_dataset(config.data, config.model).info

    def chain(**spec: Any) -> LinearChain | None:
        entry = MODELS.get(spec["name"])
        return LinearChain.of(build_model(entry.spec.model_validate(spec), info))

    for activation in ("relu", "gelu", "tanh", "sigmoid", "leaky_relu"):
        assert chain(name="mlp", hidden_dim=8, layers=2, activation=activation) is not None
    assert chain(name="linear", bias=False) is not None
    assert chain(name="mlp", hidden_dim=8, batch_norm=True) is None  # buffers: vmap
    assert LinearChain.of(ReadsAValue()) is None


def test_the_fast_path_gives_each_models_own_outputs_and_gradients() -> None:
    from torch.func import stack_module_state

    from trainlab.engine.stack_fast import LinearChain, batched_loss

    torch.manual_seed(0)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.GELU(), nn.Linear(5, 3))
              for _ in range(3)]
    params = {k: v.detach().requires_grad_(True)
              for k, v in stack_module_state(models)[0].items()}
    x, y = torch.randn(3, 4, 3, 4), torch.randint(0, 3, (3, 4))
    chain = LinearChain.of(models[0])
    assert chain is not None
    losses = batched_loss("classification", chain.forward(params, x), y)
    assert losses is not None
    losses.sum().backward()
    for i, model in enumerate(models):
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        loss.backward()
        torch.testing.assert_close(losses[i], loss)
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[i], p.grad)  # type: ignore[index]


def _tensor_bytes(configs: list[RunConfig]) -> int:
    from trainlab.components import build_model, load_dataset

    info = load_dataset(configs[0].data, configs[0].model).info
    model = build_model(configs[0].model, info)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_each_run_of_a_stack_records_the_stacks_memory_peaks() -> None:
    """The table's memory cells of a stacked run are the stack's, and its summary says so."""
    configs = [_config({"name": "adam", "lr": 1e-3}, seed, epochs=2) for seed in range(3)]
    sink = NullSink()
    outcomes = train_stack(configs, [c.run_id for c in configs], [None] * 3, sink)
    weights = _tensor_bytes(configs)
    for config, outcome in zip(configs, outcomes):
        summary = outcome.summary
        assert outcome.status == "ok", outcome.error
        assert summary["memory_of"] == "stack of 3"
        assert "memory" in summary["notes"][0]
        # Three models' weights, gradients and two Adam moments at least (and the data).
        assert summary["tensor_peak_bytes"] > 4 * 3 * weights
        assert summary["peak_memory_bytes"] > summary["tensor_peak_bytes"]  # RSS on CPU
        assert summary["warmup_time"] > 0
        own = {r.key: r.value for r in sink.records if r.run_id == config.run_id}
        assert own["memory/tensor_peak_bytes"] == summary["tensor_peak_bytes"]
        assert own["memory/rss_peak_bytes"] > 0
        steps = [r.value for r in sink.records
                 if r.run_id == config.run_id and r.key == "time/step"]
        assert steps and all(s > 0 for s in steps)


@pytest.mark.parametrize(("path", "log_every"), [("batched matmul", 7), ("vmap", 7),
                                                 ("batched matmul", 1)])
def test_each_stacked_run_records_its_own_grad_norm_and_trainable_share(
        path: str, log_every: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stacked run's grad norms at its log points (the warm-up step's included) are its
    solo run's, and its summary has the solo run's trainable share and grad norm median."""
    if path == "vmap":
        monkeypatch.setattr("trainlab.engine.stack.LinearChain.of", lambda model: None)
    # Log points at steps 7, 14, ..., 56 of 60 (mid-epoch, across the epoch boundary), or at
    # every step (the warm-up step's included).
    configs = [_config(opt, seed, sched, epochs=2, log_every=log_every)
               for seed, (opt, sched) in enumerate(CASES["sgd"])]
    sink = NullSink()
    outcomes = train_stack(configs, [c.run_id for c in configs], [None] * 2, sink)
    for i, (config, outcome) in enumerate(zip(configs, outcomes)):
        assert outcome.status == "ok", outcome.error
        solo_sink = NullSink()
        solo = train(config, run_dir=tmp_path / str(i), sink=solo_sink)
        assert solo.status == "ok", solo.error

        def norms(records: Any, run_id: str) -> dict[int, float]:
            return {r.step: r.value for r in records
                    if r.run_id == run_id and r.key == "grad_norm"}

        mine, alone = norms(sink.records, config.run_id), norms(solo_sink.records, solo.run_id)
        assert sorted(mine) == sorted(alone) == list(range(log_every, 61, log_every))
        for step, value in alone.items():
            assert mine[step] == pytest.approx(value, rel=1e-5), step
        for key in ("params_total", "params_trainable", "params_trainable_pct",
                    "grad_norm_median"):
            assert outcome.summary[key] == pytest.approx(solo.summary[key], rel=1e-5), key


@pytest.mark.parametrize(("error", "oom"), [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 8 GB"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_errors_are_known(error: BaseException, oom: bool) -> None:
    from trainlab.engine.stack import is_out_of_memory

    assert is_out_of_memory(error) is oom


def _oom_above(monkeypatch: pytest.MonkeyPatch, k: int,
               error: Exception | None = None) -> list[int]:
    """Make the first training step of any stack of more than ``k`` runs fail as out of
    memory; the sizes of the stacks that met it."""
    from trainlab.engine.stack import _StackTrainer as trainer

    warm = trainer._warm_step
    met: list[int] = []

    def step(self: Any, *args: Any) -> Any:
        if len(self.members) > k:
            met.append(len(self.members))
            raise error or RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                        "tried to allocate 123456789 bytes")
        return warm(self, *args)

    monkeypatch.setattr(trainer, "_warm_step", step)
    return met


def test_an_out_of_memory_error_splits_the_stack_down_to_runs_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    configs = [_config({"name": "sgd", "lr": lr}, seed, epochs=2)
               for lr, seed in ((0.1, 0), (0.05, 1), (0.1, 2))]
    ids = [c.run_id for c in configs]
    whole = train_stack(configs, ids, [None] * 3, NullSink())
    met = _oom_above(monkeypatch, 1)
    sink = NullSink()
    outcomes = train_stack(configs, ids, [None] * 3, sink)
    assert met == [3, 2]  # 3 -> 2 + 1, then 2 -> 1 + 1
    assert [o.run_id for o in outcomes] == ids
    assert [o.status for o in outcomes] == ["ok"] * 3
    splits = [o.summary["stack_split"] for o in outcomes]
    assert [len(s) for s in splits] == [2, 2, 1]
    assert "a stack of 3 runs ran out of memory" in splits[0][0]
    assert "can't allocate memory" in splits[0][0] and "stacks of 2 and 1" in splits[0][0]
    assert "a stack of 2 runs" in splits[0][1]
    assert [o.summary["stacked"] for o in outcomes] == [1, 1, 1]
    for alone, together in zip(outcomes, whole):  # the same training, split or not
        assert alone.summary["best_valid_loss"] == pytest.approx(
            together.summary["best_valid_loss"], rel=1e-5)
    # Each run's records once, from the stack that trained it (an earlier attempt rewound).
    keys = [(r.run_id, r.key, r.step) for r in sink.records]
    assert len(keys) == len(set(keys))
    assert {r.value for r in sink.records if r.key == "perf/stacked"} == {1.0}


def test_a_split_hands_runs_left_alone_to_the_solo_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    configs = [_config({"name": "sgd", "lr": 0.1}, seed, epochs=1) for seed in range(3)]
    met = _oom_above(monkeypatch, 1, torch.cuda.OutOfMemoryError("CUDA out of memory"))
    alone: list[int] = []

    def solo(i: int) -> RunOutcome:
        alone.append(i)
        return RunOutcome(configs[i].run_id, "ok", None, {"solo": True})

    outcomes = train_stack(configs, [c.run_id for c in configs], [None] * 3, NullSink(), solo)
    assert met == [3, 2] and sorted(alone) == [0, 1, 2]
    assert all(o.summary["solo"] and o.status == "ok" for o in outcomes)
    assert "OutOfMemoryError" in outcomes[0].summary["stack_split"][0]


def test_a_run_alone_that_runs_out_of_memory_is_oom_and_other_errors_fail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    configs = [_config({"name": "sgd", "lr": 0.1}, seed, epochs=1) for seed in range(2)]
    _oom_above(monkeypatch, 0)
    outcomes = train_stack(configs, [c.run_id for c in configs], [None] * 2, NullSink())
    assert [o.status for o in outcomes] == ["oom", "oom"]
    assert "can't allocate memory" in (outcomes[0].error or "")
    monkeypatch.undo()
    _oom_above(monkeypatch, 1, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    outcomes = train_stack(configs, [c.run_id for c in configs], [None] * 2, NullSink())
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert "stack_split" not in outcomes[0].summary
