"""The store contract: what every store that executors train into promises.

Three classes implement it: :class:`trainlab.store.Store` (SQLite, the source of truth), the
relay's :class:`trainlab.execute.relay.RemoteStore` (a worker's view of the owner's store) and
:class:`trainlab.loggers.TrackedStore` (the store with its writes mirrored to trackers).
``tests/unit/store/test_conformance.py`` runs one suite against all three.

The engine sees only the :class:`~trainlab.records.RecordSink` part (``write`` and ``rewind``,
whose contracts are written there); the executors see all of :class:`RunStore`.

This module imports nothing heavy (no torch, no pandas): workers import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from trainlab.records import RecordSink


class RunStore(RecordSink, Protocol):
    """What an executor needs of the store: claim a run, write and rewind its records, store
    its outcome, and name its checkpoint directory.

    **Runs are registered first.**  The process that owns the store registers the sweep
    (:meth:`trainlab.store.Store.register_sweep`, new runs ``pending``) before any executor
    claims one of its runs.  ``start_run`` and ``finish_run`` change nothing for a run id the
    store does not hold.

    **Claims (who may train a run).**  A run is trained by the process that claimed it with
    :meth:`start_run` and ends with :meth:`finish_run`.  The claim is checked and taken in one
    transaction, so of several processes that race for a run exactly one gets it.  A claim is
    refused (``False``) while

    - the run is finished for good (``ok`` or ``diverged``: :data:`trainlab.records.DONE`), or
    - it is ``running`` in another live process: on this host, its pid is alive; on another
      host, it wrote within :data:`trainlab.store.sqlite.STALE_AFTER_S` (every ``write``
      refreshes the run's heartbeat).

    Everything else may be claimed: a ``pending`` run, a ``failed``, ``oom`` or
    ``interrupted`` one (a retry), a ``running`` one whose process has died (a crash: the run
    resumes from its last checkpoint), and a run this same process already holds.  The holder
    is the process that owns the store: through a :class:`~trainlab.execute.relay.RemoteStore`
    the owner claims on the worker's behalf and its pid is recorded.

    **Writes return after their commit.**  Every call that changes the store (``start_run``,
    ``finish_run``, ``write``, ``rewind``) is one transaction: all of it or none of it is
    stored.  When the call returns, the transaction is committed and durable against the
    writer's crash, and every reader that reads afterwards (another connection, another
    process, ``trainlab ls``) sees it.  A remote store returns only once the owner has
    committed, so a checkpoint written after a ``write`` never gets ahead of the store.  Calls
    from one caller are applied in the order they were made.

    **Readers** (``runs``, ``metrics``, ``statuses`` of :class:`trainlab.store.Store`) are not
    part of this protocol: they read the store directory directly and see only committed
    transactions.

    **Threads and processes.**  Any number of processes may open the same store directory; one
    writes at a time and the others wait up to their timeout (then
    :class:`trainlab.errors.ConfigError` says the store is locked).  An instance belongs to the
    thread that made it: a :class:`trainlab.store.Store` holds a SQLite connection, and a
    remote store a channel that answers one request at a time.  Give every thread its own.
    """

    #: The store directory, as the process that owns the store names it.
    root: Path

    def start_run(self, run_id: str, env: dict[str, Any]) -> bool:
        """Claim the run for this process (see the class docstring for who may).

        True: the run is now ``running``, held by this process (host and pid recorded), with
        ``env`` (the environment it trains in) stored, its error and finish time cleared, its
        ``attempts`` counted up and its heartbeat set; its first start time is kept.  False:
        nothing changed (finished for good, or held by another live process).
        """

    def finish_run(self, run_id: str, status: str, error: str | None,
                   summary: dict[str, Any]) -> None:
        """Store the run's outcome: ``status`` (ok, failed, diverged, interrupted, oom), the
        finish time, ``error`` (None clears it) and ``summary`` (JSON; other values are stored
        as their ``str``).  This releases the claim; ``ok`` and ``diverged`` end the run for
        good, the others let a later ``start_run`` retry it.  Its records stay."""

    def run_dir(self, run_id: str) -> Path:
        """The run's checkpoint and artifact directory, ``<root>/runs/<run_id>``; the call does
        not create it."""


__all__ = ["RecordSink", "RunStore"]
