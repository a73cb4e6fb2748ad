"""What strategies, callbacks and executors may use of a run: the hooks and the run's state.

:class:`Callback` is the base class of every hook into the one training loop; each hook is a
documented no-op.  A callback keeps its own state (and returns it from ``state_dict`` so it
survives resume).  ``on_step_end`` runs every step and must never read a device tensor (that
would sync the host each step).  Raise :class:`StopTraining` to end a run early; the run still
ends with the test evaluation and status ``ok``.

This module imports nothing of trainlab's at run time, so that fine-tuning strategies (which
hand the engine callbacks), executors and the CLI can use it without importing the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trainlab.components.datasets import DataInfo
    from trainlab.components.schedules import Schedule
    from trainlab.config.schema import RunConfig


@dataclass
class RunState:
    """What callbacks may read: the run's objects and counters, updated as it trains."""

    run_id: str
    config: RunConfig
    info: DataInfo
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    steps_per_epoch: int
    epoch: int = 0  # the epoch in progress (1-based); after setup, the last completed
    step: int = 0  # optimizer steps done
    start_step: int = 0  # where this process started (non-zero after resume)
    train_time: float = 0.0  # seconds spent in training steps, excluding eval and I/O
    last: dict[str, float] = field(default_factory=dict)  # the latest recorded host values
    run_dir: Path | None = None  # where checkpoints and artifacts go (None: nowhere)

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * self.steps_per_epoch


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str  # ok | failed | diverged | interrupted | oom
    error: str | None
    summary: dict[str, Any]


class StopTraining(Exception):
    # A signal, not an error: hence no "Error" suffix.
    """Raised by a callback to end training after the current evaluation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Callback:
    """Base class: override the hooks you need."""

    def on_run_start(self, state: RunState) -> None:
        """After setup (and resume); ``state.step`` is where training starts."""

    def on_epoch_start(self, state: RunState) -> None:
        """Before the first step of ``state.epoch``."""

    def on_step_end(self, state: RunState) -> None:
        """After each optimizer step.  Runs every step: never read device tensors here."""

    def on_log(self, state: RunState, values: Mapping[str, float]) -> None:
        """Every ``train.log_every`` steps, with the host values just recorded."""

    def on_eval_end(self, state: RunState, values: Mapping[str, float]) -> None:
        """After each validation, with ``valid/...`` values (may raise StopTraining)."""

    def on_epoch_end(self, state: RunState, values: Mapping[str, float]) -> None:
        """After the epoch's validation and checkpoint."""

    def on_run_end(self, state: RunState, status: str) -> None:
        """Once, whatever the outcome (ok, failed, diverged, interrupted)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (on resume)."""


__all__ = ["Callback", "RunOutcome", "RunState", "StopTraining"]
