"""trainlab: run, measure and compare deep-learning training experiments.

    import trainlab
    result = trainlab.run("sweep.yaml")          # or trainlab.run(example="quickstart")
    store = trainlab.open_store()                # ./trainlab-runs by default
    store.runs(), store.metrics()                # pandas DataFrames

Names are imported on first use, so ``trainlab --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load": "trainlab.api", "plan": "trainlab.api", "run": "trainlab.api",
    "open_store": "trainlab.store", "Store": "trainlab.store",
    "ConfigError": "trainlab.errors", "RunError": "trainlab.errors",
    "TrainlabError": "trainlab.errors", "UnknownNameError": "trainlab.errors",
}

if TYPE_CHECKING:
    from trainlab.api import load, plan, run
    from trainlab.errors import ConfigError, RunError, TrainlabError, UnknownNameError
    from trainlab.store import Store, open_store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")


__all__ = ["ConfigError", "RunError", "Store", "TrainlabError", "UnknownNameError",
           "__version__", "load", "open_store", "plan", "run"]
