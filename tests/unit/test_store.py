from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import trainlab
from trainlab.errors import ConfigError
from trainlab.records import MetricRecord
from trainlab.store import Store, open_store


def _rec(run: str, key: str, step: int, epoch: int, value: float) -> MetricRecord:
    return MetricRecord(run, key, step, epoch, float(step), value)


def test_write_read_and_rewind(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    store.register_sweep("sw", {"name": "sw"}, ["model.name"],
                         [("r1", 1, {"model.name": "mlp"}, {"model": {"name": "mlp"}}),
                          ("r2", 2, {"model.name": "cnn"}, {"model": {"name": "cnn"}})])
    store.write([_rec("r1", "valid/loss", s, e, 1.0 / s) for s, e in ((10, 1), (20, 2), (30, 3))])
    store.write([_rec("r1", "valid/loss", 30, 3, 9.0)])  # rewritten: replaces, no duplicate
    frame = store.metrics(["r1"])
    assert list(frame["step"]) == [10, 20, 30] and frame["value"].iloc[-1] == 9.0
    assert list(frame.columns) == ["run_id", "key", "step", "epoch", "time", "value"]
    store.rewind("r1", 1)
    assert list(store.metrics(["r1"])["epoch"]) == [1]
    store.rewind("r1", -1)
    assert store.metrics(["r1"]).empty
    runs = store.runs("sw")
    assert list(runs["run_id"]) == ["r1", "r2"] and list(runs["status"]) == ["pending"] * 2
    assert runs["config"].iloc[0] == {"model": {"name": "mlp"}}
    assert {"run_id", "sweep", "status", "config"} <= set(runs.columns)


def test_status_lifecycle_and_membership(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    store.register_sweep("a", {}, [], [("r1", 1, {}, {}), ("r2", 2, {}, {})])
    store.start_run("r1", {"torch": "x"})
    assert store.statuses(["r1"])["r1"]["status"] == "running"
    store.finish_run("r1", "ok", None, {"test_accuracy": 0.9})
    # Re-registering with a smaller grid keeps r2 in the store but not in the sweep.
    store.register_sweep("a", {}, [], [("r1", 1, {}, {})])
    assert list(store.runs("a")["run_id"]) == ["r1"]
    assert set(store.runs()["run_id"]) == {"r1", "r2"}
    assert store.runs("a")["summary"].iloc[0] == {"test_accuracy": 0.9}
    assert store.find_run("r1") == "r1"
    with pytest.raises(ConfigError, match="matches 2 runs"):
        store.find_run("r")


def test_store_location_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINLAB_STORE", str(tmp_path / "env-store"))
    store = trainlab.open_store()
    assert store.root == tmp_path / "env-store" and (store.root / "trainlab.db").is_file()


def test_missing_and_unwritable_stores_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no trainlab store"):
        open_store(tmp_path / "nothing", create=False)
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        with pytest.raises(ConfigError, match="cannot be used"):
            open_store(blocker / "store")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(ConfigError, match="cannot be used"):
            open_store(locked / "store")


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("SELECT value FROM meta").fetchone()[0] == "1"
