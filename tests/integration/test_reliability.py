"""Damage done for real: SIGKILL at chosen and random moments, Ctrl-C once and twice,
concurrent sweeps and readers.  After each, a rerun must finish every run with every epoch
recorded exactly once and results equal to a sweep that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.store import open_store

EPOCHS = 4
SWEEP: dict[str, Any] = {
    "name": "killme",
    "data": {"name": "synthetic", "n_samples": 3000, "shape": [64], "n_classes": 5,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 128, "dropout": 0.1},
    "optimizer": {"name": "adam", "lr": 1e-3},
    # A checkpoint every epoch (epochs here are shorter than the default's 10 s apart): kills
    # then land between checkpoints of every epoch, and resume from each is exercised.
    "train": {"epochs": EPOCHS, "log_every": 20, "checkpoint_every_s": 0},
    "grid": {"model.hidden_dim": [128, 64]},
}
KILLER = Path(__file__).with_name("killer.py")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(config: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainlab.cli", "run", str(config), "--store", str(store),
            "-q", *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _max_epoch(store: Path) -> int:
    db = store / "trainlab.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT MAX(epoch) FROM metrics").fetchone()
        return int(row[0] or 0)
    except sqlite3.Error:
        return 0


def _results(store: Path, sweep: str = "killme") -> dict[tuple[int, str, int], float]:
    st = open_store(store)
    runs = st.runs(sweep)
    metrics = st.metrics(list(runs["run_id"]))
    index = dict(zip(runs["run_id"], runs["index"]))
    keep = metrics[metrics["key"].isin(["valid/loss", "train/loss", "test/loss"])]
    return {(int(index[r.run_id]), r.key, int(r.epoch)): r.value for r in keep.itertuples()}


def _assert_complete(store: Path, reference: dict, sweep: str = "killme") -> None:
    st = open_store(store)
    runs = st.runs(sweep)
    assert list(runs["status"]) == ["ok"] * len(runs)
    metrics = st.metrics(list(runs["run_id"]))
    for run_id in runs["run_id"]:
        mine = metrics[metrics["run_id"] == run_id]
        for key in ("valid/loss", "train/loss", "time/train"):
            assert sorted(mine[mine["key"] == key]["epoch"]) == list(range(1, EPOCHS + 1)), key
        assert not mine.duplicated(["key", "step"]).any()
    assert _results(store, sweep) == reference


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    return path


@pytest.fixture(scope="module")
def reference(sweep_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = tmp_path_factory.mktemp("reference") / "store"
    done = _run(_cli(sweep_file, store))
    assert done.returncode == 0, done.stderr
    return _results(store)


@pytest.mark.parametrize(("point", "nth"), [("checkpoint", 3), ("store", 12), ("eval", 5)])
def test_sigkill_at_a_chosen_point_then_rerun(sweep_file: Path, reference: dict, tmp_path: Path,
                                              point: str, nth: int) -> None:
    store = tmp_path / "store"
    killed = _run([sys.executable, str(KILLER), point, str(nth), "run", str(sweep_file),
                   "--store", str(store), "-q"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = _run(_cli(sweep_file, store))
    assert rerun.returncode == 0, rerun.stderr
    _assert_complete(store, reference)


def _kill_at_random(cmd: list[str], rng: random.Random, store: Path) -> bool:
    """Start ``cmd``, SIGKILL it at a random moment; True when it was killed."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.2, 2.5))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _kill_repeatedly(sweep_file: Path, store: Path, kills: int, seed: int) -> int:
    rng = random.Random(seed)
    survived = 0
    for _ in range(kills):
        survived += _kill_at_random(_cli(sweep_file, store), rng, store)
    return survived


def test_sigkill_at_random_moments_then_rerun(sweep_file: Path, reference: dict,
                                             tmp_path: Path) -> None:
    store = tmp_path / "store"
    survived = _kill_repeatedly(sweep_file, store, kills=3, seed=1)
    assert survived >= 1
    rerun = _run(_cli(sweep_file, store))
    assert rerun.returncode == 0, rerun.stderr
    _assert_complete(store, reference)


