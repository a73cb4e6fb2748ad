"""The embedded store: SQLite in WAL mode, one row per metric value.

Layout of a store directory::

    trainlab.db        runs, sweeps, sweep membership, metrics
    runs/<run_id>/     checkpoints (last.pt, best.pt) and artifacts

Every write is a short transaction, so a killed writer loses at most the records it had not
yet handed over, and readers (``ls``, ``report``) can read while a sweep writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainlab.errors import ConfigError, TrainlabError
from trainlab.records import DONE, MetricRecord

if TYPE_CHECKING:  # pandas is imported where a frame is made: `trainlab run` needs none
    import pandas as pd

DEFAULT_STORE = "trainlab-runs"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    # Version 1 as first released; later changes are MIGRATIONS below.
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
]


# Each entry upgrades the store from the version before it; a new store is created at version
# 1 by _SCHEMA and then migrated like an old one, so both paths run the same statements.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        # When the run last wrote: a "running" run on another host whose heartbeat is old
        # is treated as crashed (a pid check only works on the same host).
        "ALTER TABLE runs ADD COLUMN heartbeat REAL",
        "CREATE INDEX IF NOT EXISTS sweep_runs_run ON sweep_runs (run_id)",
    ],
    # The run's predicted memory and time, made before it trained (trainlab.estimate).
    3: ["ALTER TABLE runs ADD COLUMN estimate TEXT"],
    4: [
        # LR range tests (`trainlab lr-find`, `optimizer.lr: auto`): one row per distinct
        # test, its id the hash of what shapes the curve (data, model, optimizer without its
        # LR, fine-tuning, clipping, device, ramp settings); `result` holds the curve, stop,
        # cost and suggestions.
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
    ],
    # Search trials (trainlab.search): status ``pruned`` (a free-text status, so no table
    # change for it) and the epoch at which the pruner stopped the run (NULL for every other).
    5: ["ALTER TABLE runs ADD COLUMN stopped_epoch INTEGER"],
}
SCHEMA_VERSION = max(MIGRATIONS)


STALE_AFTER_S = 600.0  # a run on another host that wrote nothing for this long has crashed


def held_elsewhere(info: dict[str, Any]) -> bool:
    """Whether a ``running`` run (its host, pid, heartbeat) is alive in another process."""
    pid, host, heartbeat = info.get("pid"), info.get("host"), info.get("heartbeat")
    if pid is None or (pid == os.getpid() and host == socket.gethostname()):
        return False
    if host != socket.gethostname():
        # Another machine: trust its heartbeat (every record written refreshes it).
        return heartbeat is not None and time.time() - heartbeat < STALE_AFTER_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed process that nobody has reaped yet still answers kill(pid, 0): it holds
    nothing (Linux; elsewhere assume it is alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class StoreFull(TrainlabError):
    """The store's disk (or SQLite's size limit) is full: the write was rolled back."""

    def __init__(self, root: Path, exc: BaseException) -> None:
        import shutil

        self.root = root
        try:
            free = f"{shutil.disk_usage(root).free / 2**20:,.0f} MiB free"
        except OSError:
            free = "free space unknown"
        super().__init__(
            f"the store at {str(root)!r} is full ({exc}; {free} on its file system): the last "
            "write was rolled back, so the store is consistent. Free some space (or move the "
            "store and pass --store), then rerun the same command to resume.")


def _full(exc: BaseException) -> bool:
    import errno

    return ("database or disk is full" in str(exc)
            or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC))


def _not_writable(root: Path, db: Path) -> str | None:
    """Why this process cannot write the store (None: it can).  ``os.access`` also reports a
    read-only file system to root, whom permissions do not stop."""
    if not os.access(root, os.W_OK):
        return f"cannot write to the directory {root}"
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists() and not os.access(path, os.W_OK):
            return f"cannot write to {path}"
    return None


def _read_only_error(exc: BaseException) -> bool:
    text = str(exc).replace("-", "").replace(" ", "")
    return "readonly" in text or "unabletoopendatabasefile" in text


def _damage_error(exc: BaseException) -> bool:
    return any(s in str(exc) for s in ("malformed", "not a database", "database corrupt"))


def damage_error(exc: BaseException) -> bool:
    """Whether a SQLite error says the database file is damaged (not locked, not full)."""
    return _damage_error(exc)


def truncated(db: Path) -> str | None:
    """Whether the database file is shorter than its own header says (a copy cut short, a
    disk that filled mid-write): what it lacks, else None.  Reads 100 bytes."""
    try:
        wal = db.with_name(db.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            # Another connection is (or was) writing: a checkpoint copies pages from the WAL
            # into the file page 1 first, so the header can count pages not yet written.
            # SQLite reads those from the WAL; a short file here is not damage.
            return None
        with db.open("rb") as fh:
            header = fh.read(100)
        size = db.stat().st_size
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None if not header else "the file is not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96]  # the page count is kept up to date
    if valid and pages and size < pages * page_size:
        return (f"the file holds {size:,} bytes but its header counts {pages} pages of "
                f"{page_size} bytes ({pages * page_size:,} bytes): it was cut short")
    return None


def damaged_message(db: Path, what: str) -> str:
    """The message for a damaged database, with how to recover (it is left untouched)."""
    fixed = db.with_name("fixed.db")
    return (f"the store's database {db} is damaged ({what}); trainlab has not changed it. "
            f"To recover what it still holds: sqlite3 {db} \".recover\" | sqlite3 {fixed} , "
            f"then keep the damaged file aside and move {fixed.name} to {db.name} (or restore "
            "the store from a backup). Checkpoints under runs/ are untouched.")


def store_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The store directory: ``path``, else $TRAINLAB_STORE, else ./trainlab-runs."""
    return Path(path or os.environ.get("TRAINLAB_STORE") or DEFAULT_STORE).expanduser()


