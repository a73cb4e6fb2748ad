"""The Python API, mirroring the CLI: ``trainlab.run(config)`` and ``trainlab.open_store``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainlab.config import SweepConfig, load_sweep
from trainlab.config.load import apply_overrides, validate_sweep
from trainlab.execute import LocalExecutor, SweepObserver, SweepResult
from trainlab.plan import Plan, make_plan
from trainlab.store import Store, open_store


def load(config: str | os.PathLike[str] | dict[str, Any] | SweepConfig, *,
         overrides: list[str] | None = None, example: str | None = None) -> SweepConfig:
    """A validated sweep from a file path, a dict, a SweepConfig or a built-in example."""
    if example is not None:
        return load_sweep(example=example, overrides=overrides)
    if isinstance(config, SweepConfig):
        if not overrides:
            return config
        config = config.model_dump(mode="json")
    if isinstance(config, dict):
        return validate_sweep(apply_overrides(config, overrides or []), "config")
    return load_sweep(Path(config), overrides=overrides)


def plan(config: str | os.PathLike[str] | dict[str, Any] | SweepConfig, *,
         store: str | os.PathLike[str] | Store | None = None,
         overrides: list[str] | None = None) -> Plan:
    """The expanded runs of a sweep and what a `run` would do with each (nothing is written)."""
    sweep = load(config, overrides=overrides)
    st = store if isinstance(store, Store) else _existing_store(store)
    return make_plan(sweep, st)


def run(config: str | os.PathLike[str] | dict[str, Any] | SweepConfig | None = None, *,
        store: str | os.PathLike[str] | Store | None = None, overrides: list[str] | None = None,
        example: str | None = None, observer: SweepObserver | None = None,
        estimate: bool = True) -> SweepResult:
    """Plan and train a sweep into the store; finished runs are skipped, interrupted resumed.

    With ``estimate`` each run to train is first predicted (see :mod:`trainlab.estimate`) and
    the prediction is stored with it, as ``trainlab run`` does.
    """
    from trainlab.estimate import estimate_runs

    sweep = load(config or {}, overrides=overrides, example=example)
    st = store if isinstance(store, Store) else open_store(store)
    the_plan = make_plan(sweep, st)
    estimates = (estimate_runs({r.run_id: r.run.config for r in the_plan.todo})
                 if estimate and the_plan.todo else {})
    the_plan.register(st)
    if estimates:
        st.set_estimates({k: e.to_dict() for k, e in estimates.items()})
    from trainlab.engine.interrupt import graceful_sigint

    with graceful_sigint():
        return LocalExecutor().execute(the_plan, st, observer)


def _existing_store(path: str | os.PathLike[str] | None) -> Store | None:
    from trainlab.errors import ConfigError

    try:
        return open_store(path, create=False)
    except ConfigError:
        return None
