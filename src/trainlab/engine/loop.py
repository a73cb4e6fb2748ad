"""The one training loop.

Per step it does what a plain hand-written loop does (index a batch from memory, forward,
backward, optimizer step) plus a list append: no host sync, no extra kernels.  Every
``train.log_every`` steps it reads the interval's loss, the gradient norm (computed on that
step only) and the LR in one sync, and writes them through the sink.  At each epoch end it
validates, records times, throughput and peak memory, and checkpoints for resume.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainlab.components import (
    ScheduleContext,
    build_finetune,
    build_model,
    build_optimizer,
    build_schedule,
    count_parameters,
    load_dataset,
)
from trainlab.components.datasets import Split, split_summary
from trainlab.components.items import ItemSplit
from trainlab.components.optimizers import resolved_lr
from trainlab.components.python import PythonModelSpec, check_output
from trainlab.components.streams import StreamSplit
from trainlab.config.schema import RunConfig
from trainlab.devices import release_cached, resolve_device
from trainlab.engine import allocator, contention, distributed, flops, interrupt, machine
from trainlab.engine.callbacks import EarlyStopping
from trainlab.engine.checkpoint import load_latest, load_verified
from trainlab.engine.determinism import deterministic
from trainlab.engine.evaluate import evaluation_result, evaluation_sums, read_sums
from trainlab.engine.flops import (
    measure_peak_flops,
    raise_peak_flops,
    run_uses_tf32,
    slow_precision,
    tf32_flags,
    train_step_flops,
)
from trainlab.engine.interval import LogInterval
from trainlab.engine.measure import (
    TENSOR_PEAK_KEY,
    Clock,
    PeakMemory,
    clip_grad_norm,
    grad_norm,
    held_tensors,
)
from trainlab.engine.profile import run_window, window_for
from trainlab.engine.resume import Resumable, frozen_keys
from trainlab.engine.sampler import nvml_sampler
from trainlab.engine.seeding import seed_word
from trainlab.engine.speed import Speed, decide, intra_op_threads, scaler_sync_note
from trainlab.engine.tasks import TASKS, TaskKind, eval_batch_size, training_loss
from trainlab.engine.timing import epoch_rates, median_of, training_seconds
from trainlab.errors import Diverged
from trainlab.hooks import Callback, RunOutcome, RunState, StopTraining
from trainlab.mfu import UNRELIABLE_NOTE
from trainlab.records import MetricRecord, NullSink, RecordSink, metric_records


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of training examples in ``epoch``: a function of (seed, epoch) only.

    Using a generator of its own (never the global RNG) keeps dropout masks independent of
    data order, and makes a resumed run see exactly the batches an uninterrupted one would.
    """
    epoch_seed = seed_word((seed, epoch))  # SeedSequence([seed, epoch]) in plain Python
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: RunConfig, *, run_id: str | None = None, run_dir: Path | None = None,
          sink: RecordSink | None = None, callbacks: Sequence[Callback] = (),
          resume: bool = True) -> RunOutcome:
    """Train one run to the end and evaluate its best checkpoint on the test split.

    Never raises for a run that fails: the outcome says ``failed`` (with the traceback),
    ``diverged``, ``oom`` or ``interrupted`` (Ctrl-C; state up to the last epoch is saved).
    """
    trainer = _Trainer(config, run_id or config.run_id, run_dir, sink or NullSink(),
                       list(callbacks), resume)
    return trainer.run()


