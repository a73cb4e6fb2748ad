"""The local executor: the runs of a sweep one after another in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from trainlab.components.optimizers import is_auto
from trainlab.devices import resolve_device
from trainlab.engine import interrupt  # no torch: the loop and torch load in run_one
from trainlab.errors import DiskFull
from trainlab.execute.stacked import note_alone
from trainlab.execute.units import Unit, plan_units
from trainlab.hooks import Callback, RunOutcome
from trainlab.plan import Plan, PlannedRun
from trainlab.records import MetricRecord, RecordSink
from trainlab.usercode import config_sources, copy_sources

if TYPE_CHECKING:
    from trainlab.store.base import RunStore

if TYPE_CHECKING:
    from trainlab.lr.study import AutoLR


class SweepObserver(Protocol):
    """Hooks for whoever shows progress (the CLI)."""

    def on_sweep_start(self, plan: Plan) -> None:
        """Before the first run."""

    def callbacks(self, planned: PlannedRun) -> Sequence[Callback]:
        """Engine callbacks to attach to this run."""

    def on_run_end(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        """After a run is stored."""

    # Optional: ``on_lr_range(choice: AutoLR)`` after each range test of ``optimizer.lr: auto``
    # (looked up with getattr, so observers without it keep working).


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

    def settle(self, planned: PlannedRun, outcome: RunOutcome, observer: SweepObserver,
               feed: Any = None) -> None:
        """A run's outcome, as every executor takes it: kept, told to the observer and to a
        search's feed (its ``finished``), and an interrupted run ends the sweep."""
        self.outcomes.append(outcome)
        observer.on_run_end(planned, outcome)
        if feed is not None:
            feed.finished(planned, outcome)
        if outcome.status == "interrupted":
            self.interrupted = True

    @property
    def exit_code(self) -> int:
        """0 every run of the sweep ok; 1 some run failed or diverged; 128 + the signal when
        interrupted (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1)."""
        if self.interrupted:
            return interrupt.exit_code()
        trained = {o.run_id for o in self.outcomes}
        skipped_bad = any(r.status == "diverged" and r.run_id not in trained
                          for r in self.plan.runs)
        # "busy" runs are another process's to finish: they do not fail this sweep.
        bad = [o for o in self.outcomes if o.status not in ("ok", "busy", "pruned")]
        return 1 if bad or skipped_bad else 0


def run_one(planned: PlannedRun, store: RunStore, callbacks: Sequence[Callback] = (),
            auto: AutoLR | None = None) -> RunOutcome:
    """Train one planned run, storing its status, environment, metrics and outcome.

    A run that another live process has claimed meanwhile is left alone (status ``busy``).
    A run with ``optimizer.lr: auto`` trains with the LR its range test chose (``auto``, from
    :func:`resolve_plan_lrs`; looked up or run here when not given).  Its id stays the hash of
    the config as written; the chosen LR goes into its summary and into the metric
    ``lr/chosen`` at step 0.  With ``train.nproc > 1`` the run trains on that many DDP ranks
    under torchrun.
    """
    import torch

    from trainlab.engine import train
    from trainlab.engine.measure import environment

    config = planned.run.config
    callbacks = [*callbacks, *planned.callbacks]
    threads = torch.get_num_threads()
    sink: RecordSink = store
    extra: dict[str, object] = {}
    env = environment(resolve_device(config.train.device))
    sources = config_sources(config)
    if sources:  # the user's files it trains: path and hash in the record, a copy in run_dir
        env["sources"] = sources
    if config.train.nproc > 1:
        env["nproc"] = config.train.nproc
    if not store.start_run(planned.run_id, env):
        return RunOutcome(planned.run_id, "busy", "another process is training or has "
                          "trained this run", {})
    try:
        copy_sources(sources, store.run_dir(planned.run_id) / "sources")
        if is_auto(config.optimizer):
            auto = auto or _resolve(planned, store)
            extra = auto.summary()
            if auto.lr is None:
                status = "failed" if auto.outcome is None else "diverged"
                outcome = RunOutcome(planned.run_id, status, auto.error, {})
                store.finish_run(planned.run_id, status, auto.error, extra)
                return outcome
            config = auto.apply(config)
            sink = _StartRecords(store, [MetricRecord(planned.run_id, "lr/chosen", 0, 0, 0.0,
                                                      auto.lr)])
        if config.train.nproc > 1:
            from trainlab.execute.torchrun import train_distributed

            outcome = train_distributed(config, run_id=planned.run_id,
                                        run_dir=store.run_dir(planned.run_id), sink=sink,
                                        callbacks=callbacks)
        else:
            outcome = train(config, run_id=planned.run_id, run_dir=store.run_dir(planned.run_id),
                            sink=sink, callbacks=callbacks)
    except KeyboardInterrupt:
        outcome = RunOutcome(planned.run_id, "interrupted", "interrupted by the user", {})
    finally:
        torch.set_num_threads(threads)
    outcome = _final_status(outcome, planned.callbacks)
    if outcome.status == "interrupted" and interrupt.signal_name() != "Ctrl-C":
        outcome = RunOutcome(planned.run_id, "interrupted",
                             f"interrupted by {interrupt.signal_name()}", outcome.summary)
    store.finish_run(planned.run_id, outcome.status, outcome.error, {**outcome.summary, **extra})
    return outcome


CallbacksFor = Callable[[PlannedRun], Sequence[Callback]]


