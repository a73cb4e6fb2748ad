"""``--jobs N``: runs in parallel in N persistent local worker processes.

Workers are started once and train one unit after another: a run, or the runs of one stack
(``train.stack``, :mod:`trainlab.execute.units`), which a worker trains as one model and stores
run by run, so N workers train N stacks at once.  How they start:

- **fork**, when each job gets one intra-op thread (and no run sets ``train.threads`` above
  one), no GPU and CUDA is not initialised here (``--jobs`` = cores on a CPU machine): the
  workers are forked when the sweep starts, after this process has planned it, so they inherit
  every import (torch, its compiler front end that the optimizers load, trainlab, the data)
  and start training at once.  Forking a process that has used torch's OpenMP pool deadlocks
  a child that uses the pool again (measured: a child at two threads hangs, a child at one
  thread runs), so fork is used only at one thread per job;
- **spawn** otherwise (a fresh interpreter each): the 2-3 s torch import is paid once per
  worker, and the workers are spawned when the executor is made, before the sweep is planned,
  so their imports overlap the parent's planning.

Each worker gets its device slot before it touches the GPU: ``CUDA_VISIBLE_DEVICES`` holding
its share of the GPUs (one GPU per job when there are at least N; shared round-robin otherwise),
and ``cores // N`` intra-op threads so N jobs do not oversubscribe the CPU (``train.threads``
still wins for a run that sets it).

This process stays the store's single writer: workers send their records through a pipe (see
:mod:`trainlab.execute.relay`) and each write is answered after its commit.  One writer means
no lock contention however many jobs run, claims held by a process that outlives its workers,
trackers (``--log``) fed from one place, and a worker that dies (a segfault, the OOM killer,
``kill -9``) costs only its own run, which is stored as ``failed``; the sweep goes on with a
fresh worker.  Ctrl-C: workers ignore the terminal's SIGINT; the first Ctrl-C here sends each
busy worker SIGUSR1, which its engine treats like a Ctrl-C (finish the step, checkpoint
mid-epoch, ``interrupted``); a second Ctrl-C kills the workers at once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainlab.engine import interrupt
from trainlab.errors import ConfigError, DiskFull
from trainlab.execute.local import (
    NullObserver,
    SweepObserver,
    SweepResult,
    auto_for,
    resolve_plan_lrs,
    stop_if_disk_full,
    train_unit,
)
from trainlab.execute.relay import (
    ConnectionChannel,
    RelayCallback,
    RemoteStore,
    Replayer,
    RunStore,
    answer,
)
from trainlab.execute.units import Claims, Unit, plan_units
from trainlab.hooks import Callback, RunOutcome
from trainlab.plan import Plan, PlannedRun

if TYPE_CHECKING:
    from trainlab.lr.study import AutoLR


class RunFeed(Protocol):
    """More runs for an executor that is already running (a search that asks for its next
    trial as each one finishes): the pool and Ray executors take one as ``execute(...,
    feed=)`` and keep their workers, or their Ray, for everything it gives."""

    def finished(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        """A run is stored (called before the executor asks :meth:`more`)."""

    def more(self) -> Plan | None:
        """Runs to train now, when the executor's queue is empty and it has room; None: no
        more, ever."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs() -> int:
    """One job per GPU when there are GPUs, else one per core."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return int(torch.cuda.device_count())
    return usable_cores()


def gpu_slots(jobs: int) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` for each job: its own share when there are at least ``jobs``
    GPUs, one GPU shared round-robin otherwise; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = ([d.strip() for d in visible.split(",") if d.strip()] if visible
           else [str(i) for i in range(torch.cuda.device_count())])
    if not ids:
        return None
    if len(ids) >= jobs:
        per = len(ids) // jobs
        return [",".join(ids[i * per:(i + 1) * per]) for i in range(jobs)]
    return [ids[i % len(ids)] for i in range(jobs)]


def start_method(threads: int, gpus: list[str] | None) -> str:
    """``fork`` where it is safe and saves each worker its imports; ``spawn`` otherwise (see the
    module doc)."""
    if (sys.platform.startswith("linux") and threads == 1 and gpus is None
            and not torch.cuda.is_initialized()):
        return "fork"
    return "spawn"


def refill(feed: RunFeed | None, todo: deque[Unit], chosen: dict[str, Any],
           store: RunStore, observer: SweepObserver) -> RunFeed | None:
    """Ask ``feed`` for its next runs into ``todo``, as units (the runs of one plan it gives
    stack together as a sweep's do: a search trial's seeds); their ``lr: auto`` range tests
    run here, in the store's process, into ``chosen``.  The feed, or None once it has no
    more."""
    while feed is not None:
        more = feed.more()
        if more is None:
            return None
        if more.todo:
            chosen.update(resolve_plan_lrs(more, store, observer))
            todo.extend(plan_units(more.todo))
            return feed
    return None


@dataclass
class _Worker:
    slot: int
    process: BaseProcess
    conn: Connection
    ready: bool = False
    unit: Unit | None = None  # one run, or a stack's runs
    callbacks: dict[str, list[Callback]] = field(default_factory=dict)  # by run id
    claims: Claims = field(default_factory=Claims)  # of its unit's runs
    signalled: bool = False


class PoolExecutor:
    """Runs in parallel in ``jobs`` worker processes; this process writes the store.

    The workers start importing at once; :meth:`execute` (or :meth:`close`) ends them.
    """

    def __init__(self, jobs: int, threads: int | None = None) -> None:
        if jobs < 1:
            raise ConfigError(f"`--jobs` must be at least 1; got {jobs}", field="--jobs")
        self.jobs = jobs
        self.threads = threads or max(1, usable_cores() // jobs)
        self.gpus = gpu_slots(jobs)
        self.start_method = start_method(self.threads, self.gpus)
        self.chosen: dict[str, AutoLR] = {}  # range test results of lr: auto runs
        self.retired: list[BaseProcess] = []  # workers done with, to reap at close
        # Spawned workers start importing now; forked ones are made when the sweep starts.
        self.workers = [self.spawn(i) for i in range(jobs)] if self.start_method == "spawn" else []

    def spawn(self, slot: int, method: str | None = None) -> _Worker:
        context: Any = multiprocessing.get_context(method or self.start_method)
        parent, child = context.Pipe()
        process = context.Process(target=_worker_main, args=(child, self.threads),
                                       name=f"trainlab-job-{slot}", daemon=True)
        # The child inherits this environment when it starts: its GPUs are fixed before any
        # import in it could initialise CUDA.
        env = {"CUDA_VISIBLE_DEVICES": self.gpus[slot]} if self.gpus is not None else {}
        with _environment(env):
            process.start()
        child.close()
        return _Worker(slot, process, parent)

    def close(self) -> None:
        """End the workers (an executor that will not execute), and reap the retired ones."""
        for process in self.retired:  # told to exit, or already dead
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self.retired.clear()
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(timeout=5)
            worker.conn.close()
        self.workers.clear()

    def _trim(self, needed: int) -> None:
        """End the workers past the first ``needed`` (they would only compete for the
        cores)."""
        for worker in self.workers[needed:]:
            worker.process.kill()
            worker.process.join(timeout=5)
            worker.conn.close()
        del self.workers[needed:]

    def prepare(self, plan: Plan) -> None:
        """Refuse runs that cannot get their devices inside one job's slot; end the workers
        the plan has no run for (a search's feed may give more runs later: the workers its
        first plan's stacks leave idle are ended only by :meth:`execute` without a feed)."""
        self._trim(len(plan.todo))
        if self.start_method == "fork" and any(
                isinstance(t := p.run.config.train.threads, int) and t > 1 for p in plan.todo):
            # A run that sets train.threads above one would use the OpenMP pool in a forked
            # child: spawn the workers instead (see the module doc).  ``auto`` never goes
            # above the worker's one thread.
            self.start_method = "spawn"
        slots = gpu_slots(self.jobs)
        for planned in plan.todo:
            train = planned.run.config.train
            if slots is not None and train.device.startswith("cuda:") and self.jobs > 1:
                raise ConfigError(
                    f"`train.device`: {train.device!r} pins one GPU, but --jobs {self.jobs} gives "
                    "each job its own GPUs; use device auto or cuda",
                    field="train.device").within(f"run {planned.index}")
            if slots is not None and train.nproc > 1 and train.device != "cpu":
                per = len(slots[0].split(","))
                if train.nproc > per:
                    raise ConfigError(
                        f"`train.nproc`: {train.nproc} GPUs per run, but --jobs {self.jobs} "
                        f"leaves {per} GPU(s) per job; lower --jobs or train.nproc",
                        field="train.nproc").within(f"run {planned.index}")

    accepts_feed = True  # execute(..., feed=): one pool for every run a RunFeed gives

    def execute(self, plan: Plan, store: RunStore, observer: SweepObserver | None = None,
                feed: RunFeed | None = None) -> SweepResult:
        observer = observer or NullObserver()
        result = SweepResult(plan)
        # The units of work: a run alone, or a stack of runs (train.stack) one worker trains.
        todo = deque(plan_units(plan.todo))
        needed = len(todo) if feed is None else len(plan.todo)
        if not self.workers:  # forked workers, or executed again after a close
            # Before the progress display starts its thread: a fork copies only this one.
            self.workers.extend(self.spawn(i) for i in range(min(self.jobs, needed)))
        self._trim(needed)
        observer.on_sweep_start(plan)
        # optimizer.lr: auto: the range tests run here, in the store's process, once per
        # group, while the workers finish importing; each run is sent with its result.
        self.chosen = resolve_plan_lrs(plan, store, observer)
        pool = _Pool(self, store, observer, result, todo, feed)
        try:
            pool.run()
        finally:
            self.close()
        if pool.disk_full is not None:  # after the runs in flight ended: as a full store does
            raise pool.disk_full
        return result


class _Pool:
    """The dispatch loop: hand out runs, answer workers, notice deaths and Ctrl-C."""

    def __init__(self, executor: PoolExecutor, store: RunStore, observer: SweepObserver,
                 result: SweepResult, todo: deque[Unit], feed: RunFeed | None = None
                 ) -> None:
        self.store, self.observer, self.result, self.todo = store, observer, result, todo
        self.executor, self.feed = executor, feed
        self.root = str(store.root)
        self.replayer = Replayer()
        self.workers = executor.workers  # shared: close() ends whatever is left
        self.failed_starts = 0
        self.stopping = False
        self.disk_full: DiskFull | None = None  # a run failed on a full disk: start no more

    def run(self) -> None:
        while self.workers:
            if interrupt.stop_requested() and not self.stopping:
                self._stop()
            ready = wait([w.conn for w in self.workers] + [w.process.sentinel
                                                          for w in self.workers], timeout=0.2)
            for worker in list(self.workers):
                if worker.conn in ready:
                    self._receive(worker)
            for worker in list(self.workers):
                if worker.process.sentinel in ready and worker in self.workers:
                    self._drain(worker)
                    if worker in self.workers:
                        self._died(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            frame, message = worker.conn.recv()
        except (EOFError, OSError):
            self._died(worker)
            return
        if frame == "req":
            value = answer(self.store, message)
            worker.claims.note(message, value)
            worker.conn.send((value, self.stopping))
            return
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self._assign(worker)
        elif kind == "hook":
            self.replayer.replay(worker.callbacks.get(message[2], []), *message[1:])
        elif kind == "done":
            unit, outcomes = worker.unit, message[1]
            worker.unit, worker.callbacks, worker.signalled = None, {}, False
            worker.claims = Claims()
            if unit is not None:
                runs = {p.run_id: p for p in unit.runs}
                for outcome in outcomes:  # in the order the worker stored them
                    self._finished(runs[outcome.run_id], outcome)
            self._assign(worker)

    def _drain(self, worker: _Worker) -> None:
        """Read what a dead worker sent before it died."""
        while worker in self.workers and worker.conn.poll():
            self._receive(worker)

    def _assign(self, worker: _Worker) -> None:
        if not self.todo and not self.stopping:
            self._refill()
        if self.todo and not self.stopping:
            unit = self.todo.popleft()
            worker.unit = unit
            worker.callbacks = {p.run_id: list(self.observer.callbacks(p)) for p in unit.runs}
            worker.conn.send(("run", unit, self.root,
                              auto_for(unit.first, self.executor.chosen)))
        else:
            worker.conn.send(("exit",))
            self._retire(worker)

    def _refill(self) -> None:
        """The queue ran dry: ask the feed for more (its ``lr: auto`` range tests run here)."""
        self.feed = refill(self.feed, self.todo, self.executor.chosen, self.store, self.observer)

    def _finished(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        self.result.settle(planned, outcome, self.observer, self.feed)
        try:
            stop_if_disk_full(outcome)
        except DiskFull as exc:  # every later run would fail the same way: start none
            self.disk_full = self.disk_full or exc
            self.todo.clear()
            self.feed = None

    def _died(self, worker: _Worker) -> None:
        """A worker is gone: its run failed (the sweep goes on with a fresh worker)."""
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        self._retire(worker)
        how = (f"was killed by signal {signal.Signals(-code).name}" if code is not None
               and code < 0 else f"exited with code {code}")
        if worker.unit is not None:
            what = "this run's stack" if worker.unit.stacked else "this run"
            error = (f"the worker process training {what} (pid {worker.process.pid}) {how}; "
                     "rerun the sweep to retry it (it resumes from its last checkpoint)")
            for planned, outcome in worker.claims.lost(worker.unit, self.store, error):
                self._finished(planned, outcome)
        elif not worker.ready:
            self.failed_starts += 1
        if self.stopping or not (self.todo or self.feed is not None):
            return
        if self.failed_starts > self.executor.jobs:  # workers cannot start: fail what is left
            self.feed = None
            error = f"no worker process could start (the last {how}); see the output above"
            while self.todo:
                for planned in self.todo.popleft().runs:
                    self.store.finish_run(planned.run_id, "failed", error, {})
                    self._finished(planned, RunOutcome(planned.run_id, "failed", error, {}))
            return
        # Spawned, not forked: the progress display's thread runs now, and a fork could copy
        # a lock it holds.
        self.workers.append(self.executor.spawn(worker.slot, "spawn"))

    def _retire(self, worker: _Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
            self.executor.retired.append(worker.process)  # joined by close()
        worker.conn.close()

    def _stop(self) -> None:
        """First Ctrl-C: start nothing new; busy workers stop after their current step."""
        self.stopping = True
        self.result.interrupted = True
        for worker in list(self.workers):
            if worker.unit is None:
                if worker.ready:
                    worker.conn.send(("exit",))
                    self._retire(worker)
                continue
            if not worker.signalled and worker.process.pid is not None:
                worker.signalled = True
                with suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGUSR1)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _worker_main(conn: Connection, threads: int) -> None:
    """A worker: train the runs it is sent until told to exit (or its parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; see the module doc
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Slurm signals every process of the step
    signal.signal(signal.SIGUSR1, lambda signum, frame: interrupt.request_stop())
    torch.set_num_threads(threads)
    channel = ConnectionChannel(conn, on_stop=interrupt.request_stop)
    conn.send(("post", ("ready",)))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] != "run":
            return
        unit: Unit = message[1]  # one run, or a stack trained as one model (train.stack)
        store = RemoteStore(channel, Path(message[2]))
        pairs = train_unit(unit, store, lambda planned: [RelayCallback(channel)], message[3])
        conn.send(("post", ("done", [outcome for _, outcome in pairs])))
