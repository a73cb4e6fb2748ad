"""``--executor ray``: runs as Ray tasks, on a local Ray or on a cluster (``--ray-address``).

Each run is one task with its own resources (``--cpus-per-run``, ``--gpus-per-run``; a DDP
run asks for ``nproc`` of them and launches torchrun inside its task); the runs of one stack
(``train.stack``) are one task with one run's resources, which trains them as one model and
stores them run by run (:mod:`trainlab.execute.units`).  Tasks on other nodes
cannot reach the driver's SQLite file, so every task talks to a small relay actor, and this
process (the driver) drains the relay into the store: each write a task makes is answered
after the driver's commit (see :mod:`trainlab.execute.relay`), so results reach the store as
they happen and a checkpoint never gets ahead of the records.  The driver holds the claims, so
a rerun after the driver died resumes the runs exactly as a local sweep would.

Checkpoints are written by the tasks to ``<store>/runs/<run_id>/`` *as the driver names it*:
on a multi-node cluster that directory must be on a filesystem every node mounts at the same
path (put ``--store`` on it), or a resumed run starts over.  Every node needs trainlab and the
same Python packages installed (Ray's ``runtime_env`` can ship them).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainlab.engine import interrupt
from trainlab.errors import ConfigError
from trainlab.execute.local import (
    NullObserver,
    SweepObserver,
    SweepResult,
    auto_for,
    resolve_plan_lrs,
    train_unit,
)
from trainlab.execute.relay import RelayCallback, RemoteStore, Replayer, answer
from trainlab.execute.units import Claims, Unit, plan_units
from trainlab.hooks import Callback, RunOutcome
from trainlab.plan import Plan, PlannedRun
from trainlab.store.base import RunStore

if TYPE_CHECKING:
    from trainlab.execute.pool import RunFeed
    from trainlab.lr.study import AutoLR

PIP_HINT = 'pip install "trainlab[ray]"'


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"`--executor ray` needs the ray package, which is not installed; "
                          f"install it with: {PIP_HINT}", field="--executor") from None
    return ray


class RayExecutor:
    """Runs as Ray tasks; this process writes the store."""

    local_devices = False  # the cluster's nodes have the devices, not this machine

    def __init__(self, address: str | None = None, *, jobs: int | None = None,
                 cpus_per_run: float = 1.0, gpus_per_run: float | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.address, self.jobs = address, jobs
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.connect_timeout = connect_timeout
        self.started_local = False
        self.cluster_cpus: float | None = None
        self.cluster_gpus = 0.0
        self.chosen: dict[str, AutoLR] = {}  # range test results of lr: auto runs
        self.store_root: Path | None = None  # left out of the code shipped to a cluster

    # --- connecting ------------------------------------------------------------------------------

    def prepare(self, plan: Plan) -> None:
        """Connect (or start a local Ray) and check that every run fits on some node."""
        self._check_fractional(plan)
        ray = import_ray()
        if not plan.todo:
            return  # nothing to run: no cluster needed
        if not ray.is_initialized():
            self._connect(ray, plan)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.cluster_gpus = sum(r.get("GPU", 0.0) for r in nodes)
        self.cluster_cpus = sum(r.get("CPU", 0.0) for r in nodes)
        for planned in plan.todo:
            cpus, gpus = self.resources(planned)
            if not any(r.get("CPU", 0.0) >= cpus and r.get("GPU", 0.0) >= gpus for r in nodes):
                largest = max(((r.get("CPU", 0.0), r.get("GPU", 0.0)) for r in nodes),
                              default=(0.0, 0.0))
                raise ConfigError(
                    f"run {planned.index} needs {cpus:g} CPUs and {gpus:g} GPUs on one node "
                    f"(train.nproc={planned.run.config.train.nproc}); the largest node of the "
                    f"Ray cluster has {largest[0]:g} CPUs and {largest[1]:g} GPUs",
                    field="train.nproc")

    def _check_fractional(self, plan: Plan) -> None:
        """Refuse a fraction of a GPU per rank for runs of several ranks: Ray would hand the
        task fewer GPUs than torchrun starts ranks, and a rank's ``set_device`` fails."""
        per_gpu = self.gpus_per_run
        if per_gpu is None or not 0 < per_gpu < 1:
            return
        for planned in plan.todo:
            nproc = planned.run.config.train.nproc
            if nproc > 1:
                raise ConfigError(
                    f"`--gpus-per-run {per_gpu:g}` shares GPUs between runs, but run "
                    f"{planned.index} has train.nproc={nproc} ranks, which need a whole GPU "
                    "each; use --gpus-per-run 1 (or 0 for CPU ranks), or train.nproc=1",
                    field="--gpus-per-run")

    def _connect(self, ray: Any, plan: Plan) -> None:
        address = self.address
        if address is None:
            self.started_local = True
            ray.init(num_cpus=self._local_cpus(plan), include_dashboard=False,
                     log_to_driver=False, object_store_memory=128 * 1024**2)
            return
        _check_reachable(address, self.connect_timeout)
        picked = _pick_up_token_auth()
        # The user's files travel to the cluster's workers with the job (Ray takes a local
        # working_dir only there, not per task).
        env = code_runtime_env(plan.todo, self.store_root)
        try:
            ray.init(address=address, log_to_driver=False,
                     **({"runtime_env": env} if env is not None else {}))
        except Exception as exc:  # ConnectionError, RuntimeError, grpc errors: all bad input
            raise ConfigError(f"`--ray-address`: could not connect to the Ray cluster at "
                              f"{address!r}: {str(exc).splitlines()[0][:300]}"
                              f"{_auth_hint(picked)}", field="--ray-address") from None

    def _local_cpus(self, plan: Plan) -> int:
        """CPUs of a local Ray: the usable cores, or with ``--jobs N`` what N runs at once
        need (Ray starts a worker process per CPU, so a small number starts faster)."""
        from trainlab.execute.pool import usable_cores

        if self.jobs is None:
            return usable_cores()
        self.cluster_gpus = float(torch.cuda.device_count())  # what the local Ray will find
        largest = max(self.resources(planned)[0] for planned in plan.todo)
        return max(1, math.ceil(max(largest, self.jobs * self.cpus_per_run)))

    def close(self) -> None:
        """Shut down the local Ray this executor started (execute does so when it ends)."""
        if self.started_local:
            with contextlib.suppress(Exception):
                import_ray().shutdown()
            self.started_local = False
            self.cluster_cpus = None

    def resources(self, planned: PlannedRun) -> tuple[float, float]:
        """(CPUs, GPUs) for one run's task."""
        train = planned.run.config.train
        if self.gpus_per_run is not None:
            per_gpu = self.gpus_per_run
        else:  # a GPU when the cluster has some and the run may use one
            per_gpu = 1.0 if self.cluster_gpus > 0 and train.device != "cpu" else 0.0
        cpus = self.cpus_per_run * (train.nproc if per_gpu == 0 else 1)
        return cpus, per_gpu * train.nproc

    # --- running ---------------------------------------------------------------------------------

    accepts_feed = True  # execute(..., feed=): one Ray for every run a RunFeed gives

    def execute(self, plan: Plan, store: RunStore, observer: SweepObserver | None = None,
                feed: RunFeed | None = None) -> SweepResult:
        ray = import_ray()
        observer = observer or NullObserver()
        result = SweepResult(plan)
        if not plan.todo:
            observer.on_sweep_start(plan)
            return result
        if self.cluster_cpus is None:
            self.prepare(plan)
        observer.on_sweep_start(plan)
        # optimizer.lr: auto: the range tests run on the driver, which owns the store, once
        # per group; each task is sent with its result.
        self.chosen = resolve_plan_lrs(plan, store, observer)
        driver = _Driver(self, ray, store, observer, result, deque(plan_units(plan.todo)), feed)
        try:
            driver.run()
        finally:
            driver.cancel_all()
            self.close()
        return result


