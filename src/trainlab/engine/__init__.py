"""The engine: one training loop with callbacks and measurements."""

from trainlab.engine.callbacks import Callback, EarlyStopping, StopTraining
from trainlab.engine.loop import RunOutcome, RunState, epoch_permutation, seed_everything, train

__all__ = ["Callback", "EarlyStopping", "RunOutcome", "RunState", "StopTraining",
           "epoch_permutation", "seed_everything", "train"]
