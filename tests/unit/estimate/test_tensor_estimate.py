"""The estimate predicts the run's own memory (memory/tensor_peak_bytes) as the run measures
it: the calibration probe measures a step the same way, the flops method adds up its parts."""

from __future__ import annotations

from typing import Any

import pytest

from trainlab.config.schema import resolve_run
from trainlab.engine import train
from trainlab.estimate import estimate_run

DIGITS: dict[str, Any] = {"data": {"name": "digits", "batch_size": 32},
                          "model": {"name": "mlp", "hidden_dim": 512},
                          "optimizer": {"name": "adam", "lr": 1e-3},
                          "train": {"epochs": 1, "device": "cpu"}}
LSTM: dict[str, Any] = {"data": {"name": "pydoc-lm", "seq_len": 32, "batch_size": 8, "limit": 200},
                        "model": {"name": "lstm", "layers": 1, "embed_dim": 32, "hidden_dim": 64},
                        "optimizer": {"name": "sgd", "lr": 0.1},
                        "train": {"epochs": 1, "device": "cpu"}}


@pytest.mark.parametrize("raw", [DIGITS, LSTM], ids=["mlp", "lstm"])
def test_predicted_tensor_peak_is_the_measured_one(raw: dict[str, Any]) -> None:
    config = resolve_run(raw)
    measured = train(config).summary["tensor_peak_bytes"]
    probed = estimate_run(config)
    assert probed.method == "probe"
    assert probed.tensor_peak_bytes is not None
    assert probed.tensor_peak_bytes == pytest.approx(measured, rel=0.01)
    assert probed.tensor_peak_bytes < probed.peak_bytes / 20  # far below the process's RSS
    assert probed.to_dict()["tensor_peak_bytes"] == probed.tensor_peak_bytes
    # From the parts (a meta-device trace): rougher; the trace misses a third of an LSTM's.
    added = estimate_run(config, calibrate=False).tensor_peak_bytes
    assert added == pytest.approx(measured, rel=0.05 if raw is DIGITS else 0.4)
