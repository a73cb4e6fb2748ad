"""Every registry entry builds and takes a training step; schedules follow their formulas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.components.own import OWN_SPECS
from trainlab.components import (
    DATASETS,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    ScheduleContext,
    build_model,
    build_optimizer,
    build_schedule,
    count_parameters,
    load_dataset,
)
from trainlab.config.schema import resolve_component
from trainlab.engine.tasks import TASKS
from trainlab.errors import ConfigError


def _data(**raw):
    return load_dataset(resolve_component("data", raw))


def _step(model: torch.nn.Module, data, optimizer_name: str = "adam") -> float:
    task = TASKS[data.info.task]
    spec = {"name": optimizer_name, "lr": 1e-3, **OWN_SPECS["optimizer"].get(optimizer_name, {})}
    opt = build_optimizer(resolve_component("optimizer", spec), model.parameters())
    x, y = data.train.inputs[:4], data.train.targets[:4]
    before = [p.detach().clone() for p in model.parameters()]
    loss = task.loss(model(x), y)
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    return float(loss.detach())


# --- datasets ----------------------------------------------------------------------------------


def test_digits_splits_are_deterministic_and_disjoint() -> None:
    data = _data(name="digits")
    assert data.info.task == "classification" and data.info.num_outputs == 10
    assert data.info.input_shape == (1, 8, 8)
    assert len(data.train) + len(data.valid) + len(data.test) == 1797
    assert float(data.train.inputs.min()) >= 0.0 and float(data.train.inputs.max()) <= 1.0
    again = DATASETS.get("digits").build(resolve_component("data", {"name": "digits"}))
    assert torch.equal(again.valid.inputs, data.valid.inputs)


def test_splits_say_their_sizes_and_sources() -> None:
    """What the run's summary records as ``splits`` (issue 21): which split is valid and which
    test, how big, and where each came from; data.limit is named on the train row."""
    from trainlab.components.datasets import split_summary

    splits = split_summary(_data(name="digits", limit=64).info)
    assert {k: v["size"] for k, v in splits.items()} == {"train": 64, "valid": 270, "test": 270}
    assert splits["valid"]["source"] == "15% of the 1797 examples held out (split_seed 0)"
    assert splits["train"]["source"] == ("the rest of the 1797 examples; the first 64 of 1257 "
                                         "(data.limit)")
    assert splits["test"]["unit"] == "examples"
    lm = split_summary(_data(name="pydoc-lm", seq_len=16).info)
    assert lm["train"]["unit"] == "sequences of 16 tokens"
    assert lm["valid"]["source"].startswith("10% of the tokens, whole paragraphs")


def test_digits_are_read_as_scikit_learn_loads_them_without_importing_it() -> None:
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from trainlab.components.datasets import _digits_arrays

    data, target = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(data, bunch.data) and np.array_equal(target, bunch.target)
    code = ("import sys; from trainlab.components.datasets import _digits_arrays; "
            "_digits_arrays(); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # its 1.5 s import is not paid


def test_limit_caps_training_examples() -> None:
    data = _data(name="digits", limit=100)
    assert len(data.train) == 100 and data.info.n_train == 100


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_synthetic(task: str) -> None:
    data = _data(name="synthetic", task=task, n_samples=100, shape=[2, 3], n_classes=4)
    assert data.train.inputs.shape[1:] == (2, 3)
    assert data.info.task == task
    assert data.info.num_outputs == (4 if task == "classification" else 1)


def test_pydoc_lm_vocabulary_and_shift() -> None:
    data = _data(name="pydoc-lm", seq_len=16)
    assert data.info.task == "lm" and data.vocab is not None
    assert data.vocab[0] == "<unk>" and data.info.num_outputs == len(data.vocab) > 1000
    # Targets are the inputs shifted by one token.
    assert torch.equal(data.train.inputs[0, 1:], data.train.targets[0, :-1])
    assert len(data.train) > 5 * len(data.valid) > 0 and len(data.test) > 0
    assert data.info.tokens_per_example == 16


def test_npz_both_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 3, 50)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    data = _data(name="npz", path=str(tmp_path / "xy.npz"))
    assert data.info.task == "classification" and len(data.train) == 34
    np.savez(tmp_path / "split.npz", x_train=x[:30], y_train=y[:30].astype(np.float32),
             x_valid=x[30:40], y_valid=y[30:40].astype(np.float32), x_test=x[40:],
             y_test=y[40:].astype(np.float32) + 0.5)
    data = _data(name="npz", path=str(tmp_path / "split.npz"))
    assert data.info.task == "regression" and len(data.valid) == 10
    np.savez(tmp_path / "bad.npz", a=x)
    with pytest.raises(ConfigError, match="expected x and y"):
        _data(name="npz", path=str(tmp_path / "bad.npz"))
    with pytest.raises(ConfigError, match="no such file"):
        _data(name="npz", path=str(tmp_path / "missing.npz"))


def test_csv(tmp_path: Path) -> None:
    rows = ["a,b,label"] + [f"{i},{i * 2},{'yes' if i % 2 else 'no'}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    data = _data(name="csv", path=str(tmp_path / "d.csv"), task="classification")
    assert data.info.num_outputs == 2 and data.info.input_shape == (2,)
    with pytest.raises(ConfigError, match="column 'nope'"):
        _data(name="csv", path=str(tmp_path / "d.csv"), target="nope")


def test_a_garbage_npz_names_the_file(tmp_path: Path) -> None:
    """A zip header then random bytes: was zipfile.BadZipFile with a traceback."""
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(2000))
    with pytest.raises(ConfigError, match=r"`data.path`: '.*garbage.npz' could not be read as "
                                          r"a NumPy .npz file \(BadZipFile"):
        _data(name="npz", path=str(bad))


@pytest.mark.parametrize("array", ["x", "y"])
def test_nan_or_inf_in_an_npz_is_refused_before_training(tmp_path: Path, array: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(50, 4)).astype(np.float32), "y": rng.normal(size=50)}
    corner = (0,) * (arrays[array].ndim - 1)
    arrays[array][(7, *corner)] = np.nan
    arrays[array][(12, *corner)] = np.inf
    np.savez(tmp_path / "holes.npz", **arrays)
    with pytest.raises(ConfigError, match=rf"array '{array}' has 2 NaN or infinite value\(s\), "
                                          r"in rows 7, 12"):
        _data(name="npz", path=str(tmp_path / "holes.npz"))


def test_csv_missing_cells_name_the_column_and_lines(tmp_path: Path) -> None:
    rows = ["a,b,label"] + [f"{i},{i * 2},{'yes' if i % 2 else 'no'}" for i in range(40)]
    rows[3] = "nan,6,yes"  # line 4 of the file
    rows[5] = "4,,no"  # line 6
    rows[9] = "8,16,"  # line 10: a text target with a hole (pandas' string dtype)
    rows[11] = "10,inf,no"  # line 12
    (tmp_path / "d.csv").write_text("\n".join(rows))
    with pytest.raises(ConfigError) as info:
        _data(name="csv", path=str(tmp_path / "d.csv"))
    text = str(info.value)
    assert "column 'a' on line(s) 4; column 'b' on line(s) 6, 12; column 'label' on line(s) 10" \
        in text
    assert "dtype" not in text
    (tmp_path / "n.csv").write_text("a,b,y\n1,2,0.5\n3,4,nan\n5,6,1.5\n")
    with pytest.raises(ConfigError, match=r"column 'y' on line\(s\) 3"):
        _data(name="csv", path=str(tmp_path / "n.csv"))


def test_csv_text_labels_are_classes_even_with_task_auto(tmp_path: Path) -> None:
    rows = ["a,b,label"] + [f"{i},{i * 2},{'yes' if i % 2 else 'no'}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    assert _data(name="csv", path=str(tmp_path / "d.csv")).info.task == "classification"
    with pytest.raises(ConfigError, match="regression needs a numeric target"):
        _data(name="csv", path=str(tmp_path / "d.csv"), task="regression")


# --- models ------------------------------------------------------------------------------------

DIGITS = {"name": "digits", "limit": 64}
LM = {"name": "pydoc-lm", "seq_len": 8, "limit": 64}
MODEL_CASES = [
    ({"name": "linear"}, DIGITS),
    ({"name": "linear", "bias": False}, DIGITS),
    ({"name": "mlp", "hidden": [16, 8], "dropout": 0.1, "batch_norm": True}, DIGITS),
    ({"name": "cnn", "channels": [4, 8], "fc": [16]}, DIGITS),
    ({"name": "cnn", "channels": [4], "padding": "valid", "kernel_size": 3, "pool": "avg"},
     DIGITS),
    ({"name": "lstm", "embed_dim": 16, "hidden_dim": 16, "layers": 2, "tie_weights": True},
     LM),
    ({"name": "gpt", "embed_dim": 16, "heads": 2, "layers": 2}, LM),
    ({"name": "gpt", "embed_dim": 16, "heads": 4, "norm": "pre", "tie_weights": False}, LM),
    ({"name": "python", "target": "tests.unit.components.own:classifier"}, DIGITS),
    ({"name": "python", "target": "tests.unit.components.own:LanguageModel"}, LM),
]


@pytest.mark.parametrize(("spec", "data"), MODEL_CASES, ids=lambda v: str(v.get("name")))
def test_every_model_builds_and_steps(spec: dict, data: dict) -> None:
    dataset = _data(**data)
    torch.manual_seed(0)
    model = build_model(resolve_component("model", spec), dataset.info)
    out = model(dataset.train.inputs[:2])
    if dataset.info.task == "lm":
        assert out.shape == (2, 8, dataset.info.num_outputs)
    else:
        assert out.shape == (2, 10)
    assert math.isfinite(_step(model, dataset))
    total, trainable = count_parameters(model)
    assert total == trainable > 0


def test_every_model_is_covered() -> None:
    # The transformers models (hf, minilm) are built and stepped in components/test_hf.py.
    assert {c[0]["name"] for c in MODEL_CASES} == set(MODELS.names()) - {"hf", "minilm"}


def test_linear_is_one_affine_map() -> None:
    info = _data(**DIGITS).info
    model = build_model(resolve_component("model", {"name": "linear"}), info)
    assert count_parameters(model)[0] == 64 * 10 + 10
    x = torch.rand(3, 1, 8, 8)
    # Affine: f(a + b) - f(b) = f(a) - f(0).
    y = torch.rand(3, 1, 8, 8)
    zero = torch.zeros(3, 1, 8, 8)
    assert torch.allclose(model(x + y) - model(y), model(x) - model(zero), atol=1e-5)
    no_bias = build_model(resolve_component("model", {"name": "linear", "bias": False}), info)
    assert count_parameters(no_bias)[0] == 64 * 10 and torch.equal(no_bias(zero),
                                                                   torch.zeros(3, 10))


def test_tied_weights_are_counted_once() -> None:
    info = _data(**LM).info
    tied = build_model(resolve_component("model", {"name": "gpt", "embed_dim": 16}), info)
    untied = build_model(resolve_component("model", {"name": "gpt", "embed_dim": 16,
                                                     "tie_weights": False}), info)
    assert count_parameters(untied)[0] - count_parameters(tied)[0] == 16 * info.num_outputs


def test_gpt_is_causal() -> None:
    info = _data(**LM).info
    model = build_model(resolve_component("model", {"name": "gpt", "embed_dim": 16,
                                                    "dropout": 0.0}), info).eval()
    x = torch.randint(0, info.num_outputs, (1, 8))
    y = x.clone()
    y[0, 5] = (y[0, 5] + 1) % info.num_outputs
    assert torch.allclose(model(x)[0, :5], model(y)[0, :5], atol=1e-6)
    assert not torch.allclose(model(x)[0, 5:], model(y)[0, 5:])


@pytest.mark.parametrize(("spec", "data", "message"), [
    ({"name": "lstm"}, DIGITS, "works on lm data"),
    ({"name": "mlp"}, LM, "works on classification or regression"),
    ({"name": "linear"}, LM, "works on classification or regression"),
    ({"name": "cnn"}, {"name": "synthetic", "shape": [8]}, "image data"),
    ({"name": "cnn", "channels": [4, 4, 4, 4], "padding": "valid"}, DIGITS, "shrink"),
    ({"name": "gpt", "embed_dim": 10, "heads": 4}, LM, "divisible by heads"),
    ({"name": "gpt", "context": 4}, LM, "model.context"),
    ({"name": "lstm", "embed_dim": 8, "hidden_dim": 16, "tie_weights": True}, LM,
     "embed_dim == hidden_dim"),
])
def test_model_data_mismatches_are_config_errors(spec: dict, data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(resolve_component("model", spec), _data(**data).info)


# --- optimizers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_steps(name: str) -> None:
    dataset = _data(**DIGITS)
    model = build_model(resolve_component("model", {"name": "mlp"}), dataset.info)
    assert math.isfinite(_step(model, dataset, name))


def test_optimizer_options_reach_torch() -> None:
    param = [torch.nn.Parameter(torch.zeros(2))]
    nesterov = build_optimizer(resolve_component("optimizer", {"name": "nesterov", "lr": 0.1}),
                               param)
    assert nesterov.defaults["nesterov"] and nesterov.defaults["momentum"] == 0.9
    adamw = build_optimizer(resolve_component("optimizer", {"name": "adamw"}), param)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    sgd = build_optimizer(resolve_component("optimizer", {"name": "sgd", "weight_decay": 1e-3}),
                          param)
    assert sgd.defaults["momentum"] == 0.0 and sgd.defaults["weight_decay"] == 1e-3


# --- schedules ---------------------------------------------------------------------------------


def _lrs(spec: dict, epochs: int = 4, steps: int = 10, lr: float = 1.0) -> list[float]:
    """The LR used at each optimizer step of a run."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = build_schedule(resolve_component("schedule", spec), opt, ScheduleContext(epochs, steps))
    out = []
    for _ in range(epochs):
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.after_step()
        sched.after_eval(1.0)
        sched.after_epoch()
    return out


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_runs_a_whole_run(name: str) -> None:
    spec = {"name": name, **({"milestones": [2]} if name == "multistep" else {}),
            **OWN_SPECS["schedule"].get(name, {})}
    lrs = _lrs(spec)
    assert len(lrs) == 40 and all(math.isfinite(v) and v >= 0 for v in lrs)


