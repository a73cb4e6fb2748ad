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
