"""Small helpers several test modules share."""

from __future__ import annotations

from trainlab.engine import interrupt
from trainlab.hooks import Callback, RunState


class StopAt(Callback):
    """What the first Ctrl-C does, at a chosen step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: RunState) -> None:
        if state.step == self.step:
            interrupt.request_stop()
