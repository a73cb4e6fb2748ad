"""Executors run the planned runs of a sweep and write their results to the store."""

from trainlab.execute.local import (
    LocalExecutor,
    NullObserver,
    SweepObserver,
    SweepResult,
    run_one,
)

__all__ = ["LocalExecutor", "NullObserver", "SweepObserver", "SweepResult", "run_one"]
