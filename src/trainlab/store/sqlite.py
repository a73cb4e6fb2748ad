"""The embedded store: SQLite in WAL mode, one row per metric value.

Layout of a store directory::

    trainlab.db        runs, sweeps, sweep membership, metrics
    runs/<run_id>/     checkpoints (last.pt, best.pt) and artifacts

Every write is a short transaction, so a killed writer loses at most the records it had not
yet handed over, and readers (``ls``, ``report``) can read while a sweep writes.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trainlab.errors import ConfigError
from trainlab.records import MetricRecord

DEFAULT_STORE = "trainlab-runs"
SCHEMA_VERSION = 1

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        error TEXT,
        env TEXT,
        summary TEXT,
        host TEXT,
        pid INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS sweeps (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        varied TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sweep_runs (
        sweep TEXT NOT NULL,
        run_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        overrides TEXT NOT NULL,
        PRIMARY KEY (sweep, run_id))""",
    """CREATE TABLE IF NOT EXISTS metrics (
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        step INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        time REAL NOT NULL,
        value REAL,
        PRIMARY KEY (run_id, key, step)) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS metrics_epoch ON metrics (run_id, epoch)""",
    # LR range tests (`trainlab lr-find`, `optimizer.lr: auto`): one row per distinct test, its
    # id the hash of what shapes the curve (data, model, optimizer without its LR, fine-tuning,
    # clipping, device, ramp settings); `result` holds the curve, stop, cost and suggestions.
    """CREATE TABLE IF NOT EXISTS lr_ranges (
        range_id TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        settings TEXT NOT NULL,
        status TEXT NOT NULL,
        result TEXT NOT NULL,
        env TEXT,
        created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lr_range_sweeps (
        sweep TEXT NOT NULL,
        range_id TEXT NOT NULL,
        label TEXT NOT NULL,
        PRIMARY KEY (sweep, range_id))""",
]


