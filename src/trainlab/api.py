"""The Python API, mirroring the CLI: ``trainlab.run(config)`` and ``trainlab.open_store``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.config import SweepConfig, load_sweep
from trainlab.config.load import apply_overrides, validate_sweep
from trainlab.execute import Executor, RunStore, SweepObserver, SweepResult, make_executor
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
        executor: str | None = None, jobs: int | None = None, ray_address: str | None = None,
        cpus_per_run: float | None = None, gpus_per_run: float | None = None,
        nproc: int | None = None, log: Sequence[str] = (), estimate: bool = True) -> SweepResult:
    """Plan and train a sweep into the store; finished runs are skipped, interrupted resumed.

    ``jobs``/``executor``/``ray_address``/``cpus_per_run``/``gpus_per_run``, ``nproc`` and
    ``log`` are the CLI's ``--jobs``, ``--executor``, ``--ray-address``, ``--cpus-per-run``,
    ``--gpus-per-run``, ``--nproc`` and ``--log``.  With ``estimate`` each run to train is
    first predicted (see :mod:`trainlab.estimate`) and the prediction is stored with it, as
    ``trainlab run`` does.  A sweep with ``search:`` trains its trials (Optuna) and returns a
    :class:`trainlab.search.driver.SearchResult` (its studies, trials and exit code).
    """
    if nproc is not None:
        overrides = [*(overrides or []), f"train.nproc={nproc}"]
    sweep = load(config or {}, overrides=overrides, example=example)
    st = store if isinstance(store, Store) else open_store(store)
    if sweep.search is not None:  # trials proposed as it goes (returns a SearchResult)
        from trainlab.search.driver import search

        try:
            return search(sweep, st, executor=executor, jobs=jobs,  # type: ignore[return-value]
                          address=ray_address, cpus_per_run=cpus_per_run,
                          gpus_per_run=gpus_per_run)
        finally:
            if st is not store:
                st.close()
    estimates: dict[str, Any] = {}

    def predict(the_plan: Plan) -> None:
        if estimate and the_plan.todo:
            from trainlab.estimate import estimate_runs  # torch: only with runs to train

            estimates.update(estimate_runs({r.run_id: r.run.config for r in the_plan.todo}))

    try:
        prepared = prepare(sweep, st, executor=executor, jobs=jobs, ray_address=ray_address,
                           cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, log=log,
                           check=predict)
        if estimates:
            st.set_estimates({k: e.to_dict() for k, e in estimates.items()})
        from trainlab.engine.interrupt import graceful_sigint

        try:
            with graceful_sigint():
                return prepared.executor.execute(prepared.plan, prepared.store, observer)
        finally:
            prepared.close()
    finally:
        if st is not store:  # opened here, so closed here; a Store passed in stays open
            st.close()


@dataclass
class Prepared:
    """A sweep ready to execute: its plan (registered in the store), the executor, and the
    store to write (with the trackers of ``--log`` when there are any)."""

    plan: Plan
    executor: Executor
    store: RunStore

    def close(self) -> None:
        """Finish the trackers and release the executor's workers (the store stays open)."""
        try:
            close = getattr(self.store, "close_trackers", None)
            if close is not None:
                close()
        finally:
            self.executor.close()


def prepare(sweep: SweepConfig, store: Store, *, executor: str | None = None,
            jobs: int | None = None, ray_address: str | None = None,
            cpus_per_run: float | None = None, gpus_per_run: float | None = None,
            log: Sequence[str] = (), check: Callable[[Plan], None] | None = None
            ) -> Prepared:
    """Pick the executor, build the trackers, plan and check the sweep, and register it.

    Everything that can be bad input (an unknown executor, --jobs 0, a missing package, an
    unreachable Ray cluster, train.nproc over the devices) raises ConfigError before the
    store is written.  ``check(plan)`` runs last before registering (the CLI predicts memory
    and time there and refuses runs that will not fit ``--fit-memory``).
    """
    from trainlab.loggers import TrackedStore, make_trackers

    chosen = make_executor(executor, jobs=jobs, address=ray_address, cpus_per_run=cpus_per_run,
                           gpus_per_run=gpus_per_run)
    if hasattr(chosen, "store_root"):  # Ray ships own code to a cluster, never the store
        chosen.store_root = store.root
    try:
        trackers = make_trackers(log)
        the_plan = make_plan(sweep, store, devices=getattr(chosen, "local_devices", True))
        chosen.prepare(the_plan)
        if check is not None:
            check(the_plan)
        the_plan.register(store)
    except BaseException:
        chosen.close()  # a pool's workers are already starting, a local Ray may be up
        raise
    target: RunStore = TrackedStore(store, trackers, the_plan) if trackers else store
    return Prepared(the_plan, chosen, target)


def _existing_store(path: str | os.PathLike[str] | None) -> Store | None:
    from trainlab.errors import ConfigError

    try:
        return open_store(path, create=False)
    except ConfigError:
        return None
