"""Executors run the planned runs of a sweep and write their results to the store.

Each one has ``prepare(plan)`` (check what this executor needs before anything is written:
devices per job, a reachable cluster; raises ConfigError), ``execute(plan, store, observer)
-> SweepResult`` and ``close()`` (release what it holds: worker processes, a local Ray; safe
to call twice, and needed when ``execute`` is never reached).  They register in
:data:`EXECUTORS` with a spec of their options, which the CLI fills from ``--jobs``,
``--ray-address``, ``--cpus-per-run``, ``--gpus-per-run``.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError

from trainlab.components.base import Spec
from trainlab.errors import ConfigError
from trainlab.execute.local import (
    LocalExecutor,
    NullObserver,
    SweepObserver,
    SweepResult,
    run_one,
)
from trainlab.plan import Plan
from trainlab.registry import Registry
from trainlab.store.base import RunStore


class Executor(Protocol):
    def prepare(self, plan: Plan) -> None:
        """Check (and connect) before anything is written; ConfigError for bad input."""

    def execute(self, plan: Plan, store: RunStore, observer: SweepObserver | None = None
                ) -> SweepResult:
        """Train the plan's runs into the store."""

    def close(self) -> None:
        """Release workers or a local cluster (idempotent; execute also ends them)."""


EXECUTORS: Registry[Any] = Registry("executor")

# Spec fields as the command line names them, for messages.
FLAGS = {"jobs": "--jobs", "address": "--ray-address", "cpus_per_run": "--cpus-per-run",
         "gpus_per_run": "--gpus-per-run"}


class LocalSpec(Spec):
    """One run after another in this process (the default)."""

    jobs: int = Field(default=1, description="must be 1")


class PoolSpec(Spec):
    """Runs in parallel in N local worker processes (--jobs N), threads and GPUs divided."""

    jobs: PositiveInt | None = Field(
        default=None, description="worker processes (default: one per GPU, else per core)")


class RaySpec(Spec):
    """Runs as Ray tasks on a local Ray or a cluster (--ray-address), results streamed back."""

    address: str | None = Field(default=None, description="HOST:PORT, ray://HOST:PORT or auto; "
                                "default: start a local Ray")
    jobs: PositiveInt | None = Field(default=None, description="most runs in flight at once "
                                     "(default: cluster CPUs / cpus_per_run)")
    cpus_per_run: PositiveFloat = Field(default=1.0, description="CPUs per run (x nproc on CPU)")
    gpus_per_run: float | None = Field(default=None, ge=0.0, description="GPUs per rank "
                                       "(default: 1 when the cluster has GPUs and the run may "
                                       "use one)")


@EXECUTORS.register("local", spec=LocalSpec)
def build_local(spec: LocalSpec) -> Executor:
    """One run after another in this process (the default)."""
    if spec.jobs != 1:
        raise ConfigError(f"`--jobs {spec.jobs}` runs in parallel, which --executor local does "
                          "not; use --executor pool (or leave --executor out)", field="--jobs")
    return LocalExecutor()


@EXECUTORS.register("pool", spec=PoolSpec)
def build_pool(spec: PoolSpec) -> Executor:
    """Runs in parallel in N local worker processes (--jobs N), threads and GPUs divided."""
    from trainlab.execute.pool import PoolExecutor, default_jobs

    return PoolExecutor(spec.jobs or default_jobs())


@EXECUTORS.register("ray", spec=RaySpec)
def build_ray(spec: RaySpec) -> Executor:
    """Runs as Ray tasks on a local Ray or a cluster (--ray-address), results streamed back."""
    from trainlab.execute.ray import RayExecutor, import_ray

    import_ray()  # a missing package is bad input: say how to install it, now
    return RayExecutor(spec.address, jobs=spec.jobs, cpus_per_run=spec.cpus_per_run,
                       gpus_per_run=spec.gpus_per_run)


def make_executor(name: str | None = None, **options: Any) -> Executor:
    """The executor ``name`` picks, with the options given (None: not given).

    Without a name: ``pool`` for ``jobs`` > 1, ``ray`` when an address is given, else local.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if name is None:
        jobs = given.get("jobs", 1)
        name = ("ray" if "address" in given or "cpus_per_run" in given
                or "gpus_per_run" in given else "pool" if isinstance(jobs, int) and jobs != 1
                else "local")
    if isinstance(given.get("jobs"), int) and given["jobs"] < 1:
        raise ConfigError(f"`--jobs` must be at least 1; got {given['jobs']}", field="--jobs")
    entry = EXECUTORS.get(name, field="--executor")
    for key in given:
        if key not in entry.spec.model_fields:
            raise ConfigError(f"`{FLAGS.get(key, key)}` does not apply to --executor {name}; "
                              f"it applies to: {', '.join(_users(key))}", field=FLAGS.get(key))
    try:
        spec = entry.spec.model_validate({"name": name, **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = FLAGS.get(str(err["loc"][0]), str(err["loc"][0]))
        msg = err["msg"].replace("Input should be", "must be")
        raise ConfigError(f"`{flag}` {msg}; got {err.get('input')!r}", field=flag) from None
    executor: Executor = entry.build(spec)
    return executor


def _users(key: str) -> list[str]:
    return [f"--executor {e.name}" for e in EXECUTORS if key in e.spec.model_fields]


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "NullObserver", "RunStore", "SweepObserver",
           "SweepResult", "make_executor", "run_one"]
