"""What the trackers share: the :class:`Tracker` protocol, :class:`RunInfo`, the ``LOGGERS``
registry and :func:`flat_numbers`.

The tracker modules (``wandb``, ``mlflow``, ``tensorboard``) import only this module, and
:mod:`trainlab.loggers` registers them and re-exports these names, so nothing imports in a
circle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trainlab.components.base import Spec
from trainlab.records import MetricRecord
from trainlab.registry import Registry


@dataclass(frozen=True)
class RunInfo:
    """What a tracker knows of a run when it starts."""

    run_id: str
    sweep: str
    index: int
    config: dict[str, Any]  # the resolved config, nested sections
    varied: dict[str, Any]  # the sweep's varied settings for this run
    root: Path  # the store directory


class Tracker(Protocol):
    def start(self, run: RunInfo, env: dict[str, Any]) -> None:
        """The run was claimed and is about to train (or resume)."""

    def rewind(self, run_id: str, step: int) -> None:
        """The run resumes from a checkpoint at ``step`` (-1: from scratch)."""

    def log(self, run_id: str, records: Sequence[MetricRecord]) -> None:
        """Records just committed to the store, in step order."""

    def finish(self, run_id: str, status: str, error: str | None,
               summary: dict[str, Any]) -> None:
        """The run ended (ok, failed, diverged, oom, interrupted)."""

    def close(self) -> None:
        """The sweep is over."""


class LoggerSpec(Spec):
    """A tracker takes its settings from its own environment variables (docs: scaling out)."""


LOGGERS: Registry[Any] = Registry("logger")


def flat_numbers(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested dict (a run summary), as dotted keys."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int | float)):
            out[f"{prefix}{key}"] = float(value)
    return out


__all__ = ["LOGGERS", "LoggerSpec", "RunInfo", "Tracker", "flat_numbers"]
