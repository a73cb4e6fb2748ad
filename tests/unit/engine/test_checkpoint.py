"""Checkpoints load with ``torch.load(weights_only=True)``; the earlier format still resumes."""

from __future__ import annotations

import hashlib
import io
import random
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import StopAt
from tests.unit.components.own import OWN_SPECS
from trainlab.components import OPTIMIZERS, SCHEDULES, ScheduleContext, build_schedule
from trainlab.components.optimizers import build_optimizer
from trainlab.config.schema import resolve_component, resolve_run
from trainlab.engine import Callback, RunState, interrupt, train
from trainlab.engine.callbacks import EarlyStopping
from trainlab.engine.checkpoint import load_latest, load_verified, save_atomic
from trainlab.records import NullSink

RAW: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 200, "shape": [6], "n_classes": 3,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 16, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "slanted-triangular"},
    "train": {"epochs": 3, "seed": 5, "log_every": 4, "early_stopping": {"patience": 5}},
}


@pytest.fixture(autouse=True)
def _clear_flag():
    interrupt.clear()
    yield
    interrupt.clear()


def _strict(path: Path) -> Any:
    """The file as weights_only=True loads it, with nothing allowed beyond torch's defaults."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _write_legacy(payload: dict[str, Any], path: Path) -> None:
    """A checkpoint as the earlier format wrote it: NumPy objects pickled as they are."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest())


def test_numpy_and_plain_values_round_trip_and_load_weights_only(tmp_path: Path) -> None:
    np.random.seed(3)
    np.random.standard_normal()  # a cached Gaussian: every field of the state is in use
    state = OrderedDict(w=torch.arange(4.0))
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    payload = {
        "rng": {"numpy": np.random.get_state(), "python": random.getstate(),
                "torch": torch.get_rng_state()},
        "model": state,
        "scalars": [np.float64(0.25), np.int64(7), np.bool_(True), np.float32(1.5)],
        "arrays": (np.zeros((2, 0)), np.array(3.0), np.arange(6, dtype=">i2").reshape(2, 3)),
        "plain": {"inf": float("inf"), "none": None, "text": "x", "n": 2**40, "t": (1, 2.0)},
    }
    save_atomic(payload, tmp_path / "c.pt")
    _strict(tmp_path / "c.pt")  # no NumPy global in the file
    loaded = load_verified(tmp_path / "c.pt")
    assert loaded is not None
    key, saved = loaded["rng"]["numpy"], payload["rng"]["numpy"]
    assert isinstance(key, tuple) and key[0] == saved[0] and key[2:] == saved[2:]
    assert key[1].dtype == np.uint32 and np.array_equal(key[1], saved[1])
    np.random.set_state(saved)
    expected = np.random.standard_normal(3)
    np.random.set_state(key)
    assert np.array_equal(np.random.standard_normal(3), expected)
    assert loaded["rng"]["python"] == payload["rng"]["python"]
    for got, want in zip(loaded["scalars"], payload["scalars"]):
        assert type(got) is type(want) and got == want
    for got, want in zip(loaded["arrays"], payload["arrays"]):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        assert got.shape == want.shape and np.array_equal(got, want)
    assert loaded["plain"] == payload["plain"]
    assert isinstance(loaded["model"], OrderedDict)
    assert loaded["model"]._metadata == {"": {"version": 1}}
    # Saving converts a copy: the caller's payload keeps its NumPy objects.
    assert isinstance(payload["rng"]["numpy"][1], np.ndarray)


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
def test_every_optimizer_and_schedule_state_loads_weights_only(optimizer: str,
                                                               tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.ones(3))
    own = OWN_SPECS["optimizer"].get(optimizer, {})
    opt = build_optimizer(resolve_component("optimizer", {"name": optimizer, "lr": 0.1, **own}),
                          [param])
    schedules = {}
    for name in SCHEDULES.names():
        spec = {"name": name, **({"milestones": [2]} if name == "multistep" else {}),
                **OWN_SPECS["schedule"].get(name, {})}
        schedules[name] = build_schedule(resolve_component("schedule", spec), opt,
                                         ScheduleContext(2, 3))
    for _ in range(3):
        param.grad = torch.full((3,), 0.5)
        opt.step()
        for sched in schedules.values():
            sched.after_step()
            sched.after_eval(0.5)
    early = EarlyStopping("valid/loss", 3, 0.0, higher_is_better=False)
    early.best, early.bad = 0.5, 1
    scaler = torch.amp.GradScaler("cpu")
    payload = {"optimizer": opt.state_dict(),
               "schedule": {n: s.state_dict() for n, s in schedules.items()},
               "callbacks": {"EarlyStopping": early.state_dict()},
               "scaler": scaler.state_dict()}
    save_atomic(payload, tmp_path / "s.pt")
    _strict(tmp_path / "s.pt")
    loaded = load_verified(tmp_path / "s.pt")
    assert loaded is not None
    opt.load_state_dict(loaded["optimizer"])
    for name, sched in schedules.items():
        sched.load_state_dict(loaded["schedule"][name])
    assert loaded["callbacks"] == {"EarlyStopping": {"best": 0.5, "bad": 1}}


