"""TensorBoard: event files under ``<store>/tensorboard/<sweep>/<index>-<run id>/``.

Every record is a scalar at its step (wall time: the run's start plus the record's time); the
resolved config, the environment and, at the end, the summary are text summaries, and the
summary's numbers are scalars under ``summary/``.  A resumed run purges the events after its
checkpoint's step, as the store drops its rows.  ``TRAINLAB_TENSORBOARD_DIR`` moves the root.

    tensorboard --logdir trainlab-runs/tensorboard
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from trainlab.loggers.base import RunInfo, flat_numbers
from trainlab.records import MetricRecord


def _block(data: Any) -> str:
    return "```\n" + json.dumps(data, indent=2, default=str) + "\n```"


class TensorboardTracker:
    def __init__(self) -> None:
        self.pending: dict[str, tuple[Path, RunInfo, dict[str, Any]]] = {}
        self.writers: dict[str, SummaryWriter] = {}
        self.started: dict[str, float] = {}

    def start(self, run: RunInfo, env: dict[str, Any]) -> None:
        root = Path(os.environ.get("TRAINLAB_TENSORBOARD_DIR") or run.root / "tensorboard")
        # The writer opens at the rewind that follows (it needs the resume step to purge).
        self.pending[run.run_id] = (root / run.sweep / f"{run.index:03d}-{run.run_id}", run, env)
        self.started[run.run_id] = time.time()

    def _open(self, run_id: str, purge_step: int | None) -> SummaryWriter | None:
        if run_id in self.writers:
            return self.writers[run_id]
        if run_id not in self.pending:
            return None
        directory, run, env = self.pending.pop(run_id)
        writer = SummaryWriter(str(directory), purge_step=purge_step)
        writer.add_text("config", _block({"config": run.config, "varied": run.varied}), 0)
        writer.add_text("env", _block(env), 0)
        self.writers[run_id] = writer
        return writer

    def rewind(self, run_id: str, step: int) -> None:
        self._open(run_id, step + 1 if step >= 0 else None)

    def log(self, run_id: str, records: Sequence[MetricRecord]) -> None:
        writer = self._open(run_id, None)
        if writer is None:
            return
        start = self.started[run_id]
        for r in records:
            writer.add_scalar(r.key, r.value, global_step=r.step, walltime=start + r.time)
        writer.flush()

    def finish(self, run_id: str, status: str, error: str | None,
               summary: dict[str, Any]) -> None:
        writer = self._open(run_id, None)
        self.started.pop(run_id, None)
        if writer is None:
            return
        step = int(summary.get("steps") or 0)
        for key, value in flat_numbers(summary).items():
            writer.add_scalar(f"summary/{key}", value, global_step=step)
        writer.add_text("summary", _block({"status": status, "error": error, **summary}), step)
        writer.close()
        del self.writers[run_id]

    def close(self) -> None:
        for run_id in list(self.writers):
            self.finish(run_id, "interrupted", None, {})
