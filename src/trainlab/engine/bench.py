"""A model, optimizer and batch source of a run's config of their own, stepped as the engine
steps: what the calibration probe (:mod:`trainlab.estimate.probe`) times, and what
``train.threads: auto`` times at each thread count (:func:`run_threads`, which the engine
calls at run start).  Everything here runs under the caller's forked RNG and on its own model,
so the runs it serves are unchanged.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from trainlab.components import build_finetune, build_model, build_optimizer, load_dataset
from trainlab.components.datasets import Dataset, Split
from trainlab.components.optimizers import is_auto, resolved_lr, with_lr
from trainlab.config.schema import RunConfig
from trainlab.devices import resolve_device, synchronize
from trainlab.engine import allocator, threads
from trainlab.engine.speed import decide
from trainlab.engine.tasks import TASKS, training_loss


class Bench:
    """A model, optimizer and batch source of ``config`` of their own, stepped as the engine
    steps: the batch fetched from where the engine keeps the data (on the device when it
    fits), then zero_grad, forward, loss, backward and the optimizer step.  Built and used
    under the caller's forked RNG."""

    def __init__(self, config: RunConfig, device: torch.device, data: Dataset) -> None:
        self.device = device
        self.loss_fn = training_loss(config, TASKS[data.info.task])
        model = build_model(config.model, data.info).to(device)
        self.tuning = build_finetune(config.finetune, model, resolved_lr(config.optimizer))
        self.model = (self.tuning.model or model).to(device)  # adapters / PEFT wrap or extend it
        self.optimizer = build_optimizer(config.optimizer, self.tuning.param_groups)
        # Placed as the run places its data: the decision counts all three splits.
        self.speed = decide(config.train, self.model, device,
                            [data.train, data.valid, data.test])
        train = data.train.to(device) if self.speed.data_on_device else data.train
        self.fetch = self.speed.fetcher(train)
        if self.fetch is None:  # tensors on the device, indexed as the engine does
            assert isinstance(train, Split)  # a Dataset's items always have a fetcher
            self.inputs, self.targets = train.inputs, train.targets
        self.n, self.bs, self.where = len(train), config.data.batch_size, train.device
        self.gen = torch.Generator().manual_seed(0)

    def step(self) -> float:
        """One training step on a random batch: its seconds (synced at both ends)."""
        return self.steps(1)

    def steps(self, count: int) -> float:
        """``count`` training steps with no host sync between them (the batches' indices
        drawn and moved to the data's device first): their seconds in all.  On an accelerator
        a sync per step (:meth:`step`) would remove the CPU/GPU overlap the run has."""
        index = torch.randint(0, self.n, (count, min(self.bs, self.n)),
                              generator=self.gen).to(self.where)
        synchronize(self.device)
        t = time.perf_counter()
        for idx in index:
            x, y = (self.inputs[idx], self.targets[idx]) if self.fetch is None else self.fetch(idx)
            self.optimizer.zero_grad(set_to_none=True)
            with self.speed.autocast():
                loss = self.loss_fn(self.speed.forward(x), y)
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)
        return time.perf_counter() - t

    def step_at(self, count: int) -> float:
        """One step at ``count`` intra-op threads (for :func:`trainlab.engine.threads.choose`)."""
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        return self.step()


def run_threads(config: RunConfig, *, distributed: bool = False) -> threads.ThreadChoice:
    """The intra-op threads a run of ``config`` trains with, here and now: ``train.threads``
    when it is a number; for ``auto``, what :mod:`trainlab.engine.threads` decides, timing
    a few steps of a model of its own when it must (under a forked RNG: the caller's RNG and
    models are untouched) and remembering the answer for this setup.  ``distributed``: this
    process is one torchrun rank, which keeps its share of the cores."""
    if not isinstance(config.train.threads, str):
        return threads.ThreadChoice(config.train.threads, "set")
    device = resolve_device(config.train.device)
    if distributed:
        return threads.ThreadChoice(torch.get_num_threads(), "distributed")
    if device.type != "cpu":  # host threads only feed the accelerator
        return threads.ThreadChoice(torch.get_num_threads(), "accelerator")
    t0 = time.perf_counter()
    limit = threads.ceiling()
    others = threads.others_running() if limit > 1 else None
    # One thread to give, or a busy machine: decided now, every time (a load is not a fact
    # about the setup); otherwise a pick timed for this setup lately stands.
    choice = (threads.before_timing(limit, others)
              or threads.recall(config, limit, most=threads.room(limit, others)))
    if choice is not None:
        return choice if choice.shared else replace(choice, seconds=time.perf_counter() - t0)
    allocator.steady()  # the heap the run will have
    data = load_dataset(config.data, config.model,
                        steps_per_epoch=config.train.steps_per_epoch)
    before = torch.get_num_threads()
    # Step time does not depend on the LR: the range test (lr: auto) asks before one is set.
    timed = (replace(config, optimizer=with_lr(config.optimizer, 1e-3))
             if is_auto(config.optimizer) else config)
    with torch.random.fork_rng(devices=[]):
        bench = Bench(timed, device, data)
        try:
            choice = choose_threads(bench, limit, others)
        finally:
            torch.set_num_threads(before)
            del bench
    choice = replace(choice, seconds=time.perf_counter() - t0)
    threads.remember(config, limit, choice)
    return choice


def choose_threads(bench: Bench, limit: int, others: float | None) -> threads.ThreadChoice:
    free = threads.room(limit, others)
    return threads.choose(bench.step_at, free, free_cores=free)


__all__ = ["Bench", "choose_threads", "run_threads"]
