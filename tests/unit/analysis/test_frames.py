"""Tidy frames: per-epoch values, runs without epochs, metric choice, sweep choice."""

from __future__ import annotations

import pandas as pd
import pytest

from trainlab.analysis.frames import build_frames, epoch_frame, format_indices, load_sweep
from trainlab.errors import ConfigError


def _long(rows):
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "epoch", "time", "value"])


def test_epoch_frame_keeps_the_last_value_of_each_epoch_and_drops_unfinished_epochs() -> None:
    long = _long([
        ("r", "params/total", 0, 0, 0.0, 10.0),
        ("r", "valid/loss", 5, 1, 1.0, 3.0),  # validated mid-epoch (eval_every)...
        ("r", "valid/loss", 10, 1, 2.0, 2.0),  # ...and at the epoch's end: this one counts
        ("r", "train/loss", 10, 1, 2.1, 2.5),
        ("r", "time/train", 10, 1, 2.1, 1.5),
        ("r", "train/step_loss", 10, 1, 2.1, 9.0),  # a step-level key: not in the frame
        ("r", "valid/loss", 15, 2, 3.0, 1.8),  # epoch 2 was interrupted: no time/train
        ("r", "test/loss", 20, 2, 4.0, 1.0),
    ])
    frame = epoch_frame(long)
    assert list(frame["epoch"]) == [1]
    row = frame.iloc[0]
    assert (row["valid/loss"], row["train/loss"], row["time/train"], row["wall"]) == (
        2.0, 2.5, 1.5, 2.1)
    assert "train/step_loss" not in frame.columns and "test/loss" not in frame.columns
    assert "params/total" not in frame.columns


def test_runs_without_epochs_are_skipped_and_an_empty_sweep_is_an_error() -> None:
    runs = pd.DataFrame([
        {"run_id": "a", "index": 1, "status": "ok", "config": {"model": {"name": "mlp"}},
         "error": None, "env": {}, "summary": {"best_epoch": 1, "best_valid_loss": 2.0}},
        {"run_id": "b", "index": 2, "status": "failed", "config": {"model": {"name": "cnn"}},
         "error": "Traceback...\nValueError: bad shape", "env": {}, "summary": {}},
    ])
    long = _long([("a", "valid/loss", 1, 1, 1.0, 2.0), ("a", "train/loss", 1, 1, 1.0, 2.5),
                  ("a", "time/train", 1, 1, 1.0, 0.5)])
    frames = build_frames("s", ["model.name"], runs, long)
    assert list(frames.runs["run_id"]) == ["a"]
    assert frames.skipped == [{"index": 2, "run_id": "b", "status": "failed",
                               "error": "ValueError: bad shape"}]
    assert frames.metric.name == "loss" and frames.metrics == ["loss"]
    row = frames.runs.iloc[0]
    assert (row["model.name"], row["best_epoch"], row["valid_loss"], row["train_loss"]) == (
        "mlp", 1, 2.0, 2.5)
    with pytest.raises(ConfigError, match=r"no run with recorded epochs yet \(run statuses: "
                                          r"failed\)"):
        build_frames("s", ["model.name"], runs[runs["run_id"] == "b"], long.iloc[0:0])


def test_metric_choice(lm_store) -> None:
    assert load_sweep(lm_store, "lm").metric.name == "perplexity"
    assert load_sweep(lm_store, "lm", "loss").metric.name == "loss"
    with pytest.raises(ConfigError, match=r"did you mean 'perplexity'\? Recorded: perplexity, "
                                          r"loss"):
        load_sweep(lm_store, "lm", "perplexty")


def test_sweep_choice(lm_store) -> None:
    assert load_sweep(lm_store, None).name == "lm"
    with pytest.raises(ConfigError, match=r"no sweep 'l' .*Sweeps: lm"):
        load_sweep(lm_store, "l")


def test_resolve_key_accepts_labels_and_dotted_keys(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    assert frames.resolve_key("layers", "--panel") == "model.layers"
    assert frames.resolve_key("model.layers", "--panel") == "model.layers"
    assert frames.resolve_key("model", "--panel") == "model.name"


@pytest.mark.parametrize(("indices", "text"), [
    ([1], "1"), ([1, 2], "1, 2"), ([3, 1, 2], "1-3"), ([1, 4, 7], "1, 4, 7")])
def test_format_indices(indices, text) -> None:
    assert format_indices(indices) == text
