"""One contract, three stores (see :class:`trainlab.store.base.RunStore`).

Every case runs against each implementation an executor may train into:

- ``sqlite``: :class:`trainlab.store.Store` itself;
- ``remote``: a :class:`~trainlab.execute.relay.RemoteStore` over a real multiprocessing pipe,
  served by a thread that answers with the relay's own :func:`~trainlab.execute.relay.answer`
  on its own ``Store`` (and answers a little late, so a call that did not wait for its
  answer would be caught);
- ``tracked``: a :class:`~trainlab.loggers.TrackedStore` around a ``Store``, with a tracker
  that records what it is told.

What a call did is always read back through a *separate* ``Store`` opened on the directory,
as ``trainlab ls`` or a report would: a call must have committed by the time it returns.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from trainlab.api import load
from trainlab.execute.relay import ConnectionChannel, RemoteStore, answer
from trainlab.loggers import RunInfo, TrackedStore
from trainlab.plan import Plan, make_plan
from trainlab.records import DONE, MetricRecord
from trainlab.store import RunStore, Store
from trainlab.store.sqlite import STALE_AFTER_S

SWEEP: dict[str, Any] = {
    "name": "contract",
    "data": {"name": "synthetic", "n_samples": 64, "shape": [4], "n_classes": 2,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 8},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 1},
    "grid": {"model.hidden_dim": [8, 16]},
}
ANSWER_DELAY_S = 0.02  # how late the relay's owner answers each request
IMPLEMENTATIONS = ["sqlite", "remote", "tracked"]


class RecordingTracker:
    """A tracker that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def start(self, run: RunInfo, env: dict[str, Any]) -> None:
        self.events.append(("start", run.run_id, run.sweep, run.index, env))

    def rewind(self, run_id: str, step: int) -> None:
        self.events.append(("rewind", run_id, step))

    def log(self, run_id: str, records: Sequence[MetricRecord]) -> None:
        self.events.append(("log", run_id, list(records)))

    def finish(self, run_id: str, status: str, error: str | None,
               summary: dict[str, Any]) -> None:
        self.events.append(("finish", run_id, status, error, summary))

    def close(self) -> None:
        self.events.append(("close",))


class Harness:
    """One implementation on a store directory whose sweep (two runs) is registered."""

    def __init__(self, kind: str, root: Path, plan: Plan) -> None:
        self.kind, self.root, self.plan = kind, root, plan
        self.trackers: list[RecordingTracker] = []
        self.server_errors: list[BaseException] = []
        self.readers = ExitStack()
        self.run_ids = [p.run_id for p in plan.runs]

    def open(self) -> AbstractContextManager[RunStore]:
        """A new instance of the implementation, for the calling thread."""
        return {"sqlite": self._sqlite, "remote": self._remote,
                "tracked": self._tracked}[self.kind]()

    @contextmanager
    def _sqlite(self) -> Iterator[RunStore]:
        with Store(self.root) as store:
            yield store

    @contextmanager
    def _tracked(self) -> Iterator[RunStore]:
        tracker = RecordingTracker()
        self.trackers.append(tracker)
        with Store(self.root) as store:
            yield TrackedStore(store, [tracker], self.plan)

    @contextmanager
    def _remote(self) -> Iterator[RunStore]:
        worker_end, owner_end = multiprocessing.Pipe()

        def serve() -> None:  # the owner of the store, as the pool's parent serves a worker
            try:
                with Store(self.root) as owner:
                    while True:
                        try:
                            frame, message = owner_end.recv()
                        except EOFError:
                            return
                        if frame == "req":
                            time.sleep(ANSWER_DELAY_S)
                            owner_end.send((answer(owner, message), False))
            except BaseException as exc:  # the owner goes down: the worker's line closes
                self.server_errors.append(exc)
            finally:
                owner_end.close()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            yield RemoteStore(ConnectionChannel(worker_end), self.root)
        finally:
            worker_end.close()
            server.join(10)

    def reader(self) -> Store:
        """A separate store on the same directory, opened now."""
        return self.readers.enter_context(Store(self.root))

    @property
    def events(self) -> list[tuple[Any, ...]] | None:
        """What the trackers were told (None: this implementation has none)."""
        if self.kind != "tracked":
            return None
        return [e for t in self.trackers for e in t.events]

    def run_row(self, run_id: str) -> dict[str, Any]:
        runs = self.reader().runs()
        row = runs[runs["run_id"] == run_id].drop_duplicates("run_id")
        assert len(row) == 1
        return dict(row.iloc[0])


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan(load(SWEEP), None, check=False)


