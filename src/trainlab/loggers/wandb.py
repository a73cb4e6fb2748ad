"""Weights & Biases: one W&B run per trainlab run.

The W&B run's id is the trainlab run id (a rerun resumes the same W&B run), its group the
sweep, its name ``<sweep>-<index>``; its config is the resolved config plus the varied
settings and the environment; every record is logged at its step (with ``epoch``); the run's
summary gets the trainlab summary's numbers and its status.

Settings come from W&B's own environment variables: ``WANDB_PROJECT`` (default ``trainlab``),
``WANDB_ENTITY``, ``WANDB_MODE`` (``offline`` writes local files only), ``WANDB_DIR`` (default:
the store directory, so offline runs land in ``<store>/wandb/``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import wandb

from trainlab.loggers.base import RunInfo, flat_numbers
from trainlab.records import MetricRecord


class WandbTracker:
    def __init__(self) -> None:
        self.runs: dict[str, Any] = {}

    def start(self, run: RunInfo, env: dict[str, Any]) -> None:
        directory = os.environ.get("WANDB_DIR") or str(run.root)
        os.makedirs(directory, exist_ok=True)
        self.runs[run.run_id] = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "trainlab"), id=run.run_id,
            name=f"{run.sweep}-{run.index}", group=run.sweep, job_type="train",
            config={**run.config, "varied": run.varied, "env": env}, dir=directory,
            resume="allow", reinit="create_new", tags=[run.sweep])

    def rewind(self, run_id: str, step: int) -> None:
        """W&B cannot drop logged points; it ignores steps it has already seen."""

    def log(self, run_id: str, records: Sequence[MetricRecord]) -> None:
        run = self.runs.get(run_id)
        if run is None:
            return
        rows: dict[int, dict[str, float]] = {}
        for r in records:
            rows.setdefault(r.step, {"epoch": r.epoch})[r.key] = r.value
        for step in sorted(rows):
            run.log(rows[step], step=step)

    def finish(self, run_id: str, status: str, error: str | None,
               summary: dict[str, Any]) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        run.summary.update({**{f"summary/{k}": v for k, v in flat_numbers(summary).items()},
                            "status": status})
        if error:
            run.summary["error"] = error.strip().splitlines()[-1][:500]
        run.finish(exit_code=0 if status in ("ok", "diverged") else 1)

    def close(self) -> None:
        for run_id in list(self.runs):
            self.finish(run_id, "interrupted", None, {})
