"""Stacked runs (train.stack) keep checkpoints as if each had trained alone, and a kill
resumes every run of the stack: each epoch stored once, the final weights those of a stack
that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import trainlab
from trainlab.config.schema import RunConfig, resolve_run
from trainlab.engine import interrupt, train
from trainlab.engine.checkpoint import load_latest, load_verified
from trainlab.engine.stack import _StackTrainer, train_stack
from trainlab.hooks import Callback, RunState
from trainlab.records import NullSink
from trainlab.store import open_store

EPOCHS = 4
KILLER = Path(__file__).with_name("killer.py")
# Two optimizer kinds (a stack holds one): SGD with momentum (momentum_buffer) and Adam
# (step, exp_avg, exp_avg_sq), each with hyperparameters that differ per run, and two seeds.
OPTIMIZERS = {
    "momentum": ({"name": "momentum", "lr": 0.05},
                 {"optimizer.lr": [0.05, 0.1], "optimizer.momentum": [0.8]}),
    "adam": ({"name": "adam", "lr": 1e-3, "weight_decay": 1e-4},
             {"optimizer.lr": [1e-3, 3e-3]}),
}
KEYS = ["train/loss", "valid/loss", "test/loss", "train/step_loss", "lr", "grad_norm"]


def _sweep(kind: str, **train: Any) -> dict[str, Any]:
    optimizer, grid = OPTIMIZERS[kind]
    return {"name": "resumed", "data": {"name": "digits", "batch_size": 32, "limit": 320},
            "model": {"name": "mlp", "hidden_dim": 16}, "optimizer": optimizer,
            "schedule": {"name": "cosine"},
            "train": {"epochs": EPOCHS, "threads": 1, "stack": 4, "log_every": 4,
                      "checkpoint_every_s": 0, **train},
            "grid": grid, "seeds": [0, 1]}


@contextmanager
def _ctrl_c_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int | None,
                     trained: list[int] | None = None) -> Iterator[None]:
    """A Ctrl-C in the first step of ``epoch`` of every stack (None: none); ``trained`` gets
    each epoch a stack starts."""
    real = _StackTrainer._train_epoch

    def train_epoch(self: _StackTrainer, e: int) -> None:
        if trained is not None:
            trained.append(e)
        if e == epoch:
            interrupt.request_stop()
        real(self, e)

    with monkeypatch.context() as patch:
        patch.setattr(_StackTrainer, "_train_epoch", train_epoch)
        try:
            yield
        finally:
            interrupt.clear()


def _results(store: Any) -> dict[tuple[str, str, int], float]:
    metrics = store.metrics()
    keep = metrics[metrics["key"].isin(KEYS)]
    return {(r.run_id, r.key, int(r.step)): r.value for r in keep.itertuples()}


def _weights(store: Any, run_id: str) -> dict[str, torch.Tensor]:
    ckpt = load_verified(store.run_dir(run_id) / "last.pt")
    assert ckpt is not None and ckpt["epoch"] == EPOCHS
    return ckpt["model"]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each optimizer's sweep trained as one stack, never stopped."""
    out = {}
    for kind in OPTIMIZERS:
        st = open_store(tmp_path_factory.mktemp(f"reference-{kind}") / "st")
        assert trainlab.run(_sweep(kind), store=st, estimate=False).exit_code == 0
        out[kind] = st
    return out


def _assert_equals_reference(st: Any, reference: Any) -> None:
    runs = st.runs("resumed")
    assert list(runs["status"]) == ["ok"] * 4
    metrics = st.metrics()
    assert not metrics.duplicated(["run_id", "key", "step"]).any()
    for run_id in runs["run_id"]:
        mine = metrics[metrics["run_id"] == run_id]
        for key in ("train/loss", "valid/loss", "time/train", "perf/stacked"):
            epochs = sorted(mine[mine["key"] == key]["epoch"])
            assert epochs == ([0] if key == "perf/stacked" else list(range(1, EPOCHS + 1)))
        # The weights a stack never stopped ends with, bit for bit: the same computation.
        solo = _weights(reference, run_id)
        for name, value in _weights(st, run_id).items():
            assert torch.equal(value, solo[name]), (run_id, name)
    assert _results(st) == _results(reference)