class _Driver:
    def __init__(self, executor: RayExecutor, ray: Any, store: RunStore,
                 observer: SweepObserver, result: SweepResult, todo: deque[Unit],
                 feed: RunFeed | None = None) -> None:
        self.executor, self.ray, self.store, self.feed = executor, ray, store, feed
        self.observer, self.result, self.todo = observer, result, todo
        self.relay = ray.remote(num_cpus=0)(Relay).remote()
        self.task = ray.remote(_train_task)
        cpus = executor.cluster_cpus or 1.0
        self.window = executor.jobs or max(1, int(cpus // max(executor.cpus_per_run, 1e-9)))
        self.inflight: dict[Any, Unit] = {}  # a task: one run, or one stack's runs
        self.callbacks: dict[str, list[Callback]] = {}
        self.claims = Claims()  # what the driver answered the tasks' runs
        self.replayer = Replayer()
        self.stopping = False

    def run(self) -> None:
        ray = self.ray
        while True:
            if interrupt.stop_requested() and not self.stopping:
                self._stop()
            while len(self.inflight) < self.window and not self.stopping and (
                    self.todo or self._refill()):
                self._submit(self.todo.popleft())
            if self.stopping:
                self.todo.clear()
            if not self.todo and not self.inflight:
                break
            replies = []
            for ident, message in ray.get(self.relay.take.remote(0.2)):
                if ident is None:
                    _, hook, run_id, snap, arg = message
                    self.replayer.replay(self.callbacks.get(run_id, []), hook, run_id, snap, arg)
                else:
                    replies.append((ident, self._answer(message)))
            if replies:
                self.relay.answer.remote(replies, self.stopping)
            if self.inflight:
                done, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight),
                                   timeout=0)
                for ref in done:
                    self._done(ref)

    def _refill(self) -> bool:
        """The queue ran dry with room for more: ask the feed (its ``lr: auto`` range tests
        run here, on the driver)."""
        from trainlab.execute.pool import refill

        before = len(self.todo)
        self.feed = refill(self.feed, self.todo, self.executor.chosen, self.store, self.observer)
        return len(self.todo) > before

    def _submit(self, unit: Unit) -> None:
        cpus, gpus = self.executor.resources(unit.first)  # a stack's runs share them
        ref = self.task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0).remote(
            unit, self.relay, str(self.store.root), max(1, int(cpus)),
            auto_for(unit.first, self.executor.chosen))
        self.inflight[ref] = unit
        for planned in unit.runs:
            self.callbacks[planned.run_id] = list(self.observer.callbacks(planned))

    def _answer(self, message: tuple[Any, ...]) -> Any:
        if message[0] == "start_run" and self.stopping:
            return False  # Ctrl-C came first: leave the run pending (not noted as busy)
        value = answer(self.store, message)
        self.claims.note(message, value)
        return value

    def _done(self, ref: Any) -> None:
        unit = self.inflight.pop(ref)
        claimed = self.claims.claimed
        try:
            outcomes: list[RunOutcome] = self.ray.get(ref)
        except Exception as exc:  # the task died (worker crash, node lost) or was cancelled
            what = "this run's stack" if unit.stacked else "this run"
            error = (f"the Ray task training {what} failed: "
                     f"{type(exc).__name__}: {str(exc).strip()[-1500:]}")
            # Cancelled before a run started: it stays pending.
            pairs = self.claims.lost(unit, self.store, error,
                                     skip=lambda rid: self.stopping and rid not in claimed)
        else:
            runs = {p.run_id: p for p in unit.runs}
            pairs = [(runs[o.run_id], o) for o in outcomes]
        for planned, outcome in pairs:
            if outcome.status == "busy" and self.stopping and planned.run_id not in claimed:
                continue  # never started
            self.result.settle(planned, outcome, self.observer, self.feed)

    def _stop(self) -> None:
        """First Ctrl-C: queued tasks are cancelled; running ones stop at their next write."""
        self.stopping = True
        self.result.interrupted = True
        self.relay.answer.remote([], True)
        for ref, unit in self.inflight.items():
            if not any(p.run_id in self.claims.claimed for p in unit.runs):
                self.ray.cancel(ref)

    def cancel_all(self) -> None:
        for ref in self.inflight:
            # Already finished, or the cluster is gone: nothing to cancel.
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)


