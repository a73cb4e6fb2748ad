"""Weights & Biases: one W&B run per trainlab run.

The W&B run's id is the trainlab run id (a rerun resumes the same W&B run), its group the
sweep, its name ``<sweep>-<index>``; its config is the resolved config plus the varied
settings and the environment; every record is logged at its step (with ``epoch``); the run's
summary gets the trainlab summary's numbers and its status.

Settings come from W&B's own environment variables: ``WANDB_PROJECT`` (default ``trainlab``),
``WANDB_ENTITY``, ``WANDB_MODE`` (``offline`` writes local files only), ``WANDB_DIR`` (default:
the store directory, so offline runs land in ``<store>/wandb/``).

W&B's own console lines (a dozen per run: "Tracking run ...", its history and summary, "You
can sync this run ...") would break into the sweep's progress display, and W&B's capture of
the console would record the whole sweep's output in each run: both are off (``WANDB_SILENT``
and ``WANDB_CONSOLE`` still decide when set). Where the runs went is said once, when the
sweep is over (:meth:`WandbTracker.close`): the project's URL, or the offline folder and the
`wandb sync` command that uploads it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import wandb

from trainlab.loggers.base import RunInfo, flat_numbers
from trainlab.records import MetricRecord


class WandbTracker:
    def __init__(self) -> None:
        self.runs: dict[str, Any] = {}
        self.places: dict[str, str] = {}  # where W&B put each run: a URL or an offline folder

    def start(self, run: RunInfo, env: dict[str, Any]) -> None:
        directory = os.environ.get("WANDB_DIR") or str(run.root)
        os.makedirs(directory, exist_ok=True)
        wrun = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "trainlab"), id=run.run_id,
            name=f"{run.sweep}-{run.index}", group=run.sweep, job_type="train",
            config={**run.config, "varied": run.varied, "env": env}, dir=directory,
            resume="allow", reinit="create_new", tags=[run.sweep], settings=_settings())
        self.runs[run.run_id] = wrun
        self.places[run.run_id] = _place(wrun)

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
        if self.places:  # once, after the progress display: where the runs went
            print(_where(list(self.places.values())), file=sys.stderr, flush=True)
            self.places.clear()


def _settings() -> wandb.Settings:
    """W&B quiet on the console and not capturing it, unless its variables say otherwise."""
    values: dict[str, Any] = {}
    if "WANDB_SILENT" not in os.environ:
        values["silent"] = True
    if "WANDB_CONSOLE" not in os.environ:
        values["console"] = "off"
    return wandb.Settings(**values)


def _place(run: Any) -> str:
    """The run's URL (online), or its offline folder."""
    if getattr(run.settings, "_offline", False) or not getattr(run, "url", None):
        return str(getattr(run.settings, "sync_dir", None) or run.dir)
    return str(run.url)


def _where(places: list[str]) -> str:
    """One line: where W&B put the sweep's runs."""
    n = len(places)
    runs = f"{n} run{'s' if n != 1 else ''}"
    if all(p.startswith(("http://", "https://")) for p in places):
        project = places[0].rsplit("/runs/", 1)[0]
        return f"wandb: {runs} logged to {project}"
    folder = os.path.dirname(places[0].rstrip("/"))
    return (f"wandb: {runs} saved offline in {folder}; upload with "
            f"`wandb sync {os.path.join(folder, 'offline-run-*')}`")
