"""The engine's own callbacks (the hooks they implement are in :mod:`trainlab.hooks`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainlab.hooks import Callback, RunState, StopTraining


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