def test_step_schedule_per_epoch_and_per_step() -> None:
    lrs = _lrs({"name": "step", "step_size": 2, "gamma": 0.5})
    assert lrs[0] == lrs[19] == 1.0 and lrs[20] == lrs[39] == 0.5
    lrs = _lrs({"name": "step", "step_size": 5, "gamma": 0.1, "interval": "step"})
    assert lrs[4] == 1.0 and lrs[5] == pytest.approx(0.1)


def test_slanted_triangular_matches_ulmfit_formula() -> None:
    lrs = _lrs({"name": "slanted-triangular", "cut_frac": 0.1, "ratio": 32}, epochs=10)
    total, cut = 100, 10
    for t in (0, 5, 10, 50, 99):
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / 0.1 - 1))
        assert lrs[t] == pytest.approx((1 + p * 31) / 32)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == cut
    assert total == len(lrs)


def test_cyclic_is_one_triangle_by_default() -> None:
    lrs = _lrs({"name": "cyclic", "ratio": 10})
    assert lrs[0] == pytest.approx(0.1) and lrs[20] == pytest.approx(1.0)
    assert lrs[39] < lrs[30] < lrs[20]


def test_warmup_linear_and_onecycle_shapes() -> None:
    lrs = _lrs({"name": "warmup-linear", "warmup_fraction": 0.25})
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] < 0.05
    lrs = _lrs({"name": "onecycle"})
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0, rel=1e-3)


def test_plateau_reduces_after_patience() -> None:
    lrs = _lrs({"name": "plateau", "patience": 1, "factor": 0.5})
    # valid loss is constant (1.0): first eval sets best, two bad evals exceed patience 1
    assert lrs[0] == 1.0 and lrs[-1] < 1.0
