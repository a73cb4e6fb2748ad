"""Callbacks: hooks into the one training loop.

Every hook is a documented no-op; a callback keeps its own state (and returns it from
``state_dict`` so it survives resume).  ``on_step_end`` runs every step and must never read a
device tensor (that would sync the host each step).  Raise :class:`StopTraining` to end a run
early; the run still ends with the test evaluation and status ``ok``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainlab.engine.loop import RunState


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


class EarlyStopping(Callback):
    """Stop when the monitored validation metric has not improved for ``patience`` evals."""

    def __init__(self, monitor: str, patience: int, min_delta: float, higher_is_better: bool):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = 1.0 if higher_is_better else -1.0
        self.best: float | None = None
        self.bad = 0

    def on_eval_end(self, state: RunState, values: Mapping[str, float]) -> None:
        value = values.get(self.monitor)
        if value is None:
            return
        if self.best is None or self.sign * (value - self.best) > self.min_delta:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad >= self.patience:
            raise StopTraining(f"{self.monitor} did not improve for {self.bad} evaluations "
                               f"(best {self.best:.4g})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state.get("best"), int(state.get("bad", 0))