def train_unit(unit: Unit, store: RunStore, callbacks: CallbacksFor,
               auto: AutoLR | None = None) -> list[tuple[PlannedRun, RunOutcome]]:
    """Train ``unit`` into ``store``: each of its runs with its outcome, stored.

    A stack trains with :func:`trainlab.execute.stacked.run_stack` (runs another process holds
    are ``busy``; when it cannot stack, its runs train alone, one after another); a run alone
    with :func:`run_one` (``auto``: its ``lr: auto`` range test), the
    reason it did not stack added to its summary.  ``callbacks(planned)``: the engine
    callbacks of a run that trains alone."""
    if unit.stacked:
        from trainlab.execute.stacked import run_stack

        return run_stack(list(unit.runs), store, _StackObserver(callbacks), run_one)
    planned = unit.first
    outcome = run_one(planned, store, callbacks(planned), auto)
    if unit.alone is not None and outcome.status != "busy":
        outcome = note_alone(store, outcome, unit.alone)
    return [(planned, outcome)]


class _StackObserver:
    """The observer :func:`~trainlab.execute.stacked.run_stack` reads callbacks from."""

    def __init__(self, callbacks: CallbacksFor) -> None:
        self.for_run = callbacks

    def on_sweep_start(self, plan: Plan) -> None:
        pass

    def callbacks(self, planned: PlannedRun) -> Sequence[Callback]:
        return self.for_run(planned)

    def on_run_end(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        pass


def _final_status(outcome: RunOutcome, callbacks: Sequence[Any]) -> RunOutcome:
    """An ``ok`` outcome with the status a run's own callback gave it (``pruned``: a search
    trial's pruner stopped it), and what that callback adds to its summary."""
    for cb in callbacks:
        status = getattr(cb, "final_status", None)
        if status and outcome.status == "ok":
            return RunOutcome(outcome.run_id, status, outcome.error,
                              {**outcome.summary, **getattr(cb, "final_summary", {})})
    return outcome


def _resolve(planned: PlannedRun, store: Any) -> AutoLR:
    import traceback

    from trainlab.lr.study import AutoLR, auto_group, resolve_auto_lr

    try:
        return resolve_auto_lr(planned.run.config, store)
    except Exception:
        rid, settings = auto_group(planned.run.config)
        return AutoLR(rid, settings.suggest, None,
                      error="the LR range test failed:\n" + traceback.format_exc())


class _StartRecords:
    """A sink that writes ``records`` again after each full rewind of the run.

    The loop rewinds a fresh run to nothing before it starts (a resume keeps step 0), so rows
    that belong at step 0 (``lr/chosen``) are written right after that rewind.
    """

    def __init__(self, sink: RecordSink, records: Sequence[MetricRecord]) -> None:
        self.sink, self.records = sink, list(records)

    def write(self, records: Sequence[MetricRecord]) -> None:
        self.sink.write(records)

    def rewind(self, run_id: str, step: int) -> None:
        self.sink.rewind(run_id, step)
        self.sink.write([r for r in self.records if r.run_id == run_id and r.step > step])

    def recorded_through(self, run_id: str, epoch: int, step: int) -> bool | None:
        check = getattr(self.sink, "recorded_through", None)
        return None if check is None else bool(check(run_id, epoch, step))


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
        chosen = resolve_plan_lrs(plan, store, observer)
        for unit in plan_units(plan.todo):  # a run alone, or a stack (train.stack)
            if interrupt.stop_requested():  # Ctrl-C between runs: start no new run
                result.interrupted = True
                break
            pairs = train_unit(unit, store, observer.callbacks, auto_for(unit.first, chosen))
            for one, outcome in pairs:
                result.settle(one, outcome, observer)
            for _, outcome in pairs:
                stop_if_disk_full(outcome)
            if result.interrupted:
                break
        return result


_DISK_FULL = f"{DiskFull.__module__}.{DiskFull.__qualname__}: "


def stop_if_disk_full(outcome: RunOutcome) -> None:
    """Stop the sweep (raise :class:`DiskFull`) after a run that failed because its disk is
    full, as a full store stops it: every later run would fail the same way.  The run's own
    record (``failed``, with the reason and the free space) is already stored."""
    if outcome.status != "failed" or not outcome.error:
        return
    last = outcome.error.rstrip().splitlines()[-1]  # the stored traceback's last line
    if last.startswith(_DISK_FULL):
        raise DiskFull(f"the sweep stopped at run {outcome.run_id}, which failed because its "
                       f"disk is full: {last[len(_DISK_FULL):]}")


def resolve_plan_lrs(plan: Plan, store: Any, observer: SweepObserver | None = None
                     ) -> dict[str, AutoLR]:
    """Run the range tests of the plan's ``optimizer.lr: auto`` runs still to train, once per
    range group, before any run trains.  Every executor calls this in the process that owns
    the store (``store``: the :class:`trainlab.store.Store`, or a wrapper that passes its
    LR-range methods through) and hands each run its :func:`auto_for`, so no test runs twice
    and workers never need the store's range tables."""
    todo = [p.run for p in plan.todo if is_auto(p.run.config.optimizer)]
    if not todo:
        return {}
    from trainlab.lr.study import resolve_auto_lrs

    hook = getattr(observer, "on_lr_range", None)
    return resolve_auto_lrs(todo, store, sweep=plan.sweep.name, on_result=hook)


def auto_for(planned: PlannedRun, chosen: dict[str, AutoLR]) -> AutoLR | None:
    """The range test result ``planned`` trains with (None: it does not use ``lr: auto``)."""
    if not is_auto(planned.run.config.optimizer):
        return None
    from trainlab.lr.study import auto_group

    return chosen.get(auto_group(planned.run.config)[0])