class Relay:
    """The Ray actor between the tasks and the driver (an asyncio actor: requests wait for the
    driver's answer without blocking each other)."""

    def __init__(self) -> None:
        self.inbox: list[tuple[int | None, tuple[Any, ...]]] = []
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.counter = 0
        self.stop = False
        self.event = asyncio.Event()

    async def request(self, message: tuple[Any, ...]) -> tuple[Any, bool]:
        future = asyncio.get_running_loop().create_future()
        self.counter += 1
        self.waiting[self.counter] = future
        self.inbox.append((self.counter, message))
        self.event.set()
        return await future

    async def post(self, message: tuple[Any, ...]) -> None:
        self.inbox.append((None, message))
        self.event.set()

    async def take(self, timeout: float) -> list[tuple[int | None, tuple[Any, ...]]]:
        """The driver's long poll: what arrived, or nothing after ``timeout`` seconds."""
        if not self.inbox:
            self.event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout)
        items, self.inbox = self.inbox, []
        return items

    async def answer(self, replies: list[tuple[int, Any]], stop: bool) -> None:
        self.stop = stop
        for ident, value in replies:
            future = self.waiting.pop(ident, None)
            if future is not None and not future.done():
                future.set_result((value, stop))


class _RayChannel:
    def __init__(self, relay: Any) -> None:
        import ray

        self.ray, self.relay = ray, relay

    def request(self, message: tuple[Any, ...]) -> Any:
        value, stop = self.ray.get(self.relay.request.remote(message))
        if stop:
            interrupt.request_stop()
        return value

    def post(self, message: tuple[Any, ...]) -> None:
        self.relay.post.remote(message)


