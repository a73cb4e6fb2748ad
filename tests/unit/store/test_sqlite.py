from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

import trainlab
from trainlab.errors import ConfigError
from trainlab.records import MetricRecord
from trainlab.store import MIGRATIONS, SCHEMA_VERSION, Store, open_store

DATA = Path(__file__).resolve().parents[2] / "data"


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
    store.rewind("r1", 10)
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



@pytest.mark.parametrize("status", ["ok", "diverged", "failed", "interrupted", "oom"])
def test_a_run_finished_since_planning_is_not_claimed_again(tmp_path: Path, status: str) -> None:
    # Two sweeps share a run: the second planned it as pending, the first finished it since.
    store = open_store(tmp_path / "s")
    store.register_sweep("a", {}, [], [("r1", 1, {}, {})])
    assert store.start_run("r1", {})
    store.finish_run("r1", status, None, {})
    claimed = store.start_run("r1", {})
    assert claimed == (status not in ("ok", "diverged"))  # failed/oom/interrupted are retried
    assert list(store.runs("a")["attempts"]) == [2 if claimed else 1]

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
    assert store.schema_version == SCHEMA_VERSION == max(MIGRATIONS)


def test_a_store_from_the_first_schema_is_migrated(tmp_path: Path) -> None:
    """tests/data/store-v1.db was written by trainlab's first schema (2 finished runs)."""
    shutil.copytree(DATA / "", tmp_path / "old", dirs_exist_ok=True)
    (tmp_path / "old" / "store-v1.db").rename(tmp_path / "old" / "trainlab.db")
    store = open_store(tmp_path / "old", create=False)
    assert store.schema_version == SCHEMA_VERSION
    runs = store.runs("legacy")
    assert list(runs["status"]) == ["ok", "ok"] and len(store.metrics(runs["run_id"])) == 82
    columns = {r[1] for r in store.conn.execute("PRAGMA table_info(runs)")}
    assert {"heartbeat", "estimate"} <= columns
    assert store.lr_ranges().empty  # version 4's tables exist
    statuses = store.statuses(runs["run_id"])
    assert all(v["heartbeat"] is None for v in statuses.values())
    store.close()
    again = open_store(tmp_path / "old")  # idempotent
    assert again.schema_version == SCHEMA_VERSION


def test_a_newer_store_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    store.conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    store.close()
    with pytest.raises(ConfigError, match="newer than this trainlab"):
        open_store(tmp_path / "s")


def test_a_locked_store_says_so(tmp_path: Path) -> None:
    open_store(tmp_path / "s").close()
    holder = sqlite3.connect(tmp_path / "s" / "trainlab.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConfigError, match="locked by another process"):
            open_store(tmp_path / "s", timeout=0.2).register_sweep("x", {}, [], [])
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_read_only_store_can_still_be_read(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path / "s")
    store.register_sweep("a", {}, [], [("r1", 1, {}, {})])
    store.close()
    real_connect = sqlite3.connect

    def read_only_media(target: object, *args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(target, *args, **kwargs)  # type: ignore[arg-type]
        if "immutable=1" not in str(target):
            conn.close()
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return conn

    monkeypatch.setattr(sqlite3, "connect", read_only_media)
    reader = open_store(tmp_path / "s", create=False)
    assert reader.read_only and list(reader.runs("a")["run_id"]) == ["r1"]
    writer = open_store(tmp_path / "s")  # opens for reading; its writes get a clear message
    with pytest.raises(ConfigError, match=r"is read-only .*training writes to it"):
        writer.register_sweep("b", {}, [], [])


def test_a_store_this_process_cannot_write_is_opened_read_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only directory (chmod, a read-only mount: os.access says so even to root): no
    -wal or -shm file can be created, so readers open the database read-only at once."""
    import os

    store = open_store(tmp_path / "s")
    store.register_sweep("a", {}, [], [("r1", 1, {}, {})])
    store.write([MetricRecord("r1", "train/loss", 1, 1, 0.0, 2.0)])
    store.close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode == os.W_OK
                        else real_access(path, mode, **kw))
    before = (tmp_path / "s" / "trainlab.db").read_bytes()
    for create in (False, True):
        reader = open_store(tmp_path / "s", create=create)
        assert reader.read_only and "cannot write to the directory" in reader.read_only_why
        assert list(reader.runs("a")["run_id"]) == ["r1"]
        assert list(reader.metrics(["r1"])["value"]) == [2.0]
        with pytest.raises(ConfigError, match="read-only"):
            reader.start_run("r1", {})
        reader.close()
    assert (tmp_path / "s" / "trainlab.db").read_bytes() == before  # no migration, no write


@pytest.mark.parametrize("damage", ["half", "garbage"])
def test_a_damaged_database_says_so_and_how_to_recover_without_touching_it(
        tmp_path: Path, damage: str) -> None:
    import hashlib
    import os

    store = open_store(tmp_path / "s")
    store.register_sweep("a", {}, [], [(f"r{i}", i, {}, {"x": "y" * 2000}) for i in range(40)])
    store.close()
    db = tmp_path / "s" / "trainlab.db"
    if damage == "half":
        os.truncate(db, db.stat().st_size // 2)
    else:
        db.write_bytes(b"this is not a database at all" * 100)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for create in (True, False):
        with pytest.raises(ConfigError) as info:
            open_store(tmp_path / "s", create=create)
        text = str(info.value)
        assert "is damaged" in text and ".recover" in text and "writable" not in text
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_a_killed_process_not_yet_reaped_holds_no_run() -> None:
    import socket
    import subprocess
    import sys
    import time

    from trainlab.store.sqlite import held_elsewhere

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.time() + 30
        while stat.exists() and " Z " not in stat.read_text() and time.time() < deadline:
            time.sleep(0.05)  # exited but not waited for: a zombie, kill(pid, 0) still works
        if not stat.exists():
            pytest.skip("no /proc here: zombies cannot be told apart")
        assert not held_elsewhere({"pid": child.pid, "host": socket.gethostname(),
                                   "heartbeat": time.time()})
    finally:
        child.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert held_elsewhere({"pid": live.pid, "host": socket.gethostname(),
                               "heartbeat": time.time()})
    finally:
        live.kill()
        live.wait()


def test_a_full_disk_rolls_the_write_back_and_says_so(tmp_path: Path) -> None:
    from trainlab.store.sqlite import StoreFull

    store = open_store(tmp_path / "s")
    store.register_sweep("a", {}, [], [("r1", 1, {}, {})])
    store.conn.execute("PRAGMA max_page_count = " + str(
        store.conn.execute("PRAGMA page_count").fetchone()[0]))  # no page left: "full"
    with pytest.raises(StoreFull, match=r"is full \(database or disk is full; [\d,]+ MiB free"):
        store.write([MetricRecord("r1", f"k{i}", i, 1, 0.0, float(i)) for i in range(5000)])
    assert not store.conn.in_transaction
    assert store.metrics(["r1"]).empty