@pytest.fixture(params=IMPLEMENTATIONS)
def harness(request: pytest.FixtureRequest, tmp_path: Path, plan: Plan) -> Iterator[Harness]:
    root = tmp_path / "store"
    with Store(root) as owner:
        plan.register(owner)
    h = Harness(request.param, root, plan)
    with h.readers:
        yield h


@pytest.fixture
def store(harness: Harness) -> Iterator[RunStore]:
    with harness.open() as st:
        yield st


def _rec(run_id: str, key: str, step: int, value: float, epoch: int = 0) -> MetricRecord:
    return MetricRecord(run_id, key, step, epoch, step * 0.5, value)


def _rows(reader: Store, run_id: str | None = None) -> list[tuple[Any, ...]]:
    frame = reader.metrics(None if run_id is None else [run_id])
    return sorted(zip(frame["run_id"], frame["key"], frame["step"].astype(int),
                      frame["epoch"].astype(int), frame["time"], frame["value"]))


def _as_rows(records: Sequence[MetricRecord]) -> list[tuple[Any, ...]]:
    return sorted((r.run_id, r.key, r.step, r.epoch, r.time, r.value) for r in records)


# --- claims ----------------------------------------------------------------------------------


def test_root_and_run_dir_name_the_store_directory(harness: Harness, store: RunStore) -> None:
    run = harness.run_ids[0]
    assert Path(store.root) == harness.root
    assert store.run_dir(run) == harness.root / "runs" / run
    assert not store.run_dir(run).exists()  # named, not created


def test_a_claim_marks_the_run_running_in_this_process(harness: Harness,
                                                      store: RunStore) -> None:
    run, other = harness.run_ids
    before = time.time()
    assert store.start_run(run, {"device": "cpu", "torch": "2.x"})
    row = harness.run_row(run)
    assert row["status"] == "running"
    assert (row["pid"], row["host"]) == (os.getpid(), socket.gethostname())
    assert row["env"] == {"device": "cpu", "torch": "2.x"}
    assert row["attempts"] == 1 and row["started"] >= before
    assert harness.run_row(other)["status"] == "pending"  # only that run
    if harness.events is not None:
        planned = harness.plan.runs[0]
        assert harness.events == [("start", run, "contract", planned.index,
                                   {"device": "cpu", "torch": "2.x"})]


def test_the_holder_may_claim_its_run_again(harness: Harness, store: RunStore) -> None:
    run = harness.run_ids[0]
    assert store.start_run(run, {"try": 1})
    started = harness.run_row(run)["started"]
    assert store.start_run(run, {"try": 2})
    row = harness.run_row(run)
    assert row["attempts"] == 2 and row["env"] == {"try": 2}
    assert row["started"] == started  # the first start is kept


CLAIM = """
import sys
from pathlib import Path
from trainlab.store import Store
store = Store(Path(sys.argv[1]))
print(store.start_run(sys.argv[2], {"by": "another process"}), flush=True)
sys.stdin.read()  # hold the claim until the test lets go (or kills this process)
"""


