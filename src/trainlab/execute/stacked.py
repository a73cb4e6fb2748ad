"""Stacks in the local executor: the runs of one stack claimed, trained together
(:func:`trainlab.engine.stack.train_stack`) and stored one by one, each under its own id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from trainlab.devices import resolve_device
from trainlab.hooks import RunOutcome

if TYPE_CHECKING:
    from trainlab.execute.local import SweepObserver
    from trainlab.plan import PlannedRun
    from trainlab.store.base import RunStore


def run_stack(members: Sequence[PlannedRun], store: RunStore, observer: SweepObserver,
              run_one: Callable[..., RunOutcome]) -> list[tuple[PlannedRun, RunOutcome]]:
    """Train ``members`` as one stack; each one's outcome, stored.  Runs another process holds
    are ``busy``; when fewer than two are left, or vmap cannot batch the model, the runs train
    alone with ``run_one`` (the local executor's, one after another, with the reason in their
    summary).  An out-of-memory error splits the stack (:func:`~trainlab.engine.stack.
    train_stack`); a run a split leaves alone trains with ``run_one`` too.  A run that diverges
    is stored at once (a rerun after a kill leaves it ``diverged``); the others are stored at
    the stack's end, and each keeps its own ``last.pt`` to resume from
    (:mod:`trainlab.engine.stack_resume`)."""
    import torch

    from trainlab.engine.measure import environment
    from trainlab.engine.stack import StackUnsupported, train_stack

    config = members[0].run.config
    env = environment(resolve_device(config.train.device))
    env["stacked"] = len(members)
    done: list[tuple[PlannedRun, RunOutcome]] = []
    claimed = []
    for planned in members:
        if store.start_run(planned.run_id, {**env, "stack": [p.run_id for p in members]}):
            claimed.append(planned)
        else:
            done.append((planned, RunOutcome(planned.run_id, "busy", "another process is "
                                             "training or has trained this run", {})))
    reason = "the other runs of its stack are held by another process"
    if len(claimed) > 1:
        threads = torch.get_num_threads()

        def alone(i: int) -> RunOutcome:  # a run an out-of-memory split leaves by itself
            torch.set_num_threads(threads)
            return run_one(claimed[i], store, observer.callbacks(claimed[i]))

        def finished(outcome: RunOutcome) -> None:  # a diverged run, stored as it is masked
            store.finish_run(outcome.run_id, outcome.status, outcome.error, outcome.summary)

        try:
            outcomes = train_stack([p.run.config for p in claimed],
                                   [p.run_id for p in claimed],
                                   [store.run_dir(p.run_id) for p in claimed], store, alone,
                                   finished)
        except StackUnsupported as exc:
            reason = exc.reason
        else:
            for planned, outcome in zip(claimed, outcomes):
                store.finish_run(planned.run_id, outcome.status, outcome.error,
                                 outcome.summary)
                done.append((planned, outcome))
            return done
        finally:
            torch.set_num_threads(threads)
    for planned in claimed:  # alone after all: each run as if it had never been stacked
        outcome = run_one(planned, store, observer.callbacks(planned))
        if outcome.status != "busy":
            outcome = note_alone(store, outcome, reason)
        done.append((planned, outcome))
        if outcome.status == "interrupted":
            break
    return done


def note_alone(store: RunStore, outcome: RunOutcome, reason: str) -> RunOutcome:
    """A run with ``train.stack`` set that trained alone: why, in its summary, stored."""
    summary = {**outcome.summary, "stack_alone": f"trained alone: {reason}"}
    store.finish_run(outcome.run_id, outcome.status, outcome.error, summary)
    return RunOutcome(outcome.run_id, outcome.status, outcome.error, summary)