@pytest.mark.slow
def test_twenty_random_kills(sweep_file: Path, reference: dict, tmp_path: Path) -> None:
    """python -m pytest -m slow tests/integration/test_reliability.py -k twenty -s"""
    store = tmp_path / "store"
    survived = _kill_repeatedly(sweep_file, store, kills=20, seed=2)
    rerun = _run(_cli(sweep_file, store))
    assert rerun.returncode == 0, rerun.stderr
    _assert_complete(store, reference)
    print(f"\nkills survived: {survived}")
    assert survived >= 15


def _start_and_wait_for_epoch(cmd: list[str], store: Path, epoch: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while _max_epoch(store) < epoch and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    return proc


def test_ctrl_c_saves_state_exits_130_and_resumes(sweep_file: Path, reference: dict,
                                                  tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = _start_and_wait_for_epoch(_cli(sweep_file, store), store, 2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    runs = open_store(store).runs("killme")
    assert "interrupted" in set(runs["status"])
    rerun = _run(_cli(sweep_file, store))
    assert rerun.returncode == 0, rerun.stderr
    _assert_complete(store, reference)


@pytest.mark.parametrize("gap", [0.01, 0.15], ids=["during-the-stop", "while-exiting"])
def test_a_second_ctrl_c_exits_at_once_and_consistently(sweep_file: Path, reference: dict,
                                                        tmp_path: Path, gap: float) -> None:
    """The second Ctrl-C lands while the first is being honoured or, later, while the process
    tears down (where Python's default SIGINT action used to end it with -2, not 130)."""
    store = tmp_path / "store"
    proc = _start_and_wait_for_epoch(_cli(sweep_file, store), store, 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    t = time.time()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert time.time() - t < 10
    rerun = _run(_cli(sweep_file, store))
    assert rerun.returncode == 0, rerun.stderr
    _assert_complete(store, reference)


@pytest.mark.parametrize("same_runs", [False, True], ids=["different-runs", "shared-runs"])
def test_two_sweeps_write_one_store_while_readers_read(sweep_file: Path, reference: dict,
                                                       tmp_path: Path, same_runs: bool) -> None:
    """Two processes, one store: with shared runs (identical configs under two sweep names)
    each run is claimed by one process and trained once."""
    store = tmp_path / "store"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**SWEEP, "name": "other"}))
    if not same_runs:
        other.write_text(yaml.safe_dump({**SWEEP, "name": "other",
                                         "train": {**SWEEP["train"], "seed": 1}}))
    procs = [subprocess.Popen(_cli(path, store), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for path in (sweep_file, other)]
    reads = 0
    runner = CliRunner()
    while any(p.poll() is None for p in procs):
        if (store / "trainlab.db").is_file():
            listed = runner.invoke(app, ["ls", "--store", str(store), "--json"])
            assert listed.exit_code == 0, listed.output
            json.loads(listed.output)
            reads += 1
        time.sleep(0.05)
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read() for p in procs if p.stderr]
    assert reads > 5
    _assert_complete(store, reference)
    st = open_store(store)
    if same_runs:
        _assert_complete(store, reference, sweep="other")
        assert list(st.runs("killme")["attempts"]) == [1, 1]  # nobody trained a run twice
    else:
        assert list(st.runs("other")["status"]) == ["ok", "ok"]


def test_ls_says_a_killed_runs_process_is_gone(sweep_file: Path, tmp_path: Path) -> None:
    """After a SIGKILL the store still says `running`; `ls` tells it from a live run."""
    store = tmp_path / "store"
    proc = _start_and_wait_for_epoch(_cli(sweep_file, store), store, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = subprocess.run([sys.executable, "-m", "trainlab.cli", "ls", "--store", str(store)],
                            env={**_env(), "COLUMNS": "200"}, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "stopped (process gone; rerun to resume)" in listed.stdout
