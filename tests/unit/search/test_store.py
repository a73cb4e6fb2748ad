"""The store's `pruned` status: migration of an old store, and what a pruned run keeps."""

from __future__ import annotations

import shutil
from pathlib import Path

from trainlab.records import DONE, STATUSES, MetricRecord
from trainlab.store import SCHEMA_VERSION, open_store

DATA = Path(__file__).parents[2] / "data"


def test_an_old_store_migrates_and_then_keeps_pruned_runs(tmp_path: Path) -> None:
    shutil.copy(DATA / "store-v1.db", tmp_path / "trainlab.db")
    store = open_store(tmp_path, create=False)
    assert store.schema_version == SCHEMA_VERSION >= 5
    columns = {r[1] for r in store.conn.execute("PRAGMA table_info(runs)")}
    assert "stopped_epoch" in columns
    old = store.runs("legacy")
    assert list(old["status"]) == ["ok", "ok"] and old["stopped_epoch"].isna().all()
    store.register_sweep("s", {"name": "s"}, [], [("r1", 1, {}, {"x": 1})])
    assert store.start_run("r1", {})
    store.write([MetricRecord("r1", "valid/accuracy", 10, 1, 0.1, 0.3)])
    store.finish_run("r1", "pruned", None, {"pruned_epoch": 1})
    row = store.runs("s").iloc[0]
    assert row["status"] == "pruned" and row["stopped_epoch"] == 1
    assert not store.start_run("r1", {})  # a pruned run is finished: a rerun never resumes it
    assert "pruned" in DONE and "pruned" in STATUSES
    assert int(store.sweeps().set_index("sweep").loc["s", "finished"]) == 1
    store.close()