@pytest.mark.parametrize(("kind", "every"), [("momentum", 0.0), ("adam", 10.0)],
                         ids=["momentum-every-epoch", "adam-every-10s"])
def test_a_stack_stopped_in_epoch_3_resumes_every_run_from_epoch_2(
        kind: str, every: float, references: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C in epoch 3: with checkpoints every epoch, the rerun resumes from epoch 2's;
    with checkpoints 10 s apart (none written yet), the Ctrl-C writes epoch 2's end."""
    st = open_store(tmp_path / "st")
    with _ctrl_c_in_epoch(monkeypatch, 3):
        first = trainlab.run(_sweep(kind, checkpoint_every_s=every), store=st, estimate=False)
    assert first.interrupted
    assert set(st.runs("resumed")["status"]) == {"interrupted"}
    for run_id in st.runs("resumed")["run_id"]:
        ckpt = load_verified(st.run_dir(run_id) / "last.pt")
        assert ckpt is not None and ckpt["epoch"] == 2
    trained: list[int] = []
    with _ctrl_c_in_epoch(monkeypatch, None, trained):
        again = trainlab.run(_sweep(kind, checkpoint_every_s=every), store=st, estimate=False)
    assert again.exit_code == 0
    assert trained == [3, 4]  # resumed, not trained again from the start
    for summary in st.runs("resumed")["summary"]:
        assert any("resumed with the rest of its stack" in n and "epoch 2" in n
                   for n in summary["notes"]), summary["notes"]
    _assert_equals_reference(st, references[kind])


def test_a_sigkill_between_two_runs_checkpoints_resumes_from_their_common_epoch(
        references: dict[str, Any], tmp_path: Path) -> None:
    """Killed at the 7th rename of a last.pt: two runs of the stack have written epoch 2,
    two have not; the rerun resumes all four from epoch 1 (two from last.pt.prev)."""
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(_sweep("adam")))
    store = tmp_path / "st"
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cli = ["run", str(config), "--store", str(store), "-q", "--no-estimate"]
    killed = subprocess.run([sys.executable, str(KILLER), "checkpoint", "7", *cli],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    st = open_store(store)
    # The third run's last.pt was moved to last.pt.prev, its new one not yet in place.
    epochs = sorted(load_latest(st.run_dir(r) / "last.pt")[0]["epoch"]  # type: ignore[index]
                    for r in st.runs("resumed")["run_id"])
    assert epochs == [1, 1, 2, 2]
    rerun = subprocess.run([sys.executable, "-m", "trainlab.cli", *cli], capture_output=True,
                           text=True, timeout=300, env={**os.environ, **env})
    assert rerun.returncode == 0, rerun.stderr
    st = open_store(store)
    for summary in st.runs("resumed")["summary"]:
        assert any("epoch 1" in n and "2 run(s) from last.pt.prev" in n
                   for n in summary["notes"]), summary["notes"]
    _assert_equals_reference(st, references["adam"])


def test_a_diverged_run_stays_diverged_and_the_others_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _sweep("momentum")
    doc["grid"] = {"optimizer.lr": [0.05, 1e30, 0.1]}
    doc["seeds"] = [0]
    st = open_store(tmp_path / "st")
    with _ctrl_c_in_epoch(monkeypatch, 3):
        assert trainlab.run(doc, store=st, estimate=False).interrupted
    runs = st.runs("resumed")
    status = dict(zip(runs["run_id"], runs["status"]))
    assert sorted(status.values()) == ["diverged", "interrupted", "interrupted"]
    diverged = next(r for r, s in status.items() if s == "diverged")
    before = st.metrics([diverged])
    trained: list[int] = []
    with _ctrl_c_in_epoch(monkeypatch, None, trained):
        again = trainlab.run(doc, store=st, estimate=False)
    assert not again.interrupted and again.exit_code == 1  # 1: a run of the sweep diverged
    assert trained == [3, 4]
    runs = st.runs("resumed")
    assert sorted(runs["status"]) == ["diverged", "ok", "ok"]
    assert st.metrics([diverged]).equals(before)  # left as it was
    for summary in runs[runs["status"] == "ok"]["summary"]:
        assert summary["stacked"] == 2 and summary["epochs"] == EPOCHS


def _config(optimizer: dict[str, Any], seed: int) -> RunConfig:
    return resolve_run({"data": {"name": "digits", "batch_size": 32, "limit": 320},
                        "model": {"name": "mlp", "hidden_dim": 16}, "optimizer": optimizer,
                        "schedule": {"name": "cosine"},
                        "train": {"epochs": EPOCHS, "seed": seed, "threads": 1,
                                  "log_every": 4, "checkpoint_every_s": 0}})


class _StopAfterEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: RunState, values: dict[str, float]) -> None:
        if state.epoch == self.epoch:
            interrupt.request_stop()


