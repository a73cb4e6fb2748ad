"""The engine: one training loop with callbacks and measurements.

Names load on first use so that components can import :mod:`trainlab.engine.callbacks`
without importing the loop (which imports the components).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Callback": "callbacks", "EarlyStopping": "callbacks", "StopTraining": "callbacks",
    "RunOutcome": "loop", "RunState": "loop", "epoch_permutation": "loop",
    "seed_everything": "loop", "train": "loop",
}

if TYPE_CHECKING:
    from trainlab.engine.callbacks import Callback, EarlyStopping, StopTraining
    from trainlab.engine.loop import (
        RunOutcome,
        RunState,
        epoch_permutation,
        seed_everything,
        train,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"trainlab.engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'trainlab.engine' has no attribute {name!r}")


__all__ = ["Callback", "EarlyStopping", "RunOutcome", "RunState", "StopTraining",
           "epoch_permutation", "seed_everything", "train"]