def store_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The store directory: ``path``, else $TRAINLAB_STORE, else ./trainlab-runs."""
    return Path(path or os.environ.get("TRAINLAB_STORE") or DEFAULT_STORE).expanduser()


def open_store(path: str | os.PathLike[str] | None = None, *, create: bool = True) -> Store:
    """Open (and with ``create``, make) the store at ``path``; see :func:`store_path`."""
    return Store(store_path(path), create=create)


class Store:
    """Runs and their metrics.  Safe for several processes (WAL, busy timeout)."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root
        self.db_path = root / "trainlab.db"
        if not create and not self.db_path.is_file():
            raise ConfigError(f"no trainlab store at {str(root)!r} (looked for {self.db_path}); "
                              "run a sweep first, or pass --store / set TRAINLAB_STORE",
                              field="--store")
        try:
            if create:
                root.mkdir(parents=True, exist_ok=True)
                (root / "runs").mkdir(exist_ok=True)
            self.conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 30000")
            if create:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
            else:
                self._check_version()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"the store at {str(root)!r} cannot be used: {exc}. Choose a "
                              "writable directory with --store or TRAINLAB_STORE.",
                              field="--store") from None

    # --- schema --------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx():
            for statement in _SCHEMA:
                self.conn.execute(statement)
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConfigError(f"the store at {self.root} has schema {row[0]}, newer than this "
                                  f"trainlab understands ({SCHEMA_VERSION}); upgrade trainlab")

    def _check_version(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise ConfigError(f"{self.db_path} is not a trainlab store")

    def _tx(self) -> _Transaction:
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    # --- writes --------------------------------------------------------------------------------

    def register_sweep(self, name: str, config: dict[str, Any], varied: list[str],
                       runs: Sequence[tuple[str, int, dict[str, Any], dict[str, Any]]]) -> None:
        """Record the sweep and its runs (id, index, overrides, resolved config).

        New runs start as ``pending``; runs already stored keep their status and metrics.  The
        sweep's membership is replaced, so a run removed from the grid leaves the sweep (its
        data stays in the store).
        """
        now = time.time()
        with self._tx():
            self.conn.execute(
                "INSERT INTO sweeps VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "config=excluded.config, varied=excluded.varied, updated=excluded.updated",
                (name, json.dumps(config), json.dumps(varied), now, now))
            self.conn.execute("DELETE FROM sweep_runs WHERE sweep = ?", (name,))
            for run_id, index, overrides, resolved in runs:
                self.conn.execute(
                    "INSERT OR IGNORE INTO runs (run_id, config, status, created) "
                    "VALUES (?, ?, 'pending', ?)", (run_id, json.dumps(resolved), now))
                self.conn.execute("INSERT INTO sweep_runs VALUES (?, ?, ?, ?)",
                                  (name, run_id, index, json.dumps(overrides, default=str)))

    def start_run(self, run_id: str, env: dict[str, Any]) -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE runs SET status='running', started=COALESCE(started, ?), finished=NULL, "
                "error=NULL, env=?, host=?, pid=?, attempts=attempts+1 WHERE run_id=?",
                (time.time(), json.dumps(env, default=str), socket.gethostname(), os.getpid(),
                 run_id))

    def finish_run(self, run_id: str, status: str, error: str | None,
                   summary: dict[str, Any]) -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE runs SET status=?, finished=?, error=?, summary=? WHERE run_id=?",
                (status, time.time(), error, json.dumps(summary, default=str), run_id))

    def write(self, records: Sequence[MetricRecord]) -> None:
        """Insert metric rows in one transaction (a rewritten (run, key, step) replaces)."""
        if not records:
            return
        with self._tx():
            self.conn.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                [(r.run_id, r.key, r.step, r.epoch, r.time, r.value) for r in records])

    def rewind(self, run_id: str, epoch: int) -> None:
        """Drop the run's rows after ``epoch``: what a resume from that checkpoint redoes."""
        with self._tx():
            self.conn.execute("DELETE FROM metrics WHERE run_id=? AND epoch>?", (run_id, epoch))

    # --- reads ---------------------------------------------------------------------------------

    def sweeps(self) -> pd.DataFrame:
        rows = self.conn.execute(
            "SELECT s.name, s.updated, COUNT(r.run_id), "
            "SUM(CASE WHEN r.status IN ('ok', 'diverged') THEN 1 ELSE 0 END) "
            "FROM sweeps s LEFT JOIN sweep_runs m ON m.sweep=s.name "
            "LEFT JOIN runs r ON r.run_id=m.run_id GROUP BY s.name ORDER BY s.updated").fetchall()
        return pd.DataFrame(rows, columns=["sweep", "updated", "runs", "finished"])

    def sweep_info(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT config, varied FROM sweeps WHERE name=?",
                                (name,)).fetchone()
        if row is None:
            return None
        return {"name": name, "config": json.loads(row[0]), "varied": json.loads(row[1])}

    def runs(self, sweep: str | None = None) -> pd.DataFrame:
        """One row per (sweep, run): run_id, sweep, index, status, config (dict), times, ..."""
        query = (
            "SELECT r.run_id, m.sweep, m.idx, r.status, r.config, m.overrides, r.created, "
            "r.started, r.finished, r.error, r.env, r.summary, r.attempts, r.host, r.pid "
            "FROM runs r LEFT JOIN sweep_runs m ON m.run_id = r.run_id")
        params: tuple[Any, ...] = ()
        if sweep is not None:
            query += " WHERE m.sweep = ?"
            params = (sweep,)
        query += " ORDER BY m.sweep, m.idx, r.created"
        rows = self.conn.execute(query, params).fetchall()
        columns = ["run_id", "sweep", "index", "status", "config", "overrides", "created",
                   "started", "finished", "error", "env", "summary", "attempts", "host", "pid"]
        frame = pd.DataFrame(rows, columns=columns)
        for col in ("config", "overrides", "env", "summary"):
            frame[col] = [json.loads(v) if isinstance(v, str) else {} for v in frame[col]]
        frame["index"] = frame["index"].astype("Int64")
        return frame

    def metrics(self, run_ids: Iterable[str] | None = None,
                keys: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per recorded value: run_id, key, step, epoch, time, value."""
        query = "SELECT run_id, key, step, epoch, time, value FROM metrics"
        clauses, params = [], []
        if run_ids is not None:
            ids = list(run_ids)
            clauses.append(f"run_id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        if keys is not None:
            ks = list(keys)
            clauses.append(f"key IN ({','.join('?' * len(ks))})")
            params.extend(ks)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY run_id, step, key"
        rows = self.conn.execute(query, params).fetchall()
        return pd.DataFrame(rows, columns=["run_id", "key", "step", "epoch", "time", "value"])

    def statuses(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Status, host and pid of the given runs that are in the store."""
        ids = list(run_ids)
        out: dict[str, dict[str, Any]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            rows = self.conn.execute(
                f"SELECT run_id, status, host, pid FROM runs WHERE run_id IN "
                f"({','.join('?' * len(part))})", part).fetchall()
            out.update({r[0]: {"status": r[1], "host": r[2], "pid": r[3]} for r in rows})
        return out

    # --- LR range tests -------------------------------------------------------------------------

    def write_lr_range(self, range_id: str, config: dict[str, Any], settings: dict[str, Any],
                       status: str, result: dict[str, Any], env: dict[str, Any] | None = None,
                       ) -> None:
        """Store (or replace) one LR range test: ``result`` is ``LRRangeResult.to_dict()``."""
        with self._tx():
            self.conn.execute(
                "INSERT OR REPLACE INTO lr_ranges VALUES (?, ?, ?, ?, ?, ?, ?)",
                (range_id, json.dumps(config), json.dumps(settings), status,
                 json.dumps(result, default=str), json.dumps(env or {}, default=str),
                 time.time()))

    def link_lr_range(self, sweep: str, range_id: str, label: dict[str, Any]) -> None:
        """Record that ``sweep`` used the test ``range_id`` for its runs labelled ``label``
        (the sweep's varied values, e.g. ``{"optimizer.name": "sgd"}``)."""
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO lr_range_sweeps VALUES (?, ?, ?)",
                              (sweep, range_id, json.dumps(label, default=str)))

    def lr_range(self, range_id: str) -> dict[str, Any] | None:
        """One stored range test: range_id, config, settings, status, result, env, created."""
        row = self.conn.execute(
            "SELECT range_id, config, settings, status, result, env, created FROM lr_ranges "
            "WHERE range_id=?", (range_id,)).fetchone()
        if row is None:
            return None
        return {"range_id": row[0], "config": json.loads(row[1]), "settings": json.loads(row[2]),
                "status": row[3], "result": json.loads(row[4]), "env": json.loads(row[5] or "{}"),
                "created": row[6]}

    def lr_ranges(self, sweep: str | None = None) -> pd.DataFrame:
        """The stored LR range tests, one row per (test, sweep that used it).

        Columns: range_id, sweep (None for a test no sweep is linked to), label (dict of the
        sweep's varied values for the runs it served), status (ok | untrusted | diverged),
        created, config (dict), settings (dict), result (dict: the whole record), and for
        convenience from the result: lrs, losses, smoothed (lists), stopped, stop_lr, steps,
        seconds, steepest, valley, minimum (LR of the lowest loss / 10), min_loss_lr,
        candidates (list), trusted (bool), flags (list of {code, message}), explanation.
        """
        query = ("SELECT r.range_id, m.sweep, m.label, r.status, r.created, r.config, "
                 "r.settings, r.result FROM lr_ranges r "
                 "LEFT JOIN lr_range_sweeps m ON m.range_id = r.range_id")
        params: tuple[Any, ...] = ()
        if sweep is not None:
            query += " WHERE m.sweep = ?"
            params = (sweep,)
        rows = self.conn.execute(query + " ORDER BY m.sweep, r.created", params).fetchall()
        records = []
        for rid, sw, label, status, created, config, settings, result in rows:
            res = json.loads(result)
            sug = res.get("suggestions", {})
            records.append({
                "range_id": rid, "sweep": sw, "label": json.loads(label) if label else {},
                "status": status, "created": created, "config": json.loads(config),
                "settings": json.loads(settings), "result": res, "lrs": res.get("lrs"),
                "losses": res.get("losses"), "smoothed": res.get("smoothed"),
                "stopped": res.get("stopped"), "stop_lr": res.get("stop_lr"),
                "steps": res.get("steps"), "seconds": res.get("seconds"),
                **{k: sug.get(k) for k in ("steepest", "valley", "minimum", "min_loss_lr",
                                           "candidates", "trusted", "flags")},
                "explanation": res.get("explanation")})
        columns = ["range_id", "sweep", "label", "status", "created", "config", "settings",
                   "result", "lrs", "losses", "smoothed", "stopped", "stop_lr", "steps",
                   "seconds", "steepest", "valley", "minimum", "min_loss_lr", "candidates",
                   "trusted", "flags", "explanation"]
        return pd.DataFrame(records, columns=columns)

    def find_run(self, prefix: str) -> str:
        """The full id of the run whose id starts with ``prefix``."""
        rows = self.conn.execute("SELECT run_id FROM runs WHERE run_id LIKE ? || '%'",
                                 (prefix,)).fetchall()
        if len(rows) == 1:
            return str(rows[0][0])
        if not rows:
            raise ConfigError(f"`RUN`: no run with id {prefix!r} in {self.root}; "
                              "`trainlab ls` lists them", field="RUN")
        raise ConfigError(f"`RUN`: {prefix!r} matches {len(rows)} runs "
                          f"({', '.join(r[0] for r in rows[:5])}...); give more characters",
                          field="RUN")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time, no lost update."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
