"""The engine: one training loop with callbacks and measurements.

``train(config)`` runs one resolved config to its outcome; the hooks it calls
(:class:`Callback`), the state they read (:class:`RunState`) and the outcome live in
:mod:`trainlab.hooks`, which strategies and executors import without the engine.

The names below load on first use, as :mod:`trainlab.config`'s do: a submodule that needs no
torch (``interrupt``, ``allocator``, ``timing``) imports without the loop, so an executor with
nothing to train (a finished sweep) never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainlab.hooks import Callback, RunOutcome, RunState, StopTraining

_LAZY = {"EarlyStopping": "callbacks", "epoch_permutation": "loop", "seed_everything": "loop",
         "train": "loop"}

if TYPE_CHECKING:
    from trainlab.engine.callbacks import EarlyStopping
    from trainlab.engine.loop import epoch_permutation, seed_everything, train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"trainlab.engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'trainlab.engine' has no attribute {name!r}")


__all__ = ["Callback", "EarlyStopping", "RunOutcome", "RunState", "StopTraining",
           "epoch_permutation", "seed_everything", "train"]