@pytest.mark.parametrize("optimizer", [{"name": "momentum", "lr": 0.05, "weight_decay": 1e-3},
                                       {"name": "adamw", "lr": 2e-3}], ids=["momentum", "adamw"])
def test_a_stacked_runs_checkpoint_is_its_solo_runs(optimizer: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The last.pt of a stacked run stopped after epoch 2 holds what its solo run's holds then
    (weights to float rounding, the optimizer's state dict in torch's format, schedule, RNG,
    best), and the solo engine resumes it to the solo run's own end."""
    configs = [_config({**optimizer, "lr": optimizer["lr"] * (1 + seed)}, seed)
               for seed in (0, 1)]
    dirs = [tmp_path / f"stacked{i}" for i in range(2)]
    with _ctrl_c_in_epoch(monkeypatch, 3):
        outcomes = train_stack(configs, [c.run_id for c in configs], dirs, NullSink())
    assert [o.status for o in outcomes] == ["interrupted"] * 2
    for config, stacked_dir in zip(configs, dirs):
        solo_dir = tmp_path / f"solo-{config.train.seed}"
        try:
            assert train(config, run_dir=solo_dir, sink=NullSink(),
                         callbacks=[_StopAfterEpoch(2)]).status == "interrupted"
        finally:
            interrupt.clear()
        mine, solo = load_verified(stacked_dir / "last.pt"), load_verified(solo_dir / "last.pt")
        assert mine is not None and solo is not None
        assert mine.keys() == solo.keys() and mine["epoch"] == solo["epoch"] == 2
        assert mine["step"] == solo["step"] and mine["partial"] is None
        assert list(mine["model"]) == list(solo["model"])
        for key, value in solo["model"].items():
            torch.testing.assert_close(mine["model"][key], value, rtol=1e-5, atol=1e-6)
        assert mine["optimizer"]["param_groups"] == solo["optimizer"]["param_groups"]
        assert mine["optimizer"]["state"].keys() == solo["optimizer"]["state"].keys()
        for index, state in solo["optimizer"]["state"].items():
            assert mine["optimizer"]["state"][index].keys() == state.keys()
            for key, value in state.items():
                got = mine["optimizer"]["state"][index][key]
                assert got.dtype == value.dtype and got.device == value.device
                torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-6)
        assert mine["schedule"] == solo["schedule"]
        assert torch.equal(mine["rng"]["torch"], solo["rng"]["torch"])
        assert mine["best"].keys() == solo["best"].keys()
        assert mine["best"]["best_epoch"] == solo["best"]["best_epoch"]
        assert mine["best"]["best_value"] == pytest.approx(solo["best"]["best_value"], rel=1e-5)
        best_mine, best_solo = (load_verified(d / "best.pt") for d in (stacked_dir, solo_dir))
        assert best_mine is not None and best_solo is not None
        assert list(best_mine["model"]) == list(best_solo["model"])
        assert (best_mine["epoch"], best_mine["step"]) == (best_solo["epoch"], best_solo["step"])
        # The solo engine resumes the stacked checkpoint and ends where the solo run ends.
        assert train(config, run_dir=stacked_dir, sink=NullSink()).status == "ok"
        assert train(config, run_dir=solo_dir, sink=NullSink()).status == "ok"
        resumed = load_verified(stacked_dir / "last.pt")
        alone = load_verified(solo_dir / "last.pt")
        assert resumed is not None and alone is not None and resumed["epoch"] == EPOCHS
        for key, value in alone["model"].items():
            torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6)


