"""A sweep killed with SIGKILL mid-run and rerun finishes with every epoch recorded once and
the same results as a sweep that was never interrupted."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from trainlab.store import open_store

EPOCHS = 4
SWEEP = {
    "name": "killme",
    "data": {"name": "synthetic", "n_samples": 6000, "shape": [64], "n_classes": 5,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 128, "dropout": 0.1},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": EPOCHS, "log_every": 20},
    "grid": {"model.hidden_dim": [128, 64]},
}


def _cli(config: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "trainlab.cli", "run", str(config), "--store", str(store), "-q"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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


def _results(store: Path) -> dict[tuple[int, str, int], float]:
    st = open_store(store)
    runs = st.runs("killme")
    metrics = st.metrics(list(runs["run_id"]))
    index = dict(zip(runs["run_id"], runs["index"]))
    keep = metrics[metrics["key"].isin(["valid/loss", "train/loss", "test/loss"])]
    return {(int(index[r.run_id]), r.key, int(r.epoch)): r.value for r in keep.itertuples()}


def test_sigkill_mid_run_then_rerun(tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    proc = subprocess.Popen(_cli(config, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _max_epoch(killed) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    statuses = set(open_store(killed).runs("killme")["status"])
    assert "running" in statuses  # the killed run is left as running: its process is gone

    rerun = subprocess.run(_cli(config, killed), env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "to train" in rerun.stderr or rerun.stderr == ""
    reference = subprocess.run(_cli(config, clean), env=_env(), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    st = open_store(killed)
    runs = st.runs("killme")
    assert list(runs["status"]) == ["ok", "ok"]
    metrics = st.metrics(list(runs["run_id"]))
    for run_id in runs["run_id"]:
        mine = metrics[metrics["run_id"] == run_id]
        for key in ("valid/loss", "train/loss", "time/train"):
            assert sorted(mine[mine["key"] == key]["epoch"]) == list(range(1, EPOCHS + 1)), key
        assert not mine.duplicated(["key", "step"]).any()
    assert _results(killed) == _results(clean)
