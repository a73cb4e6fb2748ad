"""Task losses and metrics: ignored LM targets, F1 and Matthews correlation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score as sk_f1
from sklearn.metrics import matthews_corrcoef as sk_mcc

from trainlab.components import load_dataset
from trainlab.config.schema import resolve_run
from trainlab.engine import train
from trainlab.engine.tasks import (
    IGNORE_INDEX,
    TASKS,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
)
from trainlab.errors import ConfigError
from trainlab.hooks import Callback, RunState
from trainlab.records import NullSink


def test_lm_ignores_padding_in_loss_weight_and_perplexity() -> None:
    task = TASKS["lm"]
    torch.manual_seed(0)
    out = torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[0, 3:] = IGNORE_INDEX
    y[1, 4] = IGNORE_INDEX
    real = y != IGNORE_INDEX
    assert int(task.weight(y)) == int(real.sum()) == 7
    nll = -F.log_softmax(out, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    loss_sum, _ = task.sums(out, y)
    assert float(loss_sum) == pytest.approx(float(nll[real].sum()), rel=1e-6)
    assert float(task.loss(out, y)) == pytest.approx(float(nll[real].mean()), rel=1e-6)
    result = task.finalize(float(loss_sum), 0.0, float(task.weight(y)))
    assert result["perplexity"] == pytest.approx(math.exp(float(nll[real].mean())), rel=1e-6)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_f1_and_mcc_match_scikit_learn(classes: int) -> None:
    rng = np.random.default_rng(classes)
    for _ in range(20):
        y = rng.integers(0, classes, 50)
        p = np.where(rng.random(50) < 0.6, y, rng.integers(0, classes, 50))
        matrix = confusion_matrix(torch.from_numpy(y), torch.from_numpy(p), classes).tolist()
        average = "binary" if classes == 2 else "macro"
        assert f1_score(matrix) == pytest.approx(sk_f1(y, p, average=average, zero_division=0))
        assert matthews_corrcoef(matrix) == pytest.approx(sk_mcc(y, p))


def test_metrics_of_degenerate_predictions_are_zero() -> None:
    y = torch.tensor([0, 1, 1, 0])
    matrix = confusion_matrix(y, torch.zeros(4, dtype=torch.long), 2).tolist()
    assert matthews_corrcoef(matrix) == 0.0 and f1_score(matrix) == 0.0


RAW: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 240, "shape": [6], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 16},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 3, "log_every": 4},
}


def test_classification_runs_record_f1_and_mcc_and_can_monitor_them() -> None:
    sink = NullSink()
    raw = {**RAW, "train": {**RAW["train"], "monitor": "valid/mcc"}}
    outcome = train(resolve_run(raw), sink=sink)
    assert outcome.status == "ok", outcome.error
    keys = {r.key for r in sink.records}
    assert {"valid/f1", "valid/mcc", "test/f1", "test/mcc"} <= keys
    mccs = [r.value for r in sink.records if r.key == "valid/mcc"]
    assert outcome.summary["best_monitor"] == "valid/mcc"
    assert outcome.summary["best_value"] == max(mccs)  # higher is better
    assert {"test_f1", "test_mcc", "best_valid_f1", "grad_norm_median"} <= set(outcome.summary)


def test_lm_runs_cannot_monitor_classification_metrics() -> None:
    from trainlab.config import expand
    from trainlab.config.load import validate_sweep
    from trainlab.plan import check_runs

    sweep = validate_sweep({"name": "lm", "data": {"name": "pydoc-lm", "seq_len": 8,
                                                   "limit": 32},
                            "model": {"name": "lstm", "embed_dim": 8, "hidden_dim": 8},
                            "train": {"monitor": "valid/f1"}}, "test")
    with pytest.raises(ConfigError, match=r"'valid/f1' is not measured on lm data; use one of "
                                          r"valid/loss, valid/perplexity"):
        check_runs(sweep, expand(sweep))


@pytest.mark.parametrize("ignored", ["none", "some", "all"])
def test_lm_cross_entropy_equals_torch_in_loss_and_gradient(ignored: str) -> None:
    from trainlab.engine.tasks import IGNORE_INDEX, lm_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(64, 50, generator=gen)).requires_grad_()
    target = torch.randint(0, 50, (64,), generator=gen)
    if ignored == "some":
        target[::5] = IGNORE_INDEX
    elif ignored == "all":
        target[:] = IGNORE_INDEX
    want = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    (want_grad,) = torch.autograd.grad(want, logits)
    got = lm_cross_entropy(logits, target)
    assert got.grad_fn is not None and "LMCrossEntropy" in type(got.grad_fn).__name__
    (got_grad,) = torch.autograd.grad(got * 2.0, logits)  # a non-unit upstream gradient
    if ignored == "all":
        assert got.isnan() and want.isnan()
        assert torch.equal(got_grad, torch.zeros_like(got_grad))
    else:
        assert torch.allclose(got, want, rtol=1e-6, atol=0)
        assert torch.allclose(got_grad, 2.0 * want_grad, rtol=1e-5, atol=1e-8)
    with torch.no_grad():  # evaluation (no gradient) takes torch's own kernel
        assert lm_cross_entropy(logits, target).grad_fn is None
        assert torch.allclose(lm_cross_entropy(logits, target), want.detach(), equal_nan=True)


def test_lm_cross_entropy_under_bf16_autocast_matches_torch() -> None:
    from trainlab.engine.tasks import lm_cross_entropy

    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(16, 40, generator=gen, requires_grad=True)
    x = torch.randn(32, 16, generator=gen)
    target = torch.randint(0, 40, (32,), generator=gen)
    grads = []
    for fn in (F.cross_entropy, lm_cross_entropy):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = x @ weight  # bf16 under autocast
            assert logits.dtype == torch.bfloat16
            loss = fn(logits, target)
        assert loss.dtype == torch.float32
        grads.append(torch.autograd.grad(loss, weight)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-2, atol=1e-4)


def test_lm_cross_entropy_keeps_extreme_logits_finite() -> None:
    # Targets far below the row's maximum: the log-sum-exp must not come from a probability
    # that underflows (the loss would read inf where torch's is finite).
    from trainlab.engine.tasks import lm_cross_entropy

    logits = torch.zeros(4, 30)
    logits[:, 0] = 200.0
    logits[1, 5] = -300.0
    logits.requires_grad_()
    target = torch.tensor([3, 5, 0, 29])
    want = F.cross_entropy(logits, target)
    got = lm_cross_entropy(logits, target)
    assert torch.isfinite(got) and torch.allclose(got, want, rtol=1e-6)
    (want_grad,) = torch.autograd.grad(want, logits)
    (got_grad,) = torch.autograd.grad(lm_cross_entropy(logits, target), logits)
    assert torch.allclose(got_grad, want_grad, atol=1e-7)


def test_lm_task_loss_is_the_lean_cross_entropy_on_3d_logits() -> None:
    gen = torch.Generator().manual_seed(2)
    out = torch.randn(3, 7, 20, generator=gen, requires_grad=True)
    y = torch.randint(0, 20, (3, 7), generator=gen)
    y[0, :2] = IGNORE_INDEX
    loss = TASKS["lm"].loss(out, y)
    assert "LMCrossEntropy" in type(loss.grad_fn).__name__
    want = F.cross_entropy(out.reshape(-1, 20), y.reshape(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, want, rtol=1e-6)
    (g1,) = torch.autograd.grad(loss, out)
    (g2,) = torch.autograd.grad(want, out)
    assert torch.allclose(g1, g2, atol=1e-8)


class _Reference(Callback):
    """Valid metrics recomputed by hand (one forward, scikit-learn) at every evaluation."""

    def __init__(self, valid: Any) -> None:
        self.valid, self.seen, self.reference = valid, [], []

    def on_eval_end(self, state: RunState, values: dict[str, float]) -> None:
        model = state.model
        model.eval()
        with torch.no_grad():
            out = model(self.valid.inputs)
        model.train()
        y, pred = self.valid.targets.numpy(), out.argmax(-1).numpy()
        self.seen.append({k: values[f"valid/{k}"] for k in ("loss", "accuracy", "f1", "mcc")})
        self.reference.append({"loss": F.cross_entropy(out, self.valid.targets).item(),
                               "accuracy": float((pred == y).mean()),
                               "f1": float(sk_f1(y, pred, average="macro")),
                               "mcc": float(sk_mcc(y, pred))})


@pytest.mark.parametrize("eval_batch_size", [None, 7])  # one batch (the split fits) or many
def test_validation_metrics_equal_a_hand_computed_reference(eval_batch_size: int | None) -> None:
    """The device-side confusion matrix (accuracy as its trace) gives the same numbers as one
    plain forward over the split and scikit-learn, however the split is batched."""
    raw = {**RAW, "data": {**RAW["data"], "eval_batch_size": eval_batch_size}}
    config = resolve_run(raw)
    reference = _Reference(load_dataset(config.data, config.model).valid)
    outcome = train(config, callbacks=[reference])
    assert outcome.status == "ok", outcome.error
    assert len(reference.seen) == RAW["train"]["epochs"]
    for seen, expected in zip(reference.seen, reference.reference):
        assert seen["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        for key in ("accuracy", "f1", "mcc"):
            assert seen[key] == pytest.approx(expected[key], abs=1e-12), key