def open_store(path: str | os.PathLike[str] | None = None, *, create: bool = True,
               timeout: float = 30.0) -> Store:
    """Open (and with ``create``, make) the store at ``path``; see :func:`store_path`.

    ``timeout`` is how long to wait for another process's write lock.
    """
    return Store(store_path(path), create=create, timeout=timeout)


class Store:
    """Runs and their metrics.  Safe for several processes (WAL, busy timeout)."""

    def __init__(self, root: Path, *, create: bool = True, timeout: float = 30.0) -> None:
        self.root = root
        self.db_path = root / "trainlab.db"
        self.read_only = False
        self.read_only_why = ""
        if not create and not self.db_path.is_file():
            raise ConfigError(f"no trainlab store at {str(root)!r} (looked for {self.db_path}); "
                              "run a sweep first, or pass --store / set TRAINLAB_STORE",
                              field="--store")
        damage = truncated(self.db_path)
        if damage:
            raise self._damaged(damage)
        why = _not_writable(root, self.db_path) if self.db_path.is_file() else None
        if why:  # a read-only directory, file or file system: readers read, writers refuse
            self._open_read_only(why)
            return
        try:
            if create:
                root.mkdir(parents=True, exist_ok=True)
                (root / "runs").mkdir(exist_ok=True)
            self.conn = sqlite3.connect(self.db_path, timeout=timeout, isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise ConfigError(
                    f"the store at {str(root)!r} is locked by another process (waited "
                    f"{timeout:g} s); wait for it or use another --store", field="--store"
                ) from None
            if _damage_error(exc):
                raise self._damaged(str(exc)) from None
            if not self.db_path.is_file() or not _read_only_error(exc):
                raise self._unusable(exc) from None
            self._open_read_only(str(exc))
        except sqlite3.DatabaseError as exc:
            raise (self._damaged(str(exc)) if _damage_error(exc) else self._unusable(exc)) \
                from None
        except OSError as exc:
            raise self._unusable(exc) from None

    def _unusable(self, exc: BaseException) -> ConfigError:
        return ConfigError(f"the store at {str(self.root)!r} cannot be used: {exc}. Choose a "
                           "writable directory with --store or TRAINLAB_STORE.",
                           field="--store")

    def _damaged(self, what: str) -> ConfigError:
        return ConfigError(damaged_message(self.db_path, what), field="--store")

    def _open_read_only(self, why: str) -> None:
        """Readers of a store they cannot write (read-only media, directory or file): no locks,
        no migration.  ``mode=ro`` sees a live writer's WAL; where SQLite cannot open it that
        way (a WAL database whose -shm file cannot be created), ``immutable=1``."""
        self.read_only, self.read_only_why = True, why
        uri = self.db_path.resolve().as_uri()
        try:
            self.conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if _damage_error(exc):
                raise self._damaged(str(exc)) from None
            self.conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        try:
            version = self._version()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        if version is None:
            raise ConfigError(f"{self.db_path} is not a trainlab store", field="--store")
        if version != SCHEMA_VERSION:
            raise ConfigError(f"the store at {str(self.root)!r} is read-only and has schema "
                              f"version {version}; this trainlab reads version "
                              f"{SCHEMA_VERSION}. Open it once with write access to upgrade it.",
                              field="--store")

    def read_only_message(self) -> str:
        """Why a writer cannot use this store (it is read-only)."""
        return (f"the store at {str(self.root)!r} is read-only ({self.read_only_why}): `ls`, "
                "`show`, `report` and `compare` can read it, but training writes to it. Make "
                "it writable, or choose another store with --store or TRAINLAB_STORE.")

    # --- schema --------------------------------------------------------------------------------

    def _version(self) -> int | None:
        try:
            row = self.conn.execute(
                "SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row else None

    def _migrate(self) -> None:
        version = self._version()
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigError(f"the store at {self.root} has schema version {version}, newer "
                              f"than this trainlab understands ({SCHEMA_VERSION}); upgrade "
                              "trainlab", field="--store")
        if version == SCHEMA_VERSION:
            return
        with self._tx():
            version = self._version()  # another process may have migrated meanwhile
            if version is None:
                for statement in _SCHEMA:
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
                version = 1
            for target in sorted(v for v in MIGRATIONS if v > version):
                for statement in MIGRATIONS[target]:
                    self.conn.execute(statement)
                self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                                  (str(target),))

    @property
    def schema_version(self) -> int | None:
        return self._version()

    def _tx(self) -> _Transaction:
        if self.read_only:
            raise ConfigError(self.read_only_message(), field="--store")
        return _Transaction(self.conn, self.root)

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

    def set_estimates(self, estimates: dict[str, dict[str, Any]]) -> None:
        """Store each run's prediction (replacing an older one)."""
        with self._tx():
            self.conn.executemany("UPDATE runs SET estimate=? WHERE run_id=?",
                                  [(json.dumps(e), r) for r, e in estimates.items()])

    def start_run(self, run_id: str, env: dict[str, Any]) -> bool:
        """Claim the run for this process and mark it running; False when another live
        process holds it, or finished it since this process planned (two sweeps that share a
        run never train it twice)."""
        with self._tx():
            row = self.conn.execute("SELECT status, host, pid, heartbeat FROM runs WHERE "
                                    "run_id=?", (run_id,)).fetchone()
            if row is not None and row[0] in DONE:
                return False
            if row is not None and row[0] == "running" and held_elsewhere(
                    {"host": row[1], "pid": row[2], "heartbeat": row[3]}):
                return False
            self.conn.execute(
                "UPDATE runs SET status='running', started=COALESCE(started, ?), finished=NULL, "
                "error=NULL, env=?, host=?, pid=?, attempts=attempts+1, heartbeat=? "
                "WHERE run_id=?",
                (time.time(), json.dumps(env, default=str), socket.gethostname(), os.getpid(),
                 time.time(), run_id))
        return True

    def finish_run(self, run_id: str, status: str, error: str | None,
                   summary: dict[str, Any]) -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE runs SET status=?, finished=?, error=?, summary=?, stopped_epoch=? "
                "WHERE run_id=?",
                (status, time.time(), error, json.dumps(summary, default=str),
                 summary.get("pruned_epoch") if status == "pruned" else None, run_id))
        self._checkpoint_wal()

    def _checkpoint_wal(self) -> None:
        """Copy the WAL's pages into the database file at each run's end, so the WAL is never
        the only copy of a finished run for long (a user who deletes ``trainlab.db-wal`` as a
        temporary file then loses at most the run in progress).  PASSIVE: it waits for no
        reader or writer and copies what it can; a failure (a full disk) leaves the WAL whole."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def write(self, records: Sequence[MetricRecord]) -> None:
        """Insert metric rows in one transaction (a rewritten (run, key, step) replaces)."""
        if not records:
            return
        now = time.time()
        with self._tx():
            self.conn.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                [(r.run_id, r.key, r.step, r.epoch, r.time, r.value) for r in records])
            self.conn.executemany("UPDATE runs SET heartbeat=? WHERE run_id=?",
                                  [(now, run) for run in {r.run_id for r in records}])

    def rewind(self, run_id: str, step: int) -> None:
        """Drop the run's rows after ``step``: what a resume from that checkpoint redoes."""
        with self._tx():
            self.conn.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, step))

    def recorded_through(self, run_id: str, epoch: int, step: int) -> bool:
        """Whether the store holds the run's records that a checkpoint taken at ``epoch``
        (the last completed one) and ``step`` saw committed: its step-0 rows (epoch 0) and
        rows in every epoch from 1 to ``epoch`` (each epoch ends with its records).  False
        after records were lost (a deleted ``-wal`` file): the engine then restarts the run
        rather than resume it with epochs missing.  One indexed query."""
        rows = self.conn.execute(
            "SELECT DISTINCT epoch FROM metrics WHERE run_id=? AND step<=? AND epoch<=?",
            (run_id, step, epoch)).fetchall()
        return {int(r[0]) for r in rows} >= set(range(epoch + 1))

    # --- reads ---------------------------------------------------------------------------------

    def sweeps(self) -> pd.DataFrame:
        import pandas as pd

        rows = self.conn.execute(
            "SELECT s.name, s.updated, COUNT(r.run_id), "
            "SUM(CASE WHEN r.status IN ('ok', 'diverged', 'pruned') THEN 1 ELSE 0 END) "
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
        import pandas as pd

        query = (
            "SELECT r.run_id, m.sweep, m.idx, r.status, r.config, m.overrides, r.created, "
            "r.started, r.finished, r.error, r.env, r.summary, r.attempts, r.host, r.pid, "
            "r.estimate, r.stopped_epoch "
            "FROM runs r LEFT JOIN sweep_runs m ON m.run_id = r.run_id")
        params: tuple[Any, ...] = ()
        if sweep is not None:
            query += " WHERE m.sweep = ?"
            params = (sweep,)
        query += " ORDER BY m.sweep, m.idx, r.created"
        rows = self.conn.execute(query, params).fetchall()
        columns = ["run_id", "sweep", "index", "status", "config", "overrides", "created",
                   "started", "finished", "error", "env", "summary", "attempts", "host", "pid",
                   "estimate", "stopped_epoch"]
        frame = pd.DataFrame(rows, columns=columns)
        for col in ("config", "overrides", "env", "summary", "estimate"):
            frame[col] = [json.loads(v) if isinstance(v, str) else {} for v in frame[col]]
        frame["index"] = frame["index"].astype("Int64")
        return frame

    def metrics(self, run_ids: Iterable[str] | None = None,
                keys: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per recorded value: run_id, key, step, epoch, time, value."""
        import pandas as pd

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

    def summaries(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Status and summary (a dict) of the given runs that are in the store, without the
        frame of :meth:`runs` (no pandas: what `trainlab run` prints at its end)."""
        ids = list(run_ids)
        out: dict[str, dict[str, Any]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            rows = self.conn.execute(
                f"SELECT run_id, status, summary FROM runs WHERE run_id IN "
                f"({','.join('?' * len(part))})", part).fetchall()
            out.update({r[0]: {"status": r[1], "summary": json.loads(r[2])
                               if isinstance(r[2], str) else {}} for r in rows})
        return out

    def statuses(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Status, host, pid and last write time of the given runs that are in the store."""
        ids = list(run_ids)
        out: dict[str, dict[str, Any]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            rows = self.conn.execute(
                f"SELECT run_id, status, host, pid, heartbeat FROM runs WHERE run_id IN "
                f"({','.join('?' * len(part))})", part).fetchall()
            out.update({r[0]: {"status": r[1], "host": r[2], "pid": r[3], "heartbeat": r[4]}
                        for r in rows})
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
        import pandas as pd

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

    def __init__(self, conn: sqlite3.Connection, root: Path) -> None:
        self.conn, self.root = conn, root

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise ConfigError(f"the store at {str(self.root)!r} is locked by another process; "
                              "wait for it or use another --store", field="--store") from None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if not exc_type:
                self.conn.execute("COMMIT")
            elif self.conn.in_transaction:  # SQLite rolls back itself on some errors (FULL)
                self.conn.execute("ROLLBACK")
        except sqlite3.OperationalError as failed:
            if not _full(failed):
                raise
            exc = failed
        if exc is not None and _full(exc):
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise StoreFull(self.root, exc) from None
