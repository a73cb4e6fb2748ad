"""Small helpers several test modules share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainlab.engine import interrupt
from trainlab.hooks import Callback, RunState
from trainlab.records import NullSink


class StopAt(Callback):
    """What the first Ctrl-C does, at a chosen step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: RunState) -> None:
        if state.step == self.step:
            interrupt.request_stop()


def train_ok(raw: dict[str, Any], **kw: Any) -> tuple[Any, NullSink]:
    """Train the run ``raw`` describes into an in-memory sink; it must end ``ok``."""
    from trainlab.config.schema import resolve_run
    from trainlab.engine import train

    sink = NullSink()
    outcome = train(resolve_run(raw), sink=sink, **kw)
    assert outcome.status == "ok", outcome.error
    return outcome, sink


def recorded(sink: NullSink, key: str) -> list[float]:
    """The values recorded under ``key``, in order."""
    return [r.value for r in sink.records if r.key == key]


class ReadsAValue(nn.Module):
    """A model vmap cannot batch (a stack's trial step refuses it): its forward reads a value
    on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(x.abs().max().item())
        return self.linear(x.flatten(1)) / max(scale, 1.0)