class _Store(NullSink):
    """An in-memory sink that answers the solo engine's store check, as the store does."""

    def recorded_through(self, run_id: str, epoch: int, step: int) -> bool:
        held = {r.epoch for r in self.records if r.run_id == run_id and r.step <= step}
        return held >= set(range(epoch + 1))


@pytest.mark.parametrize("fault", ["corrupt", "rows lost", "rows lost, vmap"])
def test_checkpoints_that_cannot_resume_the_stack_fall_back(
        fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run's last.pt corrupt (and no .prev): the stack trains again from its start, with a
    note.  The store lost one run's epoch-2 rows (a deleted -wal file): every run resumes from
    epoch 1 (last.pt.prev), the latest epoch the store holds (also on the vmap path, which
    any model other than Flatten/Linear/activations takes).  Either way each epoch is
    recorded once and the stack ends as a stack never stopped does."""
    if fault.endswith("vmap"):
        monkeypatch.setattr("trainlab.engine.stack.LinearChain.of", lambda model: None)
    configs = [_config({"name": "adam", "lr": 1e-3 * (1 + seed)}, seed) for seed in (0, 1)]
    ids = [c.run_id for c in configs]
    reference = _StackTrainer(configs, ids, [tmp_path / "ref0", tmp_path / "ref1"], NullSink())
    assert [o.status for o in reference.run()] == ["ok", "ok"]
    dirs, sink = [tmp_path / "a", tmp_path / "b"], _Store()
    with _ctrl_c_in_epoch(monkeypatch, 3):
        train_stack(configs, ids, dirs, sink)
    if fault == "corrupt":
        (dirs[1] / "last.pt.prev").unlink()
        data = bytearray((dirs[1] / "last.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (dirs[1] / "last.pt").write_bytes(bytes(data))
        expected, note = [1, 2, 3, 4], "no usable last.pt"
    else:
        sink.records = [r for r in sink.records if r.run_id != ids[1] or r.epoch != 2]
        expected, note = [2, 3, 4], "at epoch 1 (step 10); 2 run(s) from last.pt.prev"
    trained: list[int] = []
    with _ctrl_c_in_epoch(monkeypatch, None, trained), warnings.catch_warnings(record=True) \
            as caught:
        warnings.simplefilter("always")
        trainer = _StackTrainer(configs, ids, dirs, sink)
        outcomes = trainer.run()
    assert [o.status for o in outcomes] == ["ok", "ok"] and trained == expected
    assert outcomes[0].summary["speed"]["stack_step"] == (
        "vmap" if fault.endswith("vmap") else "batched matmul")
    assert any(note in n for n in outcomes[0].summary["notes"]), outcomes[0].summary["notes"]
    assert any("restarted from scratch" in str(w.message) for w in caught) == (
        fault == "corrupt")
    for key, value in reference.params.items():
        assert torch.equal(trainer.params[key], value)
    for run_id in ids:
        rows = [(r.epoch, r.step) for r in sink.records if r.key == "valid/loss"
                and r.run_id == run_id]
        assert [e for e, _ in rows] == [1, 2, 3, 4], rows
