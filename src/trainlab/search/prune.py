"""Pruning inside the run: a callback that asks the study's pruner after each validation.

The callback travels with its run (:attr:`trainlab.plan.PlannedRun.callbacks`) to whichever
process trains it (this one, a pool worker, a local Ray task) and decides there, so a pruned
run stops at once whatever the executor.  It reads the other trials of its study from the
store, read-only (SQLite in WAL mode serves readers while the sweep writes): the store, not a
study kept in memory, is what every process shares and what survives a kill.  The engine
knows none of this: it calls ``on_eval_end`` and honours :class:`~trainlab.hooks.StopTraining`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from trainlab.hooks import Callback, RunState, StopTraining
from trainlab.search.spec import PruneSpec

# Stored statuses as the pruner sees a peer trial.
_STATES = {"ok": "complete", "pruned": "pruned", "failed": "failed", "diverged": "failed",
           "oom": "failed"}


class PruneCallback(Callback):
    """Stops a trial its pruner rejects: the run ends as ``pruned`` with the epoch it reached.

    ``peers``: the other runs of the study, in trial order (with seeds, each seed's run is one
    peer: the pruner compares runs, and a trial is pruned when any of its runs is).
    """

    def __init__(self, db: str, metric: str, direction: str, prune: PruneSpec, epochs: int,
                 trials: int, peers: tuple[str, ...]) -> None:
        self.db, self.metric, self.direction, self.prune = db, metric, direction, prune
        self.epochs, self.trials, self.peers = epochs, trials, peers
        self.history: list[float] = []
        self.final_status: str | None = None
        self.final_summary: dict[str, Any] = {}
        self.note: str | None = None

    def on_eval_end(self, state: RunState, values: Mapping[str, float]) -> None:
        value = values.get(self.metric)
        if value is None:
            return
        self.history.append(float(value))
        if len(self.history) < self.prune.min_epochs or state.epoch >= self.epochs:
            return  # too early to judge, or the last epoch: nothing left to save
        from trainlab.search.optuna_glue import prune_decision

        try:
            peers = read_peers(self.db, self.peers, self.metric)
        except sqlite3.Error as exc:
            # Pruning saves compute; it is never worth failing a run over.  A Ray task on a
            # node that cannot see the store trains the trial to its end.
            self.note = f"not pruned: the store could not be read here ({exc})"
            return
        if prune_decision(self.prune, self.direction, self.epochs, self.trials, peers,
                          self.history):
            self.final_status = "pruned"
            self.final_summary = {"pruned_epoch": state.epoch,
                                  "pruned_by": self.prune.method}
            raise StopTraining(f"pruned by {self.prune.method}: {self.metric} "
                               f"{self.history[-1]:.4g} after {len(self.history)} "
                               "evaluation(s)")

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state.get("history", [])]


def read_peers(db: str, run_ids: tuple[str, ...], metric: str) -> list[Any]:
    """The peers' statuses and per-evaluation values, read-only, in ``run_ids`` order."""
    from trainlab.search.optuna_glue import PeerTrial

    if not run_ids:
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
    try:
        marks = ",".join("?" * len(run_ids))
        status = dict(conn.execute(f"SELECT run_id, status FROM runs WHERE run_id IN ({marks})",
                                   run_ids).fetchall())
        values: dict[str, list[float]] = {}
        for run_id, value in conn.execute(
                f"SELECT run_id, value FROM metrics WHERE key=? AND run_id IN ({marks}) "
                "ORDER BY run_id, step", (metric, *run_ids)):
            if value is not None:
                values.setdefault(run_id, []).append(float(value))
    finally:
        conn.close()
    return [PeerTrial(_STATES.get(status.get(r, ""), "running"), tuple(values.get(r, ())))
            for r in run_ids if r in status]
