"""Units of work: what an executor hands to one process at a time.

A unit is either one run that trains alone or one stack (``train.stack``: runs that train
together as one stacked model, :mod:`trainlab.stacks`).  Every executor plans its units the
same way, in the process that owns the store (where ``trainlab run``'s estimate left its
stack caps), and trains a unit with :func:`trainlab.execute.local.train_unit` wherever it
runs: the local executor in its own process, a ``--jobs`` worker or a Ray task in theirs,
with a store that relays to the owner (:mod:`trainlab.execute.relay`).  So two ``--jobs``
workers train two stacks at once, each stack in one worker, and every run is stored under its
own id as the local executor stores it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainlab.hooks import RunOutcome

if TYPE_CHECKING:
    from trainlab.plan import PlannedRun
    from trainlab.store.base import RunStore


@dataclass(frozen=True)
class Unit:
    """One run, or the runs of one stack (two or more), in sweep order; ``alone``: why a run
    that sets ``train.stack`` trains by itself (None: it does not set it, or it stacks)."""

    runs: tuple[PlannedRun, ...]
    alone: str | None = None

    @property
    def stacked(self) -> bool:
        return len(self.runs) > 1

    @property
    def first(self) -> PlannedRun:
        return self.runs[0]

    def __len__(self) -> int:
        return len(self.runs)


# Why a run that carries its own engine callbacks (a search trial's pruner) does not stack.
OWN_CALLBACKS = ("a search's pruner watches each run's epochs, which a stacked run does not "
                 "report to it")


def plan_units(todo: Sequence[PlannedRun]) -> list[Unit]:
    """The runs to train as units, in sweep order: each stack where its first run is, every
    other run by itself (:func:`trainlab.stacks.plan_stacks` groups them, with the caps the
    last estimate in this process found).  A run with callbacks of its own (a search trial's
    pruner, ``PlannedRun.callbacks``) trains alone: the stacked trainer calls no callback."""
    if all(p.run.config.train.stack == "off" for p in todo):
        return [Unit((p,)) for p in todo]
    from trainlab.stacks import plan_stacks

    alone = {p.run_id: OWN_CALLBACKS for p in todo
             if p.callbacks and p.run.config.train.stack != "off"}
    stacks = plan_stacks([p for p in todo if p.run_id not in alone])
    alone.update(stacks.alone)
    of = {p.run_id: tuple(stack) for stack in stacks.stacks for p in stack}
    units: list[Unit] = []
    placed: set[str] = set()
    for planned in todo:
        if planned.run_id in placed:
            continue
        members = of.get(planned.run_id, (planned,))
        placed.update(p.run_id for p in members)
        units.append(Unit(members, None if len(members) > 1 else alone.get(planned.run_id)))
    return units


class Claims:
    """What the owner of the store answered a remote unit's runs: which it claimed, which
    another process holds, and each outcome it stored.  When the process training the unit
    dies, :meth:`lost` says what became of each of its runs."""

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.refused: set[str] = set()
        self.stored: dict[str, RunOutcome] = {}

    def note(self, message: tuple[Any, ...], value: Any) -> None:
        """Record the answer ``value`` to the store request ``message``."""
        kind = message[0]
        if kind == "start_run":
            (self.claimed if value else self.refused).add(message[1])
        elif kind == "finish_run":
            self.stored[message[1]] = RunOutcome(message[1], message[2], message[3],
                                                 dict(message[4]))

    def lost(self, unit: Unit, store: RunStore, error: str,
             skip: Callable[[str], bool] = lambda run_id: False
             ) -> list[tuple[PlannedRun, RunOutcome]]:
        """The outcome of each run of ``unit`` whose process died: what it stored already,
        ``busy`` for a run another process holds, else ``failed`` with ``error`` (stored);
        runs ``skip(run_id)`` picks are left as they are (a Ctrl-C came before they began)."""
        out: list[tuple[PlannedRun, RunOutcome]] = []
        for planned in unit.runs:
            rid = planned.run_id
            if rid in self.stored:
                out.append((planned, self.stored[rid]))
            elif rid in self.refused:
                out.append((planned, RunOutcome(rid, "busy", "another process is training "
                                                "or has trained this run", {})))
            elif not skip(rid):
                store.finish_run(rid, "failed", error, {})
                out.append((planned, RunOutcome(rid, "failed", error, {})))
        return out
