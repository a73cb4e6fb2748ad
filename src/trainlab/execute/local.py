"""The local executor: the runs of a sweep one after another in this process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from trainlab.engine import Callback, RunOutcome, interrupt, train
from trainlab.engine.measure import environment, resolve_device
from trainlab.plan import Plan, PlannedRun

if TYPE_CHECKING:
    from trainlab.execute.relay import RunStore


class SweepObserver(Protocol):
    """Hooks for whoever shows progress (the CLI)."""

    def on_sweep_start(self, plan: Plan) -> None:
        """Before the first run."""

    def callbacks(self, planned: PlannedRun) -> Sequence[Callback]:
        """Engine callbacks to attach to this run."""

    def on_run_end(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        """After a run is stored."""


class NullObserver:
    """An observer that shows nothing."""

    def on_sweep_start(self, plan: Plan) -> None:
        pass

    def callbacks(self, planned: PlannedRun) -> Sequence[Callback]:
        return ()

    def on_run_end(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        pass


@dataclass
class SweepResult:
    plan: Plan
    outcomes: list[RunOutcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 every run of the sweep ok; 1 some run failed or diverged; 130 interrupted."""
        if self.interrupted:
            return 130
        trained = {o.run_id for o in self.outcomes}
        skipped_bad = any(r.status == "diverged" and r.run_id not in trained
                          for r in self.plan.runs)
        # "busy" runs are another process's to finish: they do not fail this sweep.
        bad = [o for o in self.outcomes if o.status not in ("ok", "busy")]
        return 1 if bad or skipped_bad else 0


def run_one(planned: PlannedRun, store: RunStore, callbacks: Sequence[Callback] = ()
            ) -> RunOutcome:
    """Train one planned run, storing its status, environment, metrics and outcome.

    A run that another live process has claimed meanwhile is left alone (status ``busy``).
    With ``train.nproc > 1`` the run trains on that many DDP ranks under torchrun.
    """
    config = planned.run.config
    threads = torch.get_num_threads()
    env = environment(resolve_device(config.train.device))
    if config.train.nproc > 1:
        env["nproc"] = config.train.nproc
    if not store.start_run(planned.run_id, env):
        return RunOutcome(planned.run_id, "busy", "another process is training this run", {})
    try:
        if config.train.nproc > 1:
            from trainlab.execute.torchrun import train_distributed

            outcome = train_distributed(config, run_id=planned.run_id,
                                        run_dir=store.run_dir(planned.run_id), sink=store,
                                        callbacks=callbacks)
        else:
            outcome = train(config, run_id=planned.run_id, run_dir=store.run_dir(planned.run_id),
                            sink=store, callbacks=callbacks)
    except KeyboardInterrupt:
        outcome = RunOutcome(planned.run_id, "interrupted", "interrupted by the user", {})
    finally:
        torch.set_num_threads(threads)
    store.finish_run(planned.run_id, outcome.status, outcome.error, outcome.summary)
    return outcome


class LocalExecutor:
    """Runs one after another in this process; Ctrl-C stops the sweep after saving state."""

    def prepare(self, plan: Plan) -> None:
        """Nothing to check: the plan already checked devices."""

    def close(self) -> None:
        """Nothing held."""

    def execute(self, plan: Plan, store: RunStore, observer: SweepObserver | None = None
                ) -> SweepResult:
        observer = observer or NullObserver()
        result = SweepResult(plan)
        observer.on_sweep_start(plan)
        for planned in plan.todo:
            if interrupt.stop_requested():  # Ctrl-C between runs: start no new run
                result.interrupted = True
                break
            outcome = run_one(planned, store, observer.callbacks(planned))
            result.outcomes.append(outcome)
            observer.on_run_end(planned, outcome)
            if outcome.status == "interrupted":
                result.interrupted = True
                break
        return result
