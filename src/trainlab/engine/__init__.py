"""The engine: one training loop with callbacks and measurements.

``train(config)`` runs one resolved config to its outcome; the hooks it calls
(:class:`Callback`), the state they read (:class:`RunState`) and the outcome live in
:mod:`trainlab.hooks`, which strategies and executors import without the engine.
"""

from __future__ import annotations

from trainlab.engine.callbacks import EarlyStopping
from trainlab.engine.loop import epoch_permutation, seed_everything, train
from trainlab.hooks import Callback, RunOutcome, RunState, StopTraining

__all__ = ["Callback", "EarlyStopping", "RunOutcome", "RunState", "StopTraining",
           "epoch_permutation", "seed_everything", "train"]
