"""Mirrors of the store in the trackers people already use: W&B, MLflow, TensorBoard.

A tracker sees each run start (its resolved config, varied settings and environment), every
record written to the store, and its end (status, error, summary).  :class:`TrackedStore`
wraps the store the executor writes to, so every record that reaches the store reaches the
trackers too, whichever executor produced it: pool workers, Ray tasks and DDP ranks all send
their records to the one process that writes the store, and the trackers live there.

The store stays the source of truth: a tracker that fails (a network error, say) warns once
and stops mirroring that run; the sweep goes on.  After a resume, W&B drops the redone points
whose steps it has already seen and MLflow keeps both copies; TensorBoard purges the events
after the checkpoint's step, as the store does.

Each tracker is an optional extra (``pip install "trainlab[wandb]"``, ``[mlflow]``,
``[tensorboard]``) configured by the tool's own environment variables (see
docs/guides/scaling-out.md).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainlab.errors import ConfigError
from trainlab.loggers.base import LOGGERS, LoggerSpec, RunInfo, Tracker, flat_numbers
from trainlab.records import MetricRecord

if TYPE_CHECKING:
    from trainlab.plan import Plan
    from trainlab.store import Store

EXTRAS = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


def _import(module: str, extra: str) -> None:
    """Raise ConfigError with the pip command when the tracker's package is missing."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"`--log {extra}` needs the {module} package, which is not installed; "
                          f'install it with: pip install "trainlab[{extra}]"',
                          field="--log") from None


@LOGGERS.register("wandb", spec=LoggerSpec)
def build_wandb(spec: LoggerSpec) -> Tracker:
    """Weights & Biases: one W&B run per trainlab run (id = run id), grouped by sweep."""
    _import("wandb", "wandb")
    from trainlab.loggers.wandb import WandbTracker

    return WandbTracker()


@LOGGERS.register("mlflow", spec=LoggerSpec)
def build_mlflow(spec: LoggerSpec) -> Tracker:
    """MLflow: one MLflow run per trainlab run, in an experiment named after the sweep."""
    _import("mlflow", "mlflow")
    from trainlab.loggers.mlflow import MlflowTracker

    return MlflowTracker()


@LOGGERS.register("tensorboard", spec=LoggerSpec)
def build_tensorboard(spec: LoggerSpec) -> Tracker:
    """TensorBoard event files under <store>/tensorboard/<sweep>/<index>-<run id>/."""
    _import("tensorboard", "tensorboard")
    from trainlab.loggers.tensorboard import TensorboardTracker

    return TensorboardTracker()


def make_trackers(names: Sequence[str]) -> list[Tracker]:
    """The trackers ``--log`` names (each at most once); ConfigError for an unknown name or a
    missing package."""
    trackers = []
    for name in dict.fromkeys(names):
        entry = LOGGERS.get(name, field="--log")
        trackers.append(entry.build(LoggerSpec(name=name)))
    return trackers


class TrackedStore:
    """The store, with every claim, record and outcome mirrored to trackers.

    A :class:`~trainlab.store.base.RunStore`: each call returns once the wrapped store has
    committed, and only then tells the trackers.  It lives in the process that owns ``store``
    (the trackers do too), so it also passes through the LR range tables that
    ``optimizer.lr: auto`` reads and writes there.
    """

    def __init__(self, store: Store, trackers: Sequence[Tracker], plan: Plan) -> None:
        self.store, self.trackers = store, list(trackers)
        self.root = store.root
        self.plan = {p.run_id: p for p in plan.runs}
        self.sweep = plan.sweep.name
        self.broken: set[tuple[int, str]] = set()  # (tracker, run) pairs that failed

    def _each(self, run_id: str, method: str, *args: Any) -> None:
        for i, tracker in enumerate(self.trackers):
            if (i, run_id) in self.broken:
                continue
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker must never fail the run: the store has it
                self.broken.add((i, run_id))
                warnings.warn(f"{type(tracker).__name__} stopped mirroring run {run_id}: "
                              f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)

    def start_run(self, run_id: str, env: dict[str, Any]) -> bool:
        claimed = self.store.start_run(run_id, env)
        planned = self.plan.get(run_id)
        if claimed and planned is not None:
            info = RunInfo(run_id, self.sweep, planned.index, planned.run.config.to_dict(),
                           dict(planned.varied), Path(self.root))
            self._each(run_id, "start", info, env)
        return claimed

    def rewind(self, run_id: str, step: int) -> None:
        self.store.rewind(run_id, step)
        self._each(run_id, "rewind", run_id, step)

    def recorded_through(self, run_id: str, epoch: int, step: int) -> bool | None:
        check = getattr(self.store, "recorded_through", None)
        return None if check is None else bool(check(run_id, epoch, step))

    def write(self, records: Sequence[MetricRecord]) -> None:
        self.store.write(records)
        by_run: dict[str, list[MetricRecord]] = {}
        for record in records:
            by_run.setdefault(record.run_id, []).append(record)
        for run_id, mine in by_run.items():
            self._each(run_id, "log", run_id, mine)

    def finish_run(self, run_id: str, status: str, error: str | None,
                   summary: dict[str, Any]) -> None:
        self.store.finish_run(run_id, status, error, summary)
        self._each(run_id, "finish", run_id, status, error, summary)

    def run_dir(self, run_id: str) -> Path:
        return self.store.run_dir(run_id)

    # The LR range tables (resolve_plan_lrs, in the owner's process): not mirrored.

    def lr_range(self, range_id: str) -> dict[str, Any] | None:
        return self.store.lr_range(range_id)

    def write_lr_range(self, range_id: str, config: dict[str, Any], settings: dict[str, Any],
                       status: str, result: dict[str, Any], env: dict[str, Any] | None = None,
                       ) -> None:
        self.store.write_lr_range(range_id, config, settings, status, result, env)

    def link_lr_range(self, sweep: str, range_id: str, label: dict[str, Any]) -> None:
        self.store.link_lr_range(sweep, range_id, label)

    def close_trackers(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as exc:
                warnings.warn(f"{type(tracker).__name__} did not close cleanly: {exc}",
                              RuntimeWarning, stacklevel=2)


__all__ = ["LOGGERS", "LoggerSpec", "RunInfo", "TrackedStore", "Tracker", "flat_numbers",
           "make_trackers"]
