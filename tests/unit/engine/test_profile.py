"""train.profile: phase shares, top operators and a trace from a window of steps; the same
training as without it; the window kept out of training time and throughput; bad input."""

from __future__ import annotations

import ast
import copy
import gzip
import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config.schema import resolve_run
from trainlab.engine import loop, train
from trainlab.engine.profile import PHASES
from trainlab.records import NullSink

DIGITS: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64, "limit": 600},
    "model": {"name": "mlp", "hidden_dim": 32, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "seed": 3, "log_every": 2},
}
PROFILE = {"steps": 5, "warmup": 2}
TRAIN, STEPS = 600, 10  # training examples (data.limit) and batches of an epoch (the last: 24)


def _config(profile: dict[str, Any] | None = None, **train: Any):
    raw = copy.deepcopy(DIGITS)
    raw["train"].update(train)
    if profile is not None:
        raw["train"]["profile"] = profile
    return resolve_run(raw)


def _read_trace(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def test_a_profiled_run_records_phases_top_operators_and_a_trace(tmp_path: Path) -> None:
    sink = NullSink()
    outcome = train(_config(PROFILE), run_dir=tmp_path, sink=sink)
    assert outcome.status == "ok", outcome.error
    prof = outcome.summary["profile"]
    assert prof["steps"] == 5 and prof["warmup"] == 2 and prof["epoch"] == 1
    assert set(prof["shares"]) == set(PHASES) == set(prof["phases"])
    assert sum(prof["shares"].values()) == pytest.approx(1.0)
    for phase in ("forward", "backward", "optimizer"):
        assert prof["shares"][phase] > 0 and prof["phases"][phase] > 0, phase
    assert prof["step_s"] == pytest.approx(prof["seconds"] / 5)
    ops = prof["top_ops"]
    assert ops and all(op["self_cpu_s"] >= 0 and op["calls"] >= 1 for op in ops)
    assert any(op["name"].startswith("aten::") for op in ops)
    assert not any(op["name"] in PHASES for op in ops)  # the ranges are phases, not operators
    trace = tmp_path / prof["trace"]
    assert trace.is_file() and trace.name.endswith((".pt.trace.json", ".pt.trace.json.gz"))
    names = {e.get("name") for e in _read_trace(trace)["traceEvents"]}
    assert {"forward", "backward", "optimizer", "data_wait"} <= names
    # Records at the window's last step: the epoch's last.
    shares = {r.key: r for r in sink.records if r.key.startswith("profile/share_")}
    assert set(shares) == {f"profile/share_{p}" for p in PHASES}
    assert {(r.step, r.epoch) for r in shares.values()} == {(STEPS, 1)} == {
        (prof["last_step"], prof["epoch"])}


def test_profiling_does_not_change_the_training(tmp_path: Path) -> None:
    """The same batches, calls and RNG draws (dropout) as an unprofiled run: equal weights and
    equal loss curves; a validation inside the window (eval_every) included."""
    runs = {}
    for name, profile in (("plain", None), ("profiled", PROFILE)):
        sink = NullSink()
        outcome = train(_config(profile, eval_every=6, log_every=1), run_dir=tmp_path / name,
                        sink=sink)
        assert outcome.status == "ok", outcome.error
        weights = torch.load(tmp_path / name / "last.pt", weights_only=False)["model"]
        curve = [(r.key, r.step, r.value) for r in sink.records
                 if r.key in ("train/step_loss", "valid/loss", "train/loss", "grad_norm",
                              "test/loss")]
        runs[name] = (weights, curve, outcome.summary)
    (w_plain, c_plain, s_plain), (w_prof, c_prof, s_prof) = runs["plain"], runs["profiled"]
    assert "profile" in s_prof and "profile" not in s_plain
    assert c_plain == c_prof
    assert all(torch.equal(w_plain[k], w_prof[k]) for k in w_plain)
    assert s_plain["steps"] == s_prof["steps"]


def test_the_window_is_left_out_of_training_time_and_throughput() -> None:
    """Epoch 1 counts the samples of its timed steps only: not the warm-up step's batch (the
    process's first) nor the window's (the epoch's last 7 of its 10 batches: 6 x 64 + 24)."""
    sink = NullSink()
    outcome = train(_config(PROFILE, log_every=1), sink=sink)
    assert outcome.status == "ok", outcome.error
    assert outcome.summary["steps"] == 2 * STEPS
    by_epoch: dict[int, dict[str, float]] = {}
    for r in sink.records:
        by_epoch.setdefault(r.epoch, {})[r.key] = r.value
    one, two = by_epoch[1], by_epoch[2]
    assert one["throughput/samples_per_s"] * one["time/epoch_train"] == pytest.approx(
        TRAIN - 64 - (6 * 64 + 24))
    assert two["throughput/samples_per_s"] * two["time/epoch_train"] == pytest.approx(TRAIN)
    assert one["time/train"] == pytest.approx(one["time/epoch_train"])
    # time/step: none at log points whose interval holds profiled steps only (log_every 1).
    timed = {r.step for r in sink.records if r.key == "time/step"}
    assert timed == set(range(1, STEPS - 7 + 1)) | set(range(STEPS + 1, 2 * STEPS + 1))
    window = [r for r in sink.records if r.key == "profile/step_s"]
    assert len(window) == 1 and window[0].value > 0 and window[0].step == STEPS


def test_off_by_default_and_not_part_of_the_run_id() -> None:
    plain, profiled = _config(), _config(PROFILE)
    assert plain.train.profile is None
    assert plain.run_id == profiled.run_id
    assert _config(True).train.profile == _config({}).train.profile  # `profile: true`


def _sweep(tmp_path: Path, profile: dict[str, Any]) -> Path:
    doc = {"name": "prof", **copy.deepcopy(DIGITS)}
    doc["train"]["profile"] = profile
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("profile", "field"), [
    ({"steps": 10, "warmup": 0}, "train.profile.steps"),  # no step left before the window
    ({"steps": 8, "warmup": 2}, "train.profile.steps"),
    ({"steps": 2, "epoch": 3}, "train.profile.epoch"),
])
def test_a_window_larger_than_an_epoch_exits_2_before_training(
        tmp_path: Path, profile: dict[str, Any], field: str) -> None:
    cfg = _sweep(tmp_path, profile)
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", str(cfg), "--store", str(store)],
                                catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert field in result.output and "Traceback" not in result.output
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())


def test_a_window_that_fits_trains_through_the_cli(tmp_path: Path) -> None:
    cfg = _sweep(tmp_path, {"steps": 3, "warmup": 1})
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", str(cfg), "--store", str(store), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    traces = list((store / "runs").glob("*/profile/*.pt.trace.json*"))
    assert len(traces) == 1
    shown = CliRunner().invoke(app, ["show", traces[0].parent.parent.name, "--store",
                                     str(store)], catch_exceptions=False)
    assert shown.exit_code == 0 and "where the time goes (3 profiled steps" in shown.output


def test_the_step_is_untouched_when_off() -> None:
    """Free when off: the loop's step holds nothing of train.profile (no range, check or call);
    the window is decided once an epoch, before the loop, and run after it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(loop._Trainer._train_epoch)))
    steps = [n for n in ast.walk(tree) if isinstance(n, ast.While)]
    assert len(steps) == 1
    names = {n.id for n in ast.walk(steps[0]) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(steps[0]) if isinstance(n, ast.Attribute)}
    assert not names & {"window", "run_window", "window_for", "profile", "record_function"}
