"""Stacked training (``train.stack``): N runs that differ only in what can differ per model
(LR and other optimizer hyperparameters, weight decay, schedule, seed) trained as one model.

The N models are built as each solo run builds its own (seeded with the run's seed, so each
starts from its solo init), then stacked with ``torch.func.stack_module_state``; one
``vmap(functional_call)`` runs forward and backward of all of them per step, one batched matmul
per layer instead of N small ones (without vmap for models made only of Flatten, Linear and
elementwise activations: :mod:`trainlab.engine.stack_fast`).  Each model draws its batches
from its own seed's epoch permutation (:func:`trainlab.engine.loop.epoch_permutation`, as its
solo run), steps with its own hyperparameters
(:class:`~trainlab.engine.stack_optim.StackedOptimizer`) and its own LR schedule (a torch
scheduler per run, on an optimizer that holds one placeholder parameter and only carries the
LR), and writes its own records under its own run id.

A model whose loss turns non-finite is masked out (its weights and optimizer state zeroed, its
LR held at 0) and ends ``diverged`` while the others go on.  A model vmap cannot batch fails the
trial step before anything is recorded: :class:`StackUnsupported`, and its runs train alone.

Time and memory are the stack's: every run of a stack records the stack's wall-clock and its
peak memory (the process's peak RSS; on CUDA the allocator's peaks; the peak of the stack's own
tensors, tracked over the first stacked step on CPU as a solo run's first step is:
:mod:`trainlab.engine.measure`), and its summary says so (``memory_of: "stack of N"``;
``perf/stacked`` says how many runs shared them).  The first step is the warm-up, timed apart
and kept out of training time, as a solo run's.

An out-of-memory error in the stacked step splits the stack: :func:`train_stack` trains each
half the same way, down to runs alone, and each run's summary says so (``stack_split``).

Each run keeps its own checkpoints as if it had trained alone: at epoch ends (the solo rule:
``train.checkpoint_every_s``, always the last epoch) every live run writes its ``last.pt`` in the
solo engine's format, and a rerun after a kill resumes every run of the stack from them, or,
when they do not agree, trains the stack again from its start (:mod:`trainlab.engine.stack_resume`).
A run that diverges is stored ``diverged`` at once (``finished``), so a rerun leaves it be.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from trainlab.components import (
    ScheduleContext,
    build_finetune,
    build_model,
    build_optimizer,
    build_schedule,
    count_parameters,
    load_dataset,
)
from trainlab.components.datasets import Split
from trainlab.components.optimizers import no_dynamo_import, resolved_lr
from trainlab.components.schedules import Schedule
from trainlab.config.schema import RunConfig
from trainlab.devices import release_cached, resolve_device, synchronize
from trainlab.engine import allocator, interrupt, stack_resume
from trainlab.engine import threads as thread_rules
from trainlab.engine.loop import OOM_TEXTS, epoch_permutation, seed_everything
from trainlab.engine.measure import PeakMemory, TensorTracker
from trainlab.engine.stack_fast import LinearChain, batched_loss, stacked_grad_norms
from trainlab.engine.stack_optim import StackedOptimizer, TrackedOptimizer
from trainlab.engine.tasks import TASKS, TaskKind, confusion_matrix, training_loss
from trainlab.engine.threads import ThreadChoice
from trainlab.hooks import RunOutcome
from trainlab.records import MetricRecord, RecordSink

STACK_NOTE = ("trained in a stack of {n} runs (train.stack): its times and memory peaks are the "
              "stack's, shared with the other runs; compare them with stacked runs only")


class StackUnsupported(Exception):
    """The models cannot be stacked (vmap cannot batch them): the runs train alone."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _StackOutOfMemory(Exception):
    """The stacked step ran out of memory (a stack of two runs or more): split it."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: CUDA's ``OutOfMemoryError``, Python's
    ``MemoryError``, or an error whose text says so (the CPU allocator's "can't allocate
    memory", the device libraries' own; :data:`trainlab.engine.loop.OOM_TEXTS`)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(t in text for t in OOM_TEXTS)


@dataclass
class _Member:
    """One run of the stack: its config, id, records and fate."""

    config: RunConfig
    run_id: str
    run_dir: Path | None
    schedule: Schedule
    carrier: torch.optim.Optimizer  # holds the LR the schedule sets
    status: str = "ok"
    error: str | None = None
    best: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, Tensor] | None = None
    records: list[MetricRecord] = field(default_factory=list)
    last_step_loss: float | None = None
    grad_norms: list[float] = field(default_factory=list)  # at log points, for the median
    layout: stack_resume.SoloLayout | None = None  # its solo optimizer's groups, its RNG
    best_unsaved: bool = False  # best_state is newer than its best.pt
    epoch_stats: list[dict[str, float]] = field(default_factory=list)  # as its last.pt has

    @property
    def alive(self) -> bool:
        return self.status == "ok"

    @property
    def lr(self) -> float:
        return float(self.carrier.param_groups[0]["lr"])


def train_stack(configs: Sequence[RunConfig], run_ids: Sequence[str],
                run_dirs: Sequence[Path | None], sink: RecordSink,
                alone: Callable[[int], RunOutcome] | None = None,
                finished: Callable[[RunOutcome], None] | None = None) -> list[RunOutcome]:
    """Train the runs of one stack together; one outcome per run, in order (``finished``
    hears of a run that diverged as it is masked out, to store it at once).

    Raises :class:`StackUnsupported` (before any record is written) when the models cannot be
    stacked.  Never raises for a run that fails in training: a failure of the stack fails
    each of its runs, with the traceback.

    An out-of-memory error in the stacked step (or its trial) splits the stack in halves, each
    trained the same way, so a half that still does not fit splits again; a half of one run
    trains alone: ``alone(i)`` trains run ``i`` of ``configs`` by itself (the executor's solo
    path), or, without it, as a stack of one (whose out-of-memory error is its status
    ``oom``).  Each run's summary says how its stack was split (``stack_split``).
    """
    n = len(configs)
    try:
        return _StackTrainer(list(configs), list(run_ids), list(run_dirs), sink,
                             finished).run()
    except _StackOutOfMemory as exc:
        error = str(exc)  # the trainer and its tensors are gone with the exception's frames
    device = resolve_device(configs[0].train.device)
    if device.type == "cuda":  # the failed step's cached blocks, back to the device
        release_cached(device)
    half = (n + 1) // 2
    note = (f"a stack of {n} runs ran out of memory ({error}): split into stacks of "
            f"{half} and {n - half}")
    outcomes: list[RunOutcome] = []
    for part in (list(range(half)), list(range(half, n))):
        if any(o.status == "interrupted" for o in outcomes):  # Ctrl-C: the rest waits
            got = [RunOutcome(run_ids[i], "interrupted", "interrupted by the user (Ctrl-C) "
                              "before this part of a split stack trained", {}) for i in part]
        elif len(part) == 1 and alone is not None:
            got = [alone(part[0])]
        else:
            got = train_stack([configs[i] for i in part], [run_ids[i] for i in part],
                              [run_dirs[i] for i in part], sink,
                              None if alone is None else
                              (lambda j, part=part: alone(part[j])),  # type: ignore[misc]
                              finished)
        for o in got:
            splits = [note, *o.summary.get("stack_split", [])]
            outcomes.append(RunOutcome(o.run_id, o.status, o.error,
                                       {**o.summary, "stack_split": splits}))
    return outcomes


class _StackTrainer:
    def __init__(self, configs: list[RunConfig], run_ids: list[str],
                 run_dirs: list[Path | None], sink: RecordSink,
                 finished: Callable[[RunOutcome], None] | None = None) -> None:
        self.configs, self.run_ids, self.run_dirs, self.sink = configs, run_ids, run_dirs, sink
        self.finished = finished
        self.notes: list[str] = []  # how it resumed or why it could not
        self.members: list[_Member] = []
        self.epoch = 0
        self.step = 0
        self.train_time = 0.0
        self.t0 = self.checkpointed_at = time.perf_counter()
        self.unsaved: stack_resume.EpochEnd | None = None  # not yet on disk: Ctrl-C writes it
        self.epoch_samples: list[float] = []
        self.memory_stats: list[dict[str, float]] = []
        self.warmup_time: float | None = None

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> list[RunOutcome]:
        threads = torch.get_num_threads()
        status, error = "ok", None
        try:
            self._setup()  # StackUnsupported leaves here, before any record
            self._fit()
            self._test()
        except StackUnsupported:
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                status, error = "failed", traceback.format_exc()
            elif len(self.run_ids) > 1:  # split the stack (train_stack)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise _StackOutOfMemory(f"{type(exc).__name__}: {first[:200]}") from None
            else:
                status, error = "oom", (
                    f"out of memory at data.batch_size={self.configs[0].data.batch_size}: "
                    f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}")
        except KeyboardInterrupt:
            status, error = "interrupted", ("interrupted by the user (Ctrl-C); a rerun resumes "
                                            "every run of the stack from its last checkpoint")
        finally:
            torch.set_num_threads(threads)
        if len(self.members) < len(self.run_ids):  # setup failed before every run was built
            return [RunOutcome(rid, status, error, {}) for rid in self.run_ids]
        for m in self.members:
            if m.alive and status != "ok":
                m.status, m.error = status, error
        try:
            self._flush()
            if status == "interrupted":  # the last epoch end's checkpoints, if not on disk
                stack_resume.write_unsaved(self)
        except KeyboardInterrupt:
            for m in self.members:
                if m.alive:
                    m.status, m.error = "interrupted", "interrupted by the user (Ctrl-C)"
        return [RunOutcome(m.run_id, m.status, m.error, self._summary(m)) for m in self.members]

    def _setup(self) -> None:
        cfg = self.configs[0]
        allocator.steady()
        self.device = device = resolve_device(cfg.train.device)
        self.memory = PeakMemory(device)
        self.memory.reset()
        data = load_dataset(cfg.data, cfg.model)
        self.info = data.info
        train, valid, test = data.train, data.valid, data.test
        if not (isinstance(train, Split) and isinstance(valid, Split)
                and isinstance(test, Split)):
            raise StackUnsupported("the data is read item by item (a Dataset), not tensors "
                                   "in memory")
        self.task: TaskKind = TASKS[data.info.task]
        self.loss_fn = training_loss(cfg, self.task)
        self.train_split: Split = train.to(device)
        self.valid_split: Split = valid.to(device)
        self.test_split: Split = test.to(device)
        bs = cfg.data.batch_size
        self.steps_per_epoch = math.ceil(len(self.train_split) / bs)
        models: list[nn.Module] = []
        for config, run_id, run_dir in zip(self.configs, self.run_ids, self.run_dirs):
            # Each model exactly as its solo run builds it: the run's seed, then the model.
            seed_everything(config.train.seed)
            model = build_model(config.model, data.info).to(device)
            tuning = build_finetune(config.finetune, model, resolved_lr(config.optimizer))
            model = (tuning.model if tuning.model is not None else model).to(device)
            models.append(model)
            layout = stack_resume.solo_layout(config, tuning.param_groups, model, device)
            placeholder = nn.Parameter(torch.zeros(1))
            # Never stepped nor compiled: built without importing torch._dynamo (about 2 s
            # of a stacked run that the stacked step never needs).
            with no_dynamo_import():
                carrier = build_optimizer(config.optimizer, [placeholder])
            # The carrier is never stepped: tell the scheduler not to warn about that.
            carrier._opt_called = True  # type: ignore[attr-defined]
            with warnings.catch_warnings(), no_dynamo_import():
                warnings.simplefilter("ignore", UserWarning)
                schedule = build_schedule(config.schedule, carrier, ScheduleContext(
                    config.train.epochs, self.steps_per_epoch))
            self.members.append(_Member(config, run_id, run_dir, schedule, carrier,
                                        layout=layout))
        self.base = copy.deepcopy(models[0]).to("meta")
        # Flatten/Linear/activation models with the task's own loss: batched matmuls without
        # vmap (engine/stack_fast.py), once the trial step has shown they give each model's
        # own loss.
        self.chain = (LinearChain.of(self.base) if cfg.train.loss is None
                      and self.task.name in ("classification", "regression") else None)
        self.fast = False
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = buffers
        self.optimizer = StackedOptimizer([c.optimizer for c in self.configs], self.params)
        self.total, self.trainable = count_parameters(models[0])
        del models
        self._trial()
        self.threads = self._choose_threads()
        torch.set_num_threads(self.threads.threads)
        if stack_resume.restore(self):  # each run from its last.pt, its later rows rewound
            return
        for m in self.members:  # a new start: whatever an earlier attempt recorded goes
            self.sink.rewind(m.run_id, -1)
            self._record(m, 0, {
                "params/total": self.total, "params/trainable": self.trainable,
                "params/trainable_pct": 100.0 * self.trainable / max(self.total, 1),
                "perf/threads": float(self.threads.threads),
                "perf/stacked": float(len(self.members))}, epoch=0)
        self._flush()

    def _forward_one(self, params: dict[str, Tensor], buffers: dict[str, Tensor],
                     x: Tensor) -> Tensor:
        out: Tensor = functional_call(self.base, (params, buffers), (x,))
        return out

    def _loss_one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
                  y: Tensor) -> tuple[Tensor, Tensor]:
        out = self._forward_one(params, buffers, x)
        return self.loss_fn(out, y), out

    def _losses(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
                y: Tensor) -> tuple[Tensor, Tensor]:
        """Each model's training loss ``[N]`` and outputs ``[N, B, ...]`` on its own batch."""
        if self.fast:
            assert self.chain is not None
            out = self.chain.forward(params, x)
            losses = batched_loss(self.task.name, out, y)
            assert losses is not None  # the trial step checked the shapes
            return losses, out
        result: tuple[Tensor, Tensor] = vmap(self._loss_one)(params, buffers, x, y)
        return result

    def _forward_all(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs ``[N, B, ...]`` of every model on one shared batch ``x``."""
        if self.fast:
            assert self.chain is not None
            n = next(iter(params.values())).shape[0]
            return self.chain.forward(params, x.expand(n, *x.shape))
        out: Tensor = vmap(self._forward_one, in_dims=(0, 0, None))(params, self.buffers, x)
        return out

    def _choose_threads(self) -> ThreadChoice:
        """``train.threads`` for the stack: a number as given; ``auto`` as a solo run decides
        it (:mod:`trainlab.engine.threads`: one on a busy machine, else the fastest count),
        timing the stacked step itself, whose work is N times a solo step's.  Two threads
        ran a stack of digits MLPs 6-10x slower than one while other work shared this 2-core
        machine (the barrier waits for a stolen core): the busy check matters."""
        spec = self.configs[0].train.threads
        if isinstance(spec, int):
            return ThreadChoice(spec, "set")
        if self.device.type != "cpu":
            return ThreadChoice(torch.get_num_threads(), "accelerator")
        limit = thread_rules.ceiling()
        others = thread_rules.others_running() if limit > 1 else None
        choice = thread_rules.before_timing(limit, others)
        if choice is not None:
            return choice
        free = thread_rules.room(limit, others)
        # The estimate's probe of this stack timed it a moment ago: its answer, within the
        # cores free now.
        scope = f" stack of {len(self.members)}"
        recalled = thread_rules.recall(self.configs[0], limit, most=free, scope=scope)
        if recalled is not None:
            return recalled

        def step_at(count: int) -> float:
            torch.set_num_threads(count)
            t = time.perf_counter()
            self._trial_step()
            return time.perf_counter() - t

        choice = thread_rules.choose(step_at, free, free_cores=free)
        thread_rules.remember(self.configs[0], limit, choice, scope=scope)
        return choice

    def _trial_batch(self) -> tuple[Tensor, Tensor]:
        n = len(self.members)
        bs = min(self.configs[0].data.batch_size, len(self.train_split))
        x = self.train_split.inputs[:bs].expand(n, *self.train_split.inputs[:bs].shape)
        y = self.train_split.targets[:bs].expand(n, *self.train_split.targets[:bs].shape)
        return x, y

    def _trial_step(self) -> None:
        """One forward and backward of the step as training runs it, grads thrown away."""
        x, y = self._trial_batch()
        buffers = {k: v.clone() for k, v in self.buffers.items()}
        try:
            self._losses(self.params, buffers, x, y)[0].sum().backward()
        finally:
            for p in self.params.values():
                p.grad = None

    def _fast_agrees(self, x: Tensor, y: Tensor, reference: Tensor) -> bool:
        """Whether the fast path gives ``reference`` (each model's loss, computed alone) on
        the trial batch."""
        if self.chain is None:
            return False
        try:
            with torch.no_grad():
                out = self.chain.forward(self.params, x)
                losses = batched_loss(self.task.name, out, y)
        except Exception as exc:  # a shape the chain does not expect: vmap it is
            if is_out_of_memory(exc):
                raise
            return False
        return (losses is not None and losses.shape == reference.shape
                and bool(torch.allclose(losses, reference, rtol=1e-4, atol=1e-6)))

    def _solo_losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Each model's loss on its trial batch, one model at a time (no vmap)."""
        with torch.no_grad():
            return torch.stack([self.loss_fn(functional_call(
                self.base, ({k: v[i] for k, v in self.params.items()},
                            {k: v[i] for k, v in self.buffers.items()}), (x[i],)), y[i])
                for i in range(x.shape[0])])

    def _trial(self) -> None:
        """One forward and backward on copies of the buffers, grads thrown away: a model vmap
        cannot batch fails here, before anything is recorded or stepped.  A model the fast
        path (engine/stack_fast.py) runs, with the losses each model gives alone, needs no
        vmap at all (vmap's first cross-entropy imports sympy: 1-2 s)."""
        x, y = self._trial_batch()
        if self.chain is not None:
            try:
                self.fast = self._fast_agrees(x, y, self._solo_losses(x, y))
                if self.fast:
                    self._trial_step()
                    return
            except Exception as exc:  # the vmap trial below says what is wrong, if anything
                if is_out_of_memory(exc):
                    raise
                self.fast = False
        buffers = {k: v.clone() for k, v in self.buffers.items()}
        try:
            losses, _ = vmap(self._loss_one)(self.params, buffers, x, y)
            losses.sum().backward()
        except Exception as exc:  # vmap's refusals are RuntimeErrors, ValueErrors and more
            if is_out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StackUnsupported(f"torch.func.vmap cannot batch this model: {first[:300]}"
                                   ) from exc
        finally:
            for p in self.params.values():
                p.grad = None

    # --- training ----------------------------------------------------------------------------

    def _fit(self) -> None:
        epochs = self.configs[0].train.epochs
        for epoch in range(self.epoch + 1, epochs + 1):  # after a resumed checkpoint's
            if interrupt.stop_requested():
                raise KeyboardInterrupt
            if not any(m.alive for m in self.members):
                break
            self.epoch = epoch
            self._train_epoch(epoch)

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.configs[0]
        bs, n = cfg.data.batch_size, len(self.members)
        log_every = cfg.train.log_every
        n_train = len(self.train_split)
        # Each run's own order: its seed's permutation, as its solo run draws it.
        orders = torch.stack([epoch_permutation(n_train, m.config.train.seed, epoch)
                              for m in self.members]).to(self.device)
        inputs, targets = self.train_split.inputs, self.train_split.targets
        step_fn = self._losses
        per_step = [m.schedule for m in self.members if m.schedule.per_step]
        interval: list[tuple[Tensor, Tensor, Tensor]] = []
        norms: Tensor | None = None  # each model's gradient norm [N] at the log step
        sums = torch.zeros(3, n, dtype=torch.float64)  # loss, metric, weight per model
        lrs = [m.lr if m.alive else 0.0 for m in self.members]
        stop = interrupt.FLAG
        t_start = t_interval = time.perf_counter()
        paused = paused_interval = 0.0  # logging, and the warm-up step
        timed = 0  # steps of this interval whose time counts
        for start in range(0, n_train, bs):
            idx = orders[:, start:start + bs]
            x, y = inputs[idx], targets[idx]
            is_log = (self.step + 1) % log_every == 0
            if self.warmup_time is None:  # the first step: warm-up, timed apart, measured
                t = time.perf_counter()
                losses, out, norms = self._warm_step(x, y, lrs, (orders, idx, x, y), is_log)
                synchronize(self.device)
                self.warmup_time = time.perf_counter() - t
                paused += self.warmup_time
                paused_interval += self.warmup_time
            else:
                losses, out = step_fn(self.params, self.buffers, x, y)
                losses.sum().backward()
                if is_log:  # as the solo run: the log step's gradients, before the step
                    norms = stacked_grad_norms(self.params.values(), n, self.device)
                self.optimizer.step(lrs)
                for p in self.params.values():
                    p.grad = None
                timed += 1
            if per_step:
                for s in per_step:
                    s.after_step()
                lrs = [m.lr if m.alive else 0.0 for m in self.members]
            interval.append((losses.detach(), out.detach(), y))
            self.step += 1
            if self.step % log_every == 0:
                t = time.perf_counter()
                self._log(interval, sums,
                          (t - t_interval - paused_interval) / timed if timed else None, norms)
                lrs = [m.lr if m.alive else 0.0 for m in self.members]
                interval, timed, paused_interval, norms = [], 0, 0.0, None
                t_interval = time.perf_counter()
                paused += t_interval - t
            if stop[0]:
                raise KeyboardInterrupt
        if interval:
            t = time.perf_counter()
            self._log(interval, sums, None)
            paused += time.perf_counter() - t
        epoch_time = time.perf_counter() - t_start - paused
        self.train_time += epoch_time
        self._validate()
        memory = self.memory.read()  # the stack's peaks, recorded by each of its runs
        self.memory_stats.append(memory)
        for m in self.members:
            if m.alive:
                m.schedule.after_epoch()
        lrs = [m.lr if m.alive else 0.0 for m in self.members]
        host = sums.tolist()
        for i, m in enumerate(self.members):
            if not m.alive:
                continue
            values = {f"train/{k}": v for k, v in self.task.finalize(
                host[0][i], host[1][i], host[2][i]).items()}
            values.update({"time/epoch_train": epoch_time, "time/train": self.train_time,
                           "throughput/samples_per_s": n_train / epoch_time if epoch_time else 0.0,
                           "throughput/stack_samples_per_s":
                               n * n_train / epoch_time if epoch_time else 0.0})
            values.update(memory)
            self._record(m, self.step, values)
            m.epoch_stats.append(values)
        self.epoch_samples.append(n_train / epoch_time if epoch_time else 0.0)
        self._flush()
        stack_resume.checkpoint(self, epoch)  # each run's last.pt, after its records

    def _warm_step(self, x: Tensor, y: Tensor, lrs: Sequence[float], batch: tuple[Tensor, ...],
                   is_log: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """The first stacked step, with the peak of the stack's own tensors tracked over it on
        CPU (:class:`~trainlab.engine.measure.TensorTracker`, from what the stack holds as it
        starts: weights, buffers, data splits, the epoch's orders and the batch; made a steady
        step's peak as a solo run's is).  On CUDA the allocator counts them."""
        optimizer = TrackedOptimizer(self.optimizer)
        tracker = None
        if self.device.type != "cuda":
            held = [*self.params.values(), *self.buffers.values(),
                    *(t for split in (self.train_split, self.valid_split, self.test_split)
                      for t in (split.inputs, split.targets)), *batch]
            tracker = TensorTracker(self.device, held)
            tracker.watch(optimizer)
        with tracker if tracker is not None else contextlib.nullcontext():
            losses, out = self._losses(self.params, self.buffers, x, y)
            if tracker is not None:
                tracker.after_forward = tracker.peak
            losses.sum().backward()
            norms = (stacked_grad_norms(self.params.values(), x.shape[0], self.device)
                     if is_log else None)
            optimizer.step(lrs)
            for p in self.params.values():
                p.grad = None
        if tracker is not None:
            self.memory.tensor_peak = tracker.steady_peak
        return losses, out, norms

    def _log(self, interval: list[tuple[Tensor, Tensor, Tensor]], sums: Tensor,
             step_time: float | None, norms: Tensor | None = None) -> None:
        """Read the interval's per-model loss (and metric) and the log step's per-model
        gradient norms in one host sync; mask out models whose loss is no longer finite."""
        losses = torch.stack([loss for loss, _, _ in interval])  # [steps, N]
        weights = torch.tensor([float(y[0].numel()) for _, _, y in interval])
        loss_sum = (losses.double() * weights.to(losses.device, torch.float64)[:, None]).sum(0)
        if self.task.keeps_outputs:
            correct = torch.stack([(out.argmax(-1) == y).sum(-1) for _, out, y in interval]
                                  ).sum(0).double()
        else:
            correct = torch.zeros_like(loss_sum)
        rows = [loss_sum, correct, weights.sum().double().expand_as(loss_sum)]
        if norms is not None:
            rows.append(norms.detach().to(loss_sum.device, torch.float64))
        host = torch.stack(rows).cpu()  # the one sync of this log point
        step_values = host[0] / host[2]
        for i, m in enumerate(self.members):
            if not m.alive:
                continue
            loss = float(step_values[i])
            if not math.isfinite(loss):
                self._diverge(i, f"train loss became {loss} by step {self.step} "
                              f"(epoch {self.epoch}, lr {m.lr:.3g})")
                continue
            sums[:, i] += host[:3, i]
            values = {"train/step_loss": loss, "lr": m.lr}
            if norms is not None:
                values["grad_norm"] = float(host[3, i])
                m.grad_norms.append(values["grad_norm"])
            if step_time is not None:
                values["time/step"] = step_time
            self._record(m, self.step, values)
        self._flush()

    def _diverge(self, index: int, why: str) -> None:
        """Mask model ``index`` out: zero weights and state (finite, so its part of the stacked
        step stays finite), and LR 0 from now on; the others go on."""
        m = self.members[index]
        m.status, m.error = "diverged", why
        with torch.no_grad():
            for p in self.params.values():
                p[index].zero_()
        self.optimizer.reset_model(index)
        if self.finished is not None:  # stored now: a rerun after a kill leaves it diverged
            self._flush()
            self.finished(RunOutcome(m.run_id, m.status, m.error, self._summary(m)))

    # --- evaluation --------------------------------------------------------------------------

    def _evaluate(self, split: Split, params: dict[str, Tensor]) -> list[dict[str, float]]:
        """Loss and metrics of every model over ``split``; one host sync."""
        n = next(iter(params.values())).shape[0]
        eval_bs = self.configs[0].data.eval_batch_size or max(self.configs[0].data.batch_size,
                                                               256)
        task = self.task
        loss_sum = torch.zeros(n, device=self.device)
        metric_sum = torch.zeros(n, device=self.device)
        count = 0.0
        predictions = []
        self.base.eval()  # batch norm's running statistics, no dropout: as the solo run
        with torch.no_grad():
            for start in range(0, len(split), eval_bs):
                x = split.inputs[start:start + eval_bs]
                y = split.targets[start:start + eval_bs]
                out = self._forward_all(params, x)  # [N, B, ...]
                for i in range(n):
                    batch_loss, batch_metric = task.sums(out[i], y)
                    loss_sum[i] += batch_loss.float()
                    metric_sum[i] += batch_metric.float()
                count += float(task.weight(y))
                if task.extra_metrics:
                    predictions.append(out.argmax(-1))
            classes = self.info.num_outputs if task.extra_metrics else 0
            confusions = None
            if classes:
                found = torch.cat(predictions, 1) if predictions else None
                confusions = torch.stack([
                    confusion_matrix(split.targets, found[i], classes).flatten().float()
                    for i in range(n)]) if found is not None else None
            host_loss, host_metric = loss_sum.tolist(), metric_sum.tolist()
            host_conf = confusions.tolist() if confusions is not None else None
        self.base.train()
        results = []
        for i in range(n):
            confusion = None
            if host_conf is not None:
                flat = host_conf[i]
                confusion = [flat[r * classes:(r + 1) * classes] for r in range(classes)]
            results.append(task.finalize(host_loss[i], host_metric[i], count, confusion))
        return results

    def _validate(self) -> None:
        if len(self.valid_split) == 0:
            return
        t = time.perf_counter()
        results = self._evaluate(self.valid_split, self.params)
        seconds = time.perf_counter() - t
        for i, (m, result) in enumerate(zip(self.members, results)):
            if not m.alive:
                continue
            values = {f"valid/{k}": v for k, v in result.items()}
            if not math.isfinite(values["valid/loss"]):
                self._diverge(i, f"validation loss became {values['valid/loss']} at step "
                              f"{self.step} (epoch {self.epoch})")
                continue
            values["time/eval"] = seconds
            self._record(m, self.step, values)
            m.schedule.after_eval(values["valid/loss"])
            self._track_best(i, m, values)

    def _track_best(self, index: int, m: _Member, values: dict[str, float]) -> None:
        monitor = m.config.train.monitor if m.config.train.monitor in values else "valid/loss"
        value = values[monitor]
        best = m.best.get("best_value")
        higher = monitor.rsplit("/", 1)[-1] in ("accuracy", "f1", "mcc")
        sign = 1.0 if higher else -1.0
        if best is None or sign * (value - best) > 0:
            m.best.update(best_value=value, best_monitor=monitor, best_epoch=self.epoch,
                          best_step=self.step, best_valid=dict(values))
            m.best_state = {k: v[index].detach().clone() for k, v in
                            {**self.params, **self.buffers}.items()}
            m.best_unsaved = True  # best.pt: with the next last.pt, or before the test

    def _test(self) -> None:
        """Each run's best weights on the test split (as its solo run: best.pt, then test)."""
        alive = [i for i, m in enumerate(self.members) if m.alive]
        if not alive:
            return
        for i in alive:
            m = self.members[i]
            if m.best_state is None:  # no validation split: the last weights
                m.best_state = {k: v[i].detach().clone() for k, v in
                                {**self.params, **self.buffers}.items()}
                m.best_unsaved = True
        stack_resume.save_best(self, [self.members[i] for i in alive])
        if len(self.test_split) == 0:
            return
        assert all(self.members[i].best_state is not None for i in alive)
        keys = list(self.params)
        best = {k: torch.stack([self.members[i].best_state[k]  # type: ignore[index]
                                for i in alive]) for k in keys}
        saved_buffers = self.buffers
        self.buffers = {k: torch.stack([self.members[i].best_state[k]  # type: ignore[index]
                                        for i in alive]) for k in saved_buffers}
        try:
            results = self._evaluate(self.test_split, best)
        finally:
            self.buffers = saved_buffers
        for i, result in zip(alive, results):
            m = self.members[i]
            values = {f"test/{k}": v for k, v in result.items()}
            m.best["test"] = values
            self._record(m, self.step, values)

    # --- records and summaries ---------------------------------------------------------------

    def _record(self, m: _Member, step: int, values: dict[str, float],
                epoch: int | None = None) -> None:
        now = time.perf_counter() - self.t0
        ep = self.epoch if epoch is None else epoch
        m.records.extend(MetricRecord(m.run_id, k, step, ep, now, float(v))
                         for k, v in values.items())

    def _flush(self) -> None:
        records = [r for m in self.members for r in m.records]
        for m in self.members:
            m.records = []
        if records:
            self.sink.write(records)

    def _summary(self, m: _Member) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in m.best.items() if k not in ("best_valid",
                                                                             "test")}
        out.update({f"best_{k.replace('/', '_')}": v
                    for k, v in m.best.get("best_valid", {}).items()})
        out.update({k.replace("/", "_"): v for k, v in m.best.get("test", {}).items()})
        out.update(epochs=self.epoch, steps=self.step, train_time=self.train_time,
                   device=str(getattr(self, "device", "")), stacked=len(self.members),
                   stack=list(self.run_ids),
                   params_total=getattr(self, "total", None),
                   params_trainable=getattr(self, "trainable", None))
        if getattr(self, "total", None) is not None:
            out["params_trainable_pct"] = 100.0 * self.trainable / max(self.total, 1)
        if m.grad_norms:
            out["grad_norm_median"] = statistics.median(m.grad_norms)
        if self.epoch_samples:
            out["samples_per_s"] = sorted(self.epoch_samples)[len(self.epoch_samples) // 2]
        if getattr(self, "threads", None) is not None:
            out["speed"] = {"threads": self.threads.threads, "stacked": len(self.members),
                            "stack_step": "batched matmul" if self.fast else "vmap",
                            "threads_auto": self.threads.describe() if self.threads.auto
                            else None}
        if self.memory_stats:  # the stack's peaks (the table's memory cells): say so
            out["peak_memory_bytes"] = max(s["memory/peak_bytes"] for s in self.memory_stats)
            for key, name in (("memory/tensor_peak_bytes", "tensor_peak_bytes"),
                              ("memory/reserved_bytes", "reserved_memory_bytes")):
                values = [s[key] for s in self.memory_stats if key in s]
                if values:
                    out[name] = max(values)
            out["memory_of"] = f"stack of {len(self.members)}"
        if self.warmup_time is not None:
            out["warmup_time"] = self.warmup_time
        out["notes"] = [STACK_NOTE.format(n=len(self.members)), *self.notes]
        return out