def test_a_run_held_by_another_live_process_is_refused_until_that_process_dies(
        harness: Harness, store: RunStore) -> None:
    run = harness.run_ids[0]
    other = subprocess.Popen([sys.executable, "-c", CLAIM, str(harness.root), run],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "True"
        assert not store.start_run(run, {"by": "me"})
        row = harness.run_row(run)  # a refused claim changes nothing
        assert (row["status"], row["pid"], row["attempts"]) == ("running", other.pid, 1)
        assert row["env"] == {"by": "another process"}
        if harness.events is not None:
            assert harness.events == []  # trackers hear of claims that succeed only
    finally:
        other.kill()  # a crash: the run stays "running" under a pid that is gone
        other.wait()
    assert harness.run_row(run)["status"] == "running"
    assert store.start_run(run, {"by": "me"})
    row = harness.run_row(run)
    assert (row["pid"], row["attempts"], row["env"]) == (os.getpid(), 2, {"by": "me"})
    if harness.events is not None:
        assert [e[0] for e in harness.events] == ["start"]


def test_a_run_held_on_another_host_is_refused_until_its_heartbeat_is_stale(
        harness: Harness, store: RunStore) -> None:
    run = harness.run_ids[0]

    def held_since(heartbeat: float) -> None:
        with sqlite3.connect(harness.root / "trainlab.db") as conn:
            conn.execute("UPDATE runs SET status='running', host='another-host', pid=1, "
                         "heartbeat=? WHERE run_id=?", (heartbeat, run))
        conn.close()

    held_since(time.time())
    assert not store.start_run(run, {})
    assert harness.run_row(run)["host"] == "another-host"
    held_since(time.time() - STALE_AFTER_S - 5)
    assert store.start_run(run, {})
    assert harness.run_row(run)["host"] == socket.gethostname()


def test_an_unregistered_run_is_not_created_by_a_claim_or_a_finish(
        harness: Harness, store: RunStore) -> None:
    store.start_run("not-registered", {})
    store.finish_run("not-registered", "ok", None, {})
    assert "not-registered" not in set(harness.reader().runs()["run_id"])


@pytest.mark.parametrize("status", ["ok", "failed", "diverged", "interrupted", "oom"])
def test_finish_stores_the_outcome_and_only_ok_and_diverged_are_final(
        harness: Harness, store: RunStore, status: str) -> None:
    run = harness.run_ids[0]
    error = None if status == "ok" else f"it went {status}"
    summary = {"test_accuracy": 0.75, "nested": {"steps": 3}, "where": Path("x")}
    assert store.start_run(run, {})
    store.write([_rec(run, "train/loss", 1, 0.5)])
    before = time.time()
    store.finish_run(run, status, error, summary)
    row = harness.run_row(run)
    assert (row["status"], row["error"]) == (status, error)
    assert row["summary"] == {"test_accuracy": 0.75, "nested": {"steps": 3}, "where": "x"}
    assert row["finished"] >= before
    assert len(_rows(harness.reader(), run)) == 1  # its records stay
    assert store.start_run(run, {}) == (status not in DONE)
    row = harness.run_row(run)
    if status in DONE:
        assert (row["status"], row["attempts"]) == (status, 1)
    else:  # a retry clears the last outcome
        assert (row["status"], row["attempts"], row["error"]) == ("running", 2, None)
        assert pd.isna(row["finished"])
    if harness.events is not None:
        assert ("finish", run, status, error, summary) in harness.events
        assert [e[0] for e in harness.events] == (
            ["start", "log", "finish"] + ([] if status in DONE else ["start"]))


# --- records ---------------------------------------------------------------------------------


def test_a_write_is_committed_when_it_returns(harness: Harness, store: RunStore) -> None:
    run, other = harness.run_ids
    already_open = harness.reader()
    assert _rows(already_open) == []
    records = [_rec(run, "train/loss", s, 1.0 / (s + 1)) for s in range(5)]
    records.append(_rec(other, "valid/accuracy", 3, 0.7, epoch=1))
    before = time.time()
    store.write(records)
    assert _rows(already_open) == _as_rows(records)
    assert _rows(harness.reader()) == _as_rows(records)  # and a reader opened afterwards
    beats = harness.reader().statuses([run, other])
    assert all(beats[r]["heartbeat"] >= before for r in (run, other))
    if harness.events is not None:
        assert harness.events == [("log", run, records[:5]), ("log", other, records[5:])]


def test_an_empty_write_changes_nothing(harness: Harness, store: RunStore) -> None:
    store.write([])
    assert _rows(harness.reader()) == []
    assert all(s["heartbeat"] is None
               for s in harness.reader().statuses(harness.run_ids).values())
    if harness.events is not None:
        assert harness.events == []


def test_a_key_written_again_at_a_step_is_replaced_and_calls_apply_in_order(
        harness: Harness, store: RunStore) -> None:
    run = harness.run_ids[0]
    store.write([_rec(run, "train/loss", 1, 1.0), _rec(run, "train/loss", 1, 2.0)])
    assert [r[-1] for r in _rows(harness.reader(), run)] == [2.0]  # the later one wins
    store.write([MetricRecord(run, "train/loss", 1, 5, 9.0, 3.0)])
    assert _rows(harness.reader(), run) == [(run, "train/loss", 1, 5, 9.0, 3.0)]
    for i in range(10):
        store.write([_rec(run, "valid/loss", 2, float(i)), _rec(run, "lr", i, 0.1 * i)])
    rows = _rows(harness.reader(), run)
    assert [r[-1] for r in rows if r[1] == "valid/loss"] == [9.0]
    assert [r[2] for r in rows if r[1] == "lr"] == list(range(10))


def test_a_write_that_fails_raises_and_stores_none_of_its_records(
        harness: Harness, store: RunStore) -> None:
    run = harness.run_ids[0]
    bad = MetricRecord(run, "train/loss", None, 0, 0.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 (the remote worker sees its line close)
        store.write([_rec(run, "train/loss", 1, 1.0), bad])
    assert _rows(harness.reader()) == []
    if harness.kind == "remote":
        assert isinstance(harness.server_errors[0], sqlite3.IntegrityError)
    if harness.events is not None:
        assert harness.events == []  # trackers hear only of committed records


def test_rewind_drops_the_records_after_the_step_and_minus_one_drops_all(
        harness: Harness, store: RunStore) -> None:
    run, other = harness.run_ids
    store.write([_rec(r, k, s, float(s)) for r in (run, other) for k in ("a", "b")
                 for s in range(6)])
    store.rewind(run, 3)
    assert sorted({r[2] for r in _rows(harness.reader(), run)}) == [0, 1, 2, 3]
    assert len(_rows(harness.reader(), other)) == 12  # other runs are untouched
    store.write([_rec(run, "a", 4, 40.0)])  # the resume records step 4 again
    assert [r[-1] for r in _rows(harness.reader(), run) if r[2] == 4] == [40.0]
    store.rewind(run, -1)
    assert _rows(harness.reader(), run) == []  # step 0 too
    assert len(_rows(harness.reader(), other)) == 12
    if harness.events is not None:
        assert [e for e in harness.events if e[0] == "rewind"] == [
            ("rewind", run, 3), ("rewind", run, -1)]


def test_instances_in_several_threads_write_to_one_store(harness: Harness) -> None:
    errors: list[BaseException] = []

    def writer(run_id: str) -> None:
        try:
            with harness.open() as mine:
                for step in range(15):
                    mine.write([_rec(run_id, "train/loss", step, float(step))])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(r,)) for r in harness.run_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for run_id in harness.run_ids:
        assert [r[2] for r in _rows(harness.reader(), run_id)] == list(range(15))
    if harness.events is not None:
        assert sorted(len(t.events) for t in harness.trackers) == [15, 15]


def test_a_tracked_store_passes_the_lr_range_tables_through(tmp_path: Path, plan: Plan) -> None:
    # optimizer.lr: auto reads and writes them on the store an executor got (trackers or not).
    tracker = RecordingTracker()
    with Store(tmp_path / "store") as owner:
        tracked = TrackedStore(owner, [tracker], plan)
        assert tracked.lr_range("r") is None
        tracked.write_lr_range("r", {"model": {}}, {"steps": 5}, "ok", {"lrs": [0.1]},
                               {"torch": "2.x"})
        tracked.link_lr_range("contract", "r", {"optimizer.name": "adam"})
        with Store(tmp_path / "store") as reader:
            stored = reader.lr_range("r")
            linked = reader.lr_ranges("contract")
        assert stored is not None and stored == tracked.lr_range("r")
        assert (stored["status"], stored["result"], stored["env"]) == (
            "ok", {"lrs": [0.1]}, {"torch": "2.x"})
        assert list(linked["label"]) == [{"optimizer.name": "adam"}]
    assert tracker.events == []  # not mirrored
