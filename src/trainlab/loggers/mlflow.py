"""MLflow: one MLflow run per trainlab run, in an experiment named after the sweep.

Params are the resolved config as dotted keys (plus the varied settings); tags carry the
trainlab run id, sweep, index, status and the environment (``env.<key>``); every record is a
metric at its step; the summary's numbers are logged as ``summary/<key>`` metrics at the end.
A rerun finds the run by its ``trainlab.run_id`` tag and goes on logging into it.

Settings come from MLflow's own environment variables: ``MLFLOW_TRACKING_URI`` (e.g.
``sqlite:///mlflow.db`` or a tracking server; default: MLflow's default, ``./mlruns``) and
``MLFLOW_EXPERIMENT_NAME`` (default: the sweep's name).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trainlab.config.schema import flatten
from trainlab.loggers.base import RunInfo, flat_numbers
from trainlab.records import MetricRecord

_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_STATUS = {"ok": "FINISHED", "diverged": "FINISHED", "interrupted": "KILLED"}


class MlflowTracker:
    def __init__(self) -> None:
        quiet = logging.getLogger("mlflow")
        if quiet.level == logging.NOTSET:  # its INFO lines would break the progress bars
            quiet.setLevel(logging.WARNING)
        self.client = MlflowClient()
        self.runs: dict[str, str] = {}  # trainlab run id -> MLflow run id
        self.started: dict[str, float] = {}

    def _experiment(self, sweep: str) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or sweep
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    def start(self, run: RunInfo, env: dict[str, Any]) -> None:
        experiment = self._experiment(run.sweep)
        existing = self.client.search_runs(
            [experiment], filter_string=f"tags.`trainlab.run_id` = '{run.run_id}'",
            max_results=1)
        tags = {"trainlab.run_id": run.run_id, "trainlab.sweep": run.sweep,
                "trainlab.index": str(run.index), "mlflow.runName": f"{run.sweep}-{run.index}",
                **{f"env.{k}": str(v)[:5000] for k, v in env.items()}}
        if existing:
            mlflow_id = existing[0].info.run_id
            self.client.update_run(mlflow_id, status="RUNNING")
            self.client.log_batch(mlflow_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            mlflow_id = self.client.create_run(experiment, tags=tags).info.run_id
            params = {**flatten(run.config), **{f"varied.{k}": v for k, v in run.varied.items()}}
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow's limit of params per batch
                self.client.log_batch(mlflow_id, params=items[i:i + 100])
        self.runs[run.run_id] = mlflow_id
        self.started[run.run_id] = time.time()

    def rewind(self, run_id: str, step: int) -> None:
        """MLflow keeps every logged point: a resumed run logs its redone steps again."""

    def log(self, run_id: str, records: Sequence[MetricRecord]) -> None:
        mlflow_id = self.runs.get(run_id)
        if mlflow_id is None:
            return
        start = self.started[run_id]
        metrics = [Metric(r.key, r.value, int((start + r.time) * 1000), r.step) for r in records]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(mlflow_id, metrics=metrics[i:i + _BATCH])

    def finish(self, run_id: str, status: str, error: str | None,
               summary: dict[str, Any]) -> None:
        mlflow_id = self.runs.pop(run_id, None)
        if mlflow_id is None:
            return
        now = int(time.time() * 1000)
        step = int(summary.get("steps") or 0)
        metrics = [Metric(f"summary/{k}", v, now, step)
                   for k, v in flat_numbers(summary).items()]
        tags = [RunTag("trainlab.status", status)]
        if error:
            tags.append(RunTag("trainlab.error", error[-5000:]))
        self.client.log_batch(mlflow_id, metrics=metrics, tags=tags)
        self.client.set_terminated(mlflow_id, status=_STATUS.get(status, "FAILED"))

    def close(self) -> None:
        for run_id in list(self.runs):
            self.finish(run_id, "interrupted", None, {})