def test_a_run_checkpoint_holds_no_pickled_object(tmp_path: Path) -> None:
    train(resolve_run(RAW), run_dir=tmp_path / "run", sink=NullSink())
    for name in ("last.pt", "best.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "run" / name) == []
        _strict(tmp_path / "run" / name)


@pytest.mark.parametrize("stop_step", [5, 20])
def test_a_checkpoint_of_the_earlier_format_resumes_exactly(tmp_path: Path,
                                                            stop_step: int) -> None:
    reference = NullSink()
    train(resolve_run(RAW), run_dir=tmp_path / "reference", sink=reference)
    want = _strict(tmp_path / "reference" / "last.pt")["model"]

    run_dir, sink = tmp_path / "cut", NullSink()
    first = train(resolve_run(RAW), run_dir=run_dir, sink=sink, callbacks=[StopAt(stop_step)])
    assert first.status == "interrupted"
    interrupt.clear()
    payload = load_verified(run_dir / "last.pt")
    assert payload is not None and isinstance(payload["rng"]["numpy"][1], np.ndarray)
    _write_legacy(payload, run_dir / "last.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        _strict(run_dir / "last.pt")  # truly the earlier format
    legacy, note = load_latest(run_dir / "last.pt")
    assert legacy is not None and note is None and legacy["step"] == stop_step

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "could not be loaded" fallback
        second = train(resolve_run(RAW), run_dir=run_dir, sink=sink)
    assert second.status == "ok", second.error
    assert not second.summary.get("notes")
    got = _strict(run_dir / "last.pt")["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)
    keys = {"train/loss", "valid/loss", "valid/accuracy", "test/loss"}
    assert ({(r.key, r.step): r.value for r in sink.records if r.key in keys}
            == {(r.key, r.step): r.value for r in reference.records if r.key in keys})


def test_an_earlier_checkpoint_written_under_numpy_1_loads(tmp_path: Path) -> None:
    """NumPy 1 pickled its arrays as ``numpy.core.multiarray._reconstruct``."""
    import zipfile

    state = np.random.get_state()
    buffer = io.BytesIO()
    torch.save({"rng": {"numpy": state}, "loss": np.float64(2.5)}, buffer)
    renamed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, \
            zipfile.ZipFile(renamed, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info.filename, data)
    path = tmp_path / "last.pt"
    path.write_bytes(renamed.getvalue())
    path.with_name("last.pt.sha256").write_text(hashlib.sha256(renamed.getvalue()).hexdigest())
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert "numpy.core.multiarray._reconstruct" in unsafe
    loaded = load_verified(path)
    assert loaded is not None and np.array_equal(loaded["rng"]["numpy"][1], state[1])
    assert type(loaded["loss"]) is np.float64 and loaded["loss"] == 2.5


def test_an_earlier_checkpoint_with_other_objects_is_refused(tmp_path: Path) -> None:
    """Only NumPy's array and scalar constructors are allowed for the earlier format."""
    _write_legacy({"epoch": 1, "odd": Path("x")}, tmp_path / "last.pt")
    with pytest.warns(RuntimeWarning, match="could not be loaded"):
        assert load_verified(tmp_path / "last.pt") is None


class _Snapshots(Callback):
    """The model's weights after each validation, by epoch."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_eval_end(self, state: RunState, values: Any) -> None:
        self.weights[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}


def test_best_pt_holds_the_best_epoch_and_is_written_before_the_last_pt_naming_it(
        tmp_path: Path) -> None:
    """The best weights are kept in memory at each improvement and written with the next
    last.pt (not at every improvement): best.pt still holds the best epoch's weights, the
    test evaluates them as a run without a run directory does, and a run interrupted
    mid-epoch leaves a best.pt of the epoch its last.pt names as best."""
    raw = {**RAW, "train": {**RAW["train"], "epochs": 4, "checkpoint_every_s": 1e9}}
    snapshots, sink = _Snapshots(), NullSink()
    outcome = train(resolve_run(raw), run_dir=tmp_path / "run", sink=sink, callbacks=[snapshots])
    assert outcome.status == "ok", outcome.error
    best = load_verified(tmp_path / "run" / "best.pt")
    assert best is not None and best["epoch"] == outcome.summary["best_epoch"]
    want = snapshots.weights[best["epoch"]]
    assert all(torch.equal(best["model"][k], want[k]) for k in want)
    memory = NullSink()
    assert train(resolve_run(raw), sink=memory).status == "ok"  # best weights kept in memory
    tests = {r.key: r.value for r in sink.records if r.key.startswith("test/")}
    assert tests and tests == {r.key: r.value for r in memory.records
                               if r.key.startswith("test/")}

    cut = tmp_path / "cut"
    first = train(resolve_run(raw), run_dir=cut, sink=NullSink(), callbacks=[StopAt(30)])
    assert first.status == "interrupted"
    interrupt.clear()
    last, best = load_verified(cut / "last.pt"), load_verified(cut / "best.pt")
    assert last is not None and best is not None
    assert best["epoch"] == last["best"]["best_epoch"]