class _Trainer(Resumable):
    def __init__(self, config: RunConfig, run_id: str, run_dir: Path | None, sink: RecordSink,
                 callbacks: list[Callback], resume: bool) -> None:
        self.config, self.run_id, self.run_dir, self.sink = config, run_id, run_dir, sink
        self.callbacks, self.resume = callbacks, resume
        self.buffer: list[MetricRecord] = []
        self.io_time = 0.0  # sink writes and checkpoints: kept out of the training time
        self.flushed_at = -math.inf  # when records last reached the sink
        self.best: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.epoch_stats: list[dict[str, float]] = []
        self.partial: dict[str, Any] | None = None  # where a mid-epoch checkpoint left off
        self.notes: list[str] = []
        self.grad_norms: list[float] = []  # read at log points, for the summary's median
        self.untimed_steps = 0  # steps of the log interval kept out of its time/step
        self.interval: LogInterval | None = None  # the steps since the last log point
        self.state: RunState | None = None
        self.machine_last: contention.Reading | None = None  # the last epoch end's
        self.frozen_keys: set[str] = set()
        # Set when this process is one rank of a DDP group (torchrun); None otherwise, and
        # then nothing below differs from a plain single-process run.
        self.dist: distributed.DistContext | None = None

    # --- the run -------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        with intra_op_threads(self.config.train.threads), \
                deterministic(self.config.train.deterministic):
            return self._run()

    def _run(self) -> RunOutcome:
        status, error = "ok", None
        try:
            self._setup()
            self._fit()
            self._test()
        except Diverged as exc:
            status, error = "diverged", str(exc)
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted by the user (Ctrl-C)"
        except torch.cuda.OutOfMemoryError as exc:
            status, error = "oom", _oom_message(self.config, exc)
        except MemoryError as exc:
            status, error = "oom", _oom_message(self.config, exc)
        except Exception as exc:
            if _is_oom(exc):
                status, error = "oom", _oom_message(self.config, exc)
            else:
                status, error = "failed", traceback.format_exc()
        finally:
            if status == "oom":  # the failed step's blocks stay cached: give them back now,
                # or the next run in this process starts with less free memory than it sees
                release_cached(torch.device("cuda"))
            memory = getattr(self, "memory", None)
            if memory is not None:  # a run that failed inside its tracked first step
                memory.end_step()
            sampler = getattr(self, "sampler", None)
            if sampler is not None:
                sampler.stop()
            speed = getattr(self, "speed", None)
            if speed is not None:  # DataLoader workers end with the run, however it ends
                speed.close()
            try:
                self._flush()
                self._save_best(quiet=True)  # a failed run's best weights still reach best.pt
            except KeyboardInterrupt:
                status, error = "interrupted", "interrupted by the user (Ctrl-C)"
        if self.state is not None:
            for cb in self.callbacks:
                cb.on_run_end(self.state, status)
        return RunOutcome(self.run_id, status, error, self._summary())

    def _setup(self) -> None:
        cfg = self.config
        tc = cfg.train
        allocator.steady()  # before the data and the model: their pages stay in the heap too
        device = resolve_device(tc.device)
        self.dist = distributed.current()
        if self.dist is not None:
            device = self.dist.device
        self.clock = Clock(device)
        self.t0 = time.perf_counter()
        self.elapsed_offset = 0.0
        self.checkpointed_at = self.t0  # when this process last wrote last.pt
        data = load_dataset(cfg.data, cfg.model,
                            steps_per_epoch=cfg.train.steps_per_epoch)
        self.notes.extend(data.info.notes)  # e.g. where hf data is read from
        if isinstance(data.train, StreamSplit):  # a stream's own notes (a restarted pass)
            data.train.log.extend(self.notes)
            self.notes = data.train.log
        self.splits = split_summary(data.info)  # sizes and sources: which split is "valid"
        self.task: TaskKind = TASKS[data.info.task]
        self.loss_fn = training_loss(cfg, self.task)  # the user's train.loss, or the task's
        # train.threads: auto picks the count fastest for this model here and now, timing a
        # few steps of a model of its own under a forked RNG (or reusing the estimate's probe
        # of this setup); run() gives the caller its count back.
        from trainlab.engine.bench import run_threads

        self.threads = run_threads(cfg, distributed=self.dist is not None)
        torch.set_num_threads(self.threads.threads)
        seed_everything(tc.seed)
        model = build_model(cfg.model, data.info).to(device)
        tuning = build_finetune(cfg.finetune, model, resolved_lr(cfg.optimizer))
        # A strategy may add modules (adapters) or wrap the model (PEFT): move what it added.
        model = (tuning.model if tuning.model is not None else model).to(device)
        self.callbacks.extend(tuning.callbacks)
        if data.info.pad_token_id is not None:
            from trainlab.components.nets import note_padding

            # Whether the data holds padding, decided on the host before it moves: a
            # transformers model then gets no mask for data without, and no per-step sync.
            note_padding(model, [data.train, data.valid, data.test])
        # Every parameter the strategy may ever train; frozen ones have no .grad and are skipped.
        self.params = [p for g in tuning.param_groups for p in g["params"]]
        self.frozen_keys = frozen_keys(model, self.params)
        optimizer = build_optimizer(cfg.optimizer, tuning.param_groups)
        bs = cfg.data.batch_size
        steps_per_epoch = math.ceil(len(data.train) / bs)
        schedule = build_schedule(cfg.schedule, optimizer,
                                  ScheduleContext(tc.epochs, steps_per_epoch))
        self.speed: Speed = decide(tc, model, device, [data.train, data.valid, data.test],
                                   wrap=self.dist.wrap if self.dist is not None else None,
                                   loading=cfg.data.loader)
        self.speed.threads_auto = self.threads.describe() if self.threads.auto else None
        sync_note = scaler_sync_note(self.speed, optimizer)
        if sync_note is not None:  # said once, at the run's start (and kept in its summary)
            self.notes.append(sync_note)
            warnings.warn(sync_note, RuntimeWarning, stacklevel=2)
        if device.type == "cuda":  # bf16 emulated on a pre-Ampere GPU: said in the summary
            slow = slow_precision(device, tc.precision)
            if slow is not None:
                self.notes.append(slow)
                warnings.warn(slow, RuntimeWarning, stacklevel=2)
        if cfg.data.loader is not None and not any(
                isinstance(s, ItemSplit) for s in (data.train, data.valid, data.test)):
            self.notes.append("data.loader has no effect here: this data is tensors in memory, "
                              "indexed a batch at a time without a DataLoader")
        # Evaluation runs the bare model under DDP: ranks evaluate different numbers of batches,
        # and the DDP wrapper's forward would wait for the others.
        self.eval_forward = self.speed.forward if self.dist is None else model
        # Data left on the host stays in pageable memory: each batch is pinned as it is
        # gathered (Speed.fetcher), never the whole split.
        place = (lambda s: s.to(device)) if self.speed.data_on_device else _on_host
        self.train_split = place(data.train)
        self.valid_split = place(data.valid)
        self.test_split = place(data.test)
        self.warmup_time: float | None = None  # the first step in this process, timed apart
        # Model FLOPs utilization: FLOPs traced on the meta device against the process's best
        # matmul peak (measured at its first run, topped up by a short measurement now).
        with torch.random.fork_rng(devices=[]):  # measuring must not move the run's RNG
            self.step_flops = train_step_flops(cfg.model, data.info, bs, cfg.finetune,
                                               resolved_lr(cfg.optimizer))
            # Under the run's TF32 flags: an fp32 CNN's convolutions run in TF32 by default.
            self.tf32 = tf32_flags()
            self.peak_tf32 = run_uses_tf32(model, self.tf32)
            self.peak_flops = measure_peak_flops(device, self.speed.amp_dtype or torch.float32,
                                                 refresh=flops.PEAK_FRESH_S, tf32=self.peak_tf32)
        if self.dist is not None:
            self.peak_flops = self.dist.sum_float(self.peak_flops)  # the group's aggregate peak
            self.dist.fork_rng(tc.seed)
        self.memory = PeakMemory(device)
        self.memory.reset()
        self.sampler = nvml_sampler(device, tc.gpu_sample_every)
        if self.sampler is not None:
            self.sampler.start()
        self.state = state = RunState(self.run_id, cfg, data.info, device, model, optimizer,
                                      schedule, steps_per_epoch, run_dir=self.run_dir)
        if tc.early_stopping is not None and not any(
                isinstance(c, EarlyStopping) for c in self.callbacks):
            self.callbacks.append(EarlyStopping(
                tc.monitor, tc.early_stopping.patience, tc.early_stopping.min_delta,
                self._higher_is_better(tc.monitor)))
        total, _ = count_parameters(model)
        # Trainable: what the strategy trains at some point of the run (gradual unfreezing
        # starts with fewer), each shared tensor once.
        trainable = sum(p.numel() for p in {id(p): p for p in self.params}.values())
        pct = 100.0 * trainable / total if total else 0.0
        self.best.update(params_total=total, params_trainable=trainable,
                         params_trainable_pct=pct)
        ckpt = None
        if self.resume and self.run_dir is not None:
            ckpt, note = load_latest(self.run_dir / "last.pt")
            if note:
                self.notes.append(note)
            ckpt = self._checked(ckpt)  # a checkpoint ahead of the store's records restarts
        if ckpt is not None:
            self._restore(ckpt)
            # Records after the checkpoint's step are redone by this process.
            self.sink.rewind(self.run_id, state.step)
        else:
            self.sink.rewind(self.run_id, -1)
            constants = {"params/total": total, "params/trainable": trainable,
                         "params/trainable_pct": pct, "perf/peak_flops_per_s": self.peak_flops,
                         "perf/threads": float(self.speed.threads)}
            if device.type == "cuda":  # the TF32 switches the run (and its peak) ran under
                constants.update({"perf/tf32_matmul": float(self.tf32["matmul"]),
                                  "perf/tf32_cudnn": float(self.tf32["cudnn"]),
                                  "perf/peak_tf32": float(self.peak_tf32)})
            if self.step_flops is not None:
                constants["perf/flops_per_step"] = self.step_flops
            self._record(0, constants, epoch=0)
        state.start_step = state.step
        for cb in self.callbacks:
            cb.on_run_start(state)

    def _fit(self) -> None:
        state = self._run_state
        if self.stop_reason is not None:
            return
        for epoch in range(state.epoch + 1, self.config.train.epochs + 1):
            if interrupt.stop_requested():
                raise KeyboardInterrupt
            state.epoch = epoch
            partial, self.partial = self.partial, None
            if partial is None or partial["epoch"] != epoch:
                partial = None
                for cb in self.callbacks:
                    cb.on_epoch_start(state)
            if self.dist is not None and self.dist.needs_rewrap(state.model):
                self._rewrap()
            self._train_epoch(epoch, partial)
            if self.stop_reason is not None:
                break

    def _rewrap(self) -> None:
        """A strategy changed which parameters train: rebuild the DDP wrapper around them."""
        assert self.dist is not None
        forward = self.dist.wrap(self._run_state.model)
        self.speed.forward = torch.compile(forward) if self.speed.compiled else forward  # type: ignore[assignment]

    # --- one epoch -------------------------------------------------------------------------

    def _train_epoch(self, epoch: int, partial: dict[str, Any] | None = None) -> None:
        state, task, tc = self._run_state, self.task, self.config.train
        model, optimizer, schedule = state.model, state.optimizer, state.schedule
        params = self.params
        bs = self.config.data.batch_size
        n = len(self.train_split)
        # A stream is read in its own order (a function of the seed and epoch): positions.
        order = (torch.arange(n) if isinstance(self.train_split, StreamSplit)
                 else epoch_permutation(n, tc.seed, epoch)).to(self.train_split.device)
        speed = self.speed
        forward, scaler = speed.forward, speed.scaler
        loss_fn: Callable[[Tensor, Tensor], Tensor] = self.loss_fn
        amp = speed.amp_dtype is not None
        # The first step a process takes pays for lazy initialisation (kernel selection,
        # allocator growth, compilation with train.compile): it is timed apart as warm-up.
        warming = self.warmup_time is None
        log_every, eval_every, clip = tc.log_every, tc.eval_every, tc.clip_grad_norm
        step_callbacks = [c for c in self.callbacks
                          if type(c).on_step_end is not Callback.on_step_end]
        stop = interrupt.FLAG
        # A resumed partial epoch (after Ctrl-C) goes on from its batch with its sums so far.
        first_batch = partial["batch"] if partial else 0
        self.epoch_sums = list(partial["sums"]) if partial else [0.0, 0.0, 0.0]
        time_before = partial["train_time"] if partial else 0.0
        # Seconds the loop waited for its next batch (the time inside next(), nothing else).
        data_wait = partial.get("data_wait", 0.0) if partial else 0.0
        perf = time.perf_counter
        # Timed samples of this epoch before this process's first batch; those of its batches
        # are counted after the loop (a len() per step costs ~1 % of a small MLP's step).
        samples = partial.get("samples", 0) if partial else 0
        evaluated_at = partial["evaluated_at"] if partial else -1
        interval = self.interval = LogInterval.ensure(self.interval, log_every, state.device,
                                                      task.keeps_outputs)
        # A Ctrl-C mid-interval saved the interval's steps so far: they go on into the next
        # log point, which then records what an uninterrupted run records at that step.
        carried = partial.get("interval") if partial else None
        if carried:
            interval.resume(carried)
        self.paused = 0.0  # eval and I/O inside this epoch, subtracted from training time
        io_before = self.io_time
        model.train()
        # CPU time, scheduler waits and steal at both ends of the epoch (validation included):
        # whether other work on the machine disturbed this epoch's timing (contention.py).  One
        # reading per epoch: the last epoch's end is this one's start (its records between).
        machine_before = self.machine_last if partial is None and self.machine_last else \
            machine.read()
        t_start = self.clock.now()
        self.t_interval = t_start - (carried["busy"] if carried else 0.0)
        self.paused_at_interval = 0.0
        batches = order.split(bs)
        if self.dist is not None:  # this rank's slice of each global batch
            batches, loss_fn = self.dist.shard(batches, loss_fn, first_batch)
        step_schedule = schedule.after_step if schedule.per_step else None
        batch = first_batch  # batches done in this epoch (1-based index of the last one)
        # Only a Dataset's DataLoader workers take a seed (a SeedSequence is ~40 us an epoch).
        seed = _loader_seed(tc.seed, epoch) if isinstance(self.train_split, ItemSplit) else 0
        steps = iter(speed.batches(self.train_split, batches[first_batch:], seed=seed))
        # train.profile: the loop stops short of the window's batches, which the profiled
        # path (engine/profile.py) takes from the same iterator; the step itself is untouched.
        window = window_for(tc.profile, epoch, len(batches), first_batch, self.notes)
        if window is not None:
            source, steps = steps, itertools.islice(steps, window.start - first_batch)
        while True:
            t_fetch = perf()
            try:
                idx, x, y = next(steps)
            except StopIteration:
                break
            data_wait += perf() - t_fetch
            batch += 1
            if warming:
                t_warm = self.clock.now()
                # The run's own tensors over this step (on CPU; engine/measure.py), from what
                # the run holds as it starts.
                self.memory.track_step(held_tensors(
                    model, optimizer, (self.train_split, self.valid_split, self.test_split),
                    order, idx, x, y), optimizer=optimizer, model=model,
                    compiled=speed.compiled)
            is_log = (state.step + 1) % log_every == 0
            optimizer.zero_grad(set_to_none=True)
            if amp:
                with speed.autocast():
                    out = forward(x)
                    loss = loss_fn(out, y)
            else:
                out = forward(x)
                loss = loss_fn(out, y)
            norm = None
            if scaler is None:
                loss.backward()
                if clip is not None:
                    norm = clip_grad_norm(params, clip, state.device)
                elif is_log:
                    norm = grad_norm(params, state.device)
                optimizer.step()
            else:  # fp16: scale the loss; unscale before reading or clipping gradients
                scaler.scale(loss).backward()
                if clip is not None or is_log:
                    scaler.unscale_(optimizer)
                    norm = (clip_grad_norm(params, clip, state.device) if clip is not None
                            else grad_norm(params, state.device))
                scaler.step(optimizer)
                scaler.update()
            if step_schedule is not None:
                step_schedule()
            if warming:
                self.memory.end_step()
                if isinstance(self.config.model, PythonModelSpec):  # once: the user's model
                    check_output(out, state.info, len(y), self.config.model.target)
                self.warmup_time = self.clock.now() - t_warm
                self.paused += self.warmup_time
                samples -= len(idx)
                key = "time/compile" if speed.compiled else "time/warmup"
                self._record(state.step + 1, {key: self.warmup_time})
                warming = False
            interval.add(loss, out, y, task.weight(y))
            state.step += 1
            for cb in step_callbacks:
                cb.on_step_end(state)
            if is_log:
                self._log_interval(norm)
            if eval_every is not None and state.step % eval_every == 0:
                # The synced clock: training kernels still queued would otherwise finish
                # inside the pause and be subtracted from training time.
                t, io0 = self.clock.now(), self.io_time
                self._validate()
                evaluated_at = state.step
                model.train()
                # I/O inside validation (best.pt) is already in io_time: count it once.
                self.paused += self.clock.now() - t - (self.io_time - io0)
                if self.stop_reason is not None:
                    break
            if stop[0] and batch < len(batches):
                # The unfinished log interval is saved, not recorded: a record at this step
                # would be one an uninterrupted run never writes.
                self._flush()  # the store holds every record the checkpoint saw
                spent = self.clock.now() - t_start - self.paused - (self.io_time - io_before)
                self._checkpoint(epoch - 1, partial={
                    "epoch": epoch, "batch": batch, "sums": self.epoch_sums,
                    "train_time": time_before + spent, "evaluated_at": evaluated_at,
                    "samples": samples + _samples(batches, first_batch, batch),
                    "data_wait": data_wait,
                    "interval": self._carry_interval()})
                raise KeyboardInterrupt
        if window is not None and self.stop_reason is None:  # not training time nor samples
            done = run_window(self, window, source, loss_fn)
            batch += done.batches
            samples -= _samples(batches, window.start, batch)
            evaluated_at = evaluated_at if done.evaluated_at is None else done.evaluated_at
        self._log_interval(None, flush=False)  # written with the epoch's records, in one go
        t_end = self.clock.now()
        samples += _samples(batches, first_batch, batch)
        epoch_time = training_seconds(t_start, t_end, paused=self.paused,
                                      io=self.io_time - io_before, before=time_before)
        state.train_time += epoch_time
        loss_sum, metric_sum, weight = self.epoch_sums
        values = {f"train/{k}": v for k, v in task.finalize(loss_sum, metric_sum, weight).items()}
        if evaluated_at != state.step:
            self._validate()
        schedule.after_epoch()
        machine_after = self.machine_last = machine.read()
        if self.dist is not None:  # the group's samples (each rank counted its own slices)
            samples = round(self.dist.sum_float(samples))
        values.update({"time/epoch_train": epoch_time, "time/train": state.train_time,
                       "time/data_wait": data_wait,
                       "time/data_wait_frac": data_wait / epoch_time if epoch_time > 0 else 0.0})
        values.update(epoch_rates(
            samples, epoch_time, batch_size=bs, flops_per_batch=self.step_flops,
            peak_flops=self.peak_flops, peak_too_low=self._peak_too_low(),
            tokens_per_example=state.info.tokens_per_example if state.info.task == "lm" else None))
        values.update(contention.epoch_contention(
            machine_before, machine_after, speed.threads,
            cpu_bound=contention.cpu_bound(state.device.type, values["time/data_wait_frac"])))
        memory = self.memory.read()
        values.update(memory if self.dist is None else self.dist.memory(memory))
        if self.sampler is not None:
            values.update(self.sampler.drain())
        if "perf/mfu_unreliable" in values and "perf/flops_per_s" in values:
            # This epoch beat the peak: the peak was measured while the machine was busy.  Later
            # runs in this process divide by at least this rate (per rank under DDP); this run's
            # later epochs stay flagged, as against its own rate their MFU would read ~1.
            world = self.dist.world if self.dist is not None else 1
            raise_peak_flops(self._run_state.device, self.speed.amp_dtype or torch.float32,
                             values["perf/flops_per_s"] / world, tf32=self.peak_tf32)
        self.epoch_stats.append(values)
        self._record(state.step, values)
        # Like log points, an epoch's records reach the store at most FLUSH_EVERY_S after the
        # last write, and always before a checkpoint (_checkpoint) and at the run's end.
        self._flush(defer=time.perf_counter() - self.flushed_at < FLUSH_EVERY_S)
        self._epoch_checkpoint(epoch)
        merged = {**values, **state.last}
        for cb in self.callbacks:
            cb.on_epoch_end(state, merged)

    def _log_interval(self, norm: torch.Tensor | None, flush: bool = True) -> None:
        """Read the interval's values in one host sync and record them."""
        interval = self._interval
        steps = len(interval)
        if not steps:
            return
        state = self._run_state
        if self.dist is None:
            loss_sum, correct, weight, norm_value = interval.read(norm)
        else:  # summed over the ranks, in one all-reduce
            device_steps, correct_now = interval.device_steps()
            loss_sum, correct, weight, norm_value = self.dist.reduce_interval(
                device_steps, correct_now, norm)
        now = self.clock.now()
        loss = loss_sum / max(weight, 1.0)
        if not math.isfinite(loss):
            lr = state.optimizer.param_groups[0]["lr"]
            raise Diverged(f"train loss became {loss} by step {state.step} (epoch {state.epoch},"
                           f" lr {lr:.3g})")
        self.epoch_sums[0] += loss_sum
        self.epoch_sums[1] += correct
        self.epoch_sums[2] += weight
        busy = now - self.t_interval - (self.paused - self.paused_at_interval)
        values = {"train/step_loss": loss}
        if steps > self.untimed_steps:  # none for an interval of profiled steps only
            values["time/step"] = busy / (steps - self.untimed_steps)
        self.untimed_steps = 0
        groups = state.optimizer.param_groups
        values["lr"] = groups[0]["lr"]
        if len(groups) > 1:
            values.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(groups)})
        if norm_value is not None:
            values["grad_norm"] = norm_value
            self.grad_norms.append(norm_value)
        self._record(state.step, values)
        # Mid-epoch log points reach the store at most every FLUSH_EVERY_S (else with the
        # epoch's records): a write per log point was ~0.4 ms of a 25 ms digits epoch.
        self._flush(defer=not flush or time.perf_counter() - self.flushed_at < FLUSH_EVERY_S)
        for cb in self.callbacks:
            cb.on_log(state, values)
        # The next interval starts after this bookkeeping, so time/step is steps alone.
        self.t_interval, self.paused_at_interval = time.perf_counter(), self.paused

    # --- evaluation --------------------------------------------------------------------------

    def _evaluate(self, split: Split | ItemSplit) -> tuple[dict[str, float], float, int]:
        """(loss and metric, seconds, batches) over ``split``; one host sync at the end
        (engine/evaluate.py)."""
        state, task, speed = self._run_state, self.task, self.speed
        model = state.model
        was_training = model.training
        model.eval()
        lo, hi = (0, len(split)) if self.dist is None else self.dist.eval_range(len(split))
        if self.dist is not None:
            self.dist.sync_buffers(model)
        t = self.clock.now()
        classes = state.info.num_outputs if task.extra_metrics else 0
        size = eval_batch_size(task.name, self.config.data.batch_size,
                               self.config.data.eval_batch_size, hi - lo)
        with torch.inference_mode(), speed.autocast():
            sums, count, batches = evaluation_sums(
                task, speed.eval_batches(split, lo, hi, size), self.eval_forward, classes,
                state.device, host_count=self.dist is None)
        # The one sync of this evaluation (with DDP: the ranks' shares summed).
        host = read_sums(sums, count, None if self.dist is None else self.dist.reduce_sums)
        seconds = self.clock.now() - t
        model.train(was_training)
        return evaluation_result(task, host, classes), seconds, batches

    def _validate(self) -> None:
        state = self._run_state
        if len(self.valid_split) == 0:
            return
        result, seconds, batches = self._evaluate(self.valid_split)
        values = {f"valid/{k}": v for k, v in result.items()}
        if not math.isfinite(values["valid/loss"]):
            raise Diverged(f"validation loss became {values['valid/loss']} at step "
                           f"{state.step} (epoch {state.epoch})")
        values["time/eval"] = seconds
        values["eval/latency_per_batch_s"] = seconds / max(batches, 1)
        self._record(state.step, values)
        state.schedule.after_eval(values["valid/loss"])
        self._track_best(values)
        try:
            for cb in self.callbacks:
                cb.on_eval_end(state, values)
        except StopTraining as stop:
            self.stop_reason = f"stopped early at epoch {state.epoch}: {stop.reason}"

    def _carry_interval(self) -> dict[str, Any] | None:
        """The unfinished log interval, with its time so far, for a mid-epoch checkpoint."""
        carried = self._interval.carry()
        if carried is not None:
            carried["busy"] = (self.clock.now() - self.t_interval
                               - (self.paused - self.paused_at_interval))
        return carried

    def _higher_is_better(self, key: str) -> bool:
        return key.rsplit("/", 1)[-1] in ("accuracy", "f1", "mcc")

    def _track_best(self, values: dict[str, float]) -> None:
        monitor = self.config.train.monitor
        if monitor not in values:
            monitor = "valid/loss"
        value = values[monitor]
        best = self.best.get("best_value")
        sign = 1.0 if self._higher_is_better(monitor) else -1.0
        if best is None or sign * (value - best) > 0:
            state = self._run_state
            self.best.update(best_value=value, best_monitor=monitor, best_epoch=state.epoch,
                             best_step=state.step, best_valid=dict(values))
            if self.run_dir is not None:
                if self._is_main:  # other ranks read rank 0's file before the test
                    self._keep_best()  # best.pt is written with the next checkpoint
            else:
                self.best_state = {k: v.detach().clone() for k, v in
                                   self._model_state().items()}

    def _test(self) -> None:
        state = self._run_state
        if self._is_main:
            self._save_best()
        if self.dist is not None:
            self.dist.barrier()  # rank 0 has written best.pt
        if self.run_dir is not None and (self.run_dir / "best.pt").is_file():
            best = load_verified(self.run_dir / "best.pt")
            if best is not None:
                self._load_model_state(best["model"])
        elif getattr(self, "best_state", None) is not None:
            self._load_model_state(self.best_state)
        if len(self.test_split) == 0:
            return
        result, _, _ = self._evaluate(self.test_split)
        values = {f"test/{k}": v for k, v in result.items()}
        self.best["test"] = values
        self._record(state.step, values)

    # --- records, checkpoints, resume -----------------------------------------------------------

    def _record(self, step: int, values: dict[str, float], epoch: int | None = None) -> None:
        state = self._run_state
        now = self.elapsed_offset + (time.perf_counter() - self.t0)
        ep = state.epoch if epoch is None else epoch
        self.buffer += metric_records(self.run_id, step, ep, now, values)
        state.last.update(values)

    def _flush(self, defer: bool = False) -> None:
        if self.buffer and not defer:  # defer: kept for the next flush (one transaction)
            t = time.perf_counter()
            records, self.buffer = self.buffer, []
            self.sink.write(records)
            self.flushed_at = time.perf_counter()
            self.io_time += self.flushed_at - t

    def _checkpoint(self, epoch: int, partial: dict[str, Any] | None = None) -> None:
        self._flush()  # the store holds every record the checkpoint saw (resume rewinds to it)
        super()._checkpoint(epoch, partial)

    def _peak_too_low(self) -> bool:
        """Whether an epoch of this run beat the measured peak (its MFU is then unreliable)."""
        return any("perf/mfu_unreliable" in s for s in self.epoch_stats)

    @property
    def _is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    @property
    def _interval(self) -> LogInterval:
        assert self.interval is not None, "no epoch has started"
        return self.interval

    @property
    def _run_state(self) -> RunState:
        assert self.state is not None, "setup has not run"
        return self.state

    def _summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.best.items() if k != "best_valid"}
        out.update({f"best_{k.replace('/', '_')}": v
                    for k, v in self.best.get("best_valid", {}).items()})
        test = out.pop("test", None)
        if test:
            out.update({k.replace("/", "_"): v for k, v in test.items()})
        if self.state is not None:  # trainable: what trained by the end (gradual unfreezing)
            trained = sum(p.numel() for p in {id(p): p for p in self.params if p.requires_grad
                                              }.values())
            out.update(epochs=self.state.epoch, steps=self.state.step, params_trainable=trained,
                       params_trainable_pct=100.0 * trained / max(out.get("params_total", 1), 1),
                       train_time=self.state.train_time, device=str(self.state.device))
        if self.epoch_stats:
            out["samples_per_s"] = median_of(self.epoch_stats, "throughput/samples_per_s")
            out["peak_memory_bytes"] = max(s["memory/peak_bytes"] for s in self.epoch_stats)
            for key, name in ((TENSOR_PEAK_KEY, "tensor_peak_bytes"),
                              ("memory/reserved_bytes", "reserved_memory_bytes")):
                values = [s[key] for s in self.epoch_stats if key in s]
                if values:  # the run's own tensors; the CUDA allocator's reserved bytes
                    out[name] = max(values)
            out["mfu"] = median_of(self.epoch_stats, "perf/mfu")
            flags = [s[contention.DISTURBED_KEY] for s in self.epoch_stats
                     if contention.DISTURBED_KEY in s]
            if flags:  # epochs whose timing other work on the machine disturbed
                out["disturbed_epochs"] = int(sum(flags))
                out["timing_trusted"] = not any(flags)
            if self._peak_too_low():  # no MFU rather than one against a peak known to be low
                out.update(mfu=None, mfu_note=UNRELIABLE_NOTE)
        if getattr(self, "speed", None) is not None and self.state is not None:
            out["speed"] = self.speed.describe(self.state.optimizer)
            out["flops_per_step"] = self.step_flops
            out["peak_flops_per_s"] = self.peak_flops
            if self.warmup_time is not None:
                out["compile_time" if self.speed.compiled else "warmup_time"] = self.warmup_time
        if self.stop_reason:
            out["stopped_early"] = self.stop_reason
        if self.notes:
            out["notes"] = self.notes
        if getattr(self, "splits", None):
            out["splits"] = self.splits
        if self.grad_norms:
            out["grad_norm_median"] = statistics.median(self.grad_norms)
        return out