def _train_task(unit: Unit, relay: Any, root: str, threads: int,
                auto: AutoLR | None = None) -> list[RunOutcome]:
    """One run, or one stack's runs, inside a Ray worker process (reused across tasks: reset
    what a run changes); each run's outcome, as stored."""
    import dataclasses

    interrupt.clear()
    torch.set_num_threads(threads)
    unit = dataclasses.replace(unit, runs=tuple(_code_here(p) for p in unit.runs))
    channel = _RayChannel(relay)
    pairs = train_unit(unit, RemoteStore(channel, Path(root)),
                       lambda planned: [RelayCallback(channel)], auto)
    return [outcome for _, outcome in pairs]


def code_runtime_env(runs: list[PlannedRun], store_root: Path | None) -> dict[str, Any] | None:
    """Ray's runtime environment that ships the runs' own code (the config file's folder, as
    ``working_dir``) to a cluster's workers; None when no run names a user file."""
    from trainlab.usercode import config_sources

    config = next((p.run.config for p in runs if any(
        s["file"] and s["target"].split(":")[0].endswith(".py")
        for s in config_sources(p.run.config))), None)
    if config is None or config.root is None:
        return None
    excludes = [".git", "__pycache__", "*.pt", "trainlab-runs", "reports"]
    if store_root is not None:
        with contextlib.suppress(ValueError):  # the store inside the folder stays behind
            excludes.append(str(Path(store_root).resolve().relative_to(Path(config.root))))
    return {"working_dir": config.root, "excludes": excludes}


def _code_here(planned: PlannedRun) -> PlannedRun:
    """On a node where the config's folder is not (a cluster's worker, whose working_dir Ray
    unpacked from :func:`code_runtime_env`), the run's files are found in the working
    directory: the same files, so the same hashes and run id."""
    import dataclasses
    import os

    from trainlab.config.schema import resolve_run

    config = planned.run.config
    if config.root is None or Path(config.root).is_dir():
        return planned
    here = resolve_run(config.to_dict(), root=os.getcwd())
    if here.run_id != planned.run_id:
        raise RuntimeError(f"the own code that reached this Ray worker differs from the "
                           f"driver's (run id {here.run_id}, planned {planned.run_id})")
    return dataclasses.replace(planned, run=dataclasses.replace(planned.run, config=here))


def _token_source() -> str | None:
    """Where Ray would read an authentication token from (its own order), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return path if Path(path).is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _pick_up_token_auth() -> str | None:
    """Connect with token authentication where a token is configured and RAY_AUTH_MODE is not
    set, as Ray itself does for a local cluster: ``ray start --head`` enforces it where
    ``~/.ray/auth_token`` exists (a local Ray of 2.59 or later leaves one), but a client
    connecting to an address does not look for it and fails with a bare "Failed to connect".
    Returns where the token came from, when this turned token mode on."""
    source = _token_source()
    if os.environ.get("RAY_AUTH_MODE") or source is None:
        return None
    os.environ["RAY_AUTH_MODE"] = "token"
    with contextlib.suppress(Exception):  # Ray's own switch refreshes its cached config
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    return source


def _auth_hint(picked: str | None) -> str:
    """What to check when a connection failed: token authentication, which newer Ray clusters
    require and which fails as a bare "Failed to connect"."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if picked is not None:
        return (f". trainlab connected with token authentication (RAY_AUTH_MODE=token, the "
                f"token from {picked}); if the cluster uses another token, set RAY_AUTH_TOKEN "
                "to it (on the head node: ray get-auth-token)")
    if mode == "token":
        return (". RAY_AUTH_MODE=token is set: check that RAY_AUTH_TOKEN (or "
                "RAY_AUTH_TOKEN_PATH) holds the cluster's token (on the head node: ray "
                "get-auth-token)")
    return (". If the cluster uses token authentication (ray start --head enforces it where "
            "~/.ray/auth_token exists), set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to its "
            "token (on the head node: ray get-auth-token)")


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast (ray.init would retry for a minute) on an address nothing answers at."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"`--ray-address`: expected HOST:PORT (the head node's GCS, e.g. "
                          f"10.0.0.5:6379), ray://HOST:10001 or auto; got {address!r}",
                          field="--ray-address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"`--ray-address`: nothing answers at {address} ({reason}, waited up "
                          f"to {timeout:g} s); start the cluster with `ray start --head` or "
                          "check the address", field="--ray-address") from None