# Records (log points, epochs shorter than this) at most this long in memory before the store:
# a transaction per ~20 ms digits epoch was 0.15-0.5 ms of it (~30 keys, a B-tree page each).
FLUSH_EVERY_S = 1.0


def _loader_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's DataLoader workers: a function of (seed, epoch) only."""
    return seed_word((seed, epoch, 1))  # SeedSequence([seed, epoch, 1])'s first word


def _samples(batches: Sequence[Tensor], first: int, done: int) -> int:
    """Examples in ``batches[first:done]``."""
    return sum(len(b) for b in batches[first:done])


def _on_host(split: Split | ItemSplit) -> Split | ItemSplit:
    """Host-resident data for an accelerator that cannot hold it, as it is: not page-locked
    as a whole (tens of GB for large data); :meth:`Speed.fetcher` gathers each batch into
    page-locked memory, and a Dataset's batches are pinned as they are loaded."""
    return split


# Texts of allocation failures that are not torch.cuda.OutOfMemoryError: the host's, and the
# device libraries' (cuBLAS and cuDNN allocate their own workspaces, and the CUDA runtime's
# own error names it), all out of memory whatever the words.
OOM_TEXTS = ("can't allocate memory", "out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
             "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
             "cudaErrorMemoryAllocation")


def _is_oom(exc: BaseException) -> bool:
    text = str(exc)
    return any(t in text for t in OOM_TEXTS)


def _oom_message(config: RunConfig, exc: BaseException) -> str:
    bs = config.data.batch_size
    return (f"out of memory at data.batch_size={bs}: {str(exc).splitlines()[0][:300]}. "
            f"Try data.batch_size={max(1, bs // 2)} or a smaller model.")
