"""The calibration probe of a stacked step (``train.stack``): a few real steps of a stack of the
planned size, built and stepped by the stacked trainer itself (:mod:`trainlab.engine.stack`).

What it measures is what the stack's runs will record: seconds per stacked step (warm-up
excluded, the mean trimmed of the slowest and fastest 10 %, as the solo probe's), seconds per
stacked evaluation batch (every model's forward on one shared batch), the stack's memory (the
process's resident set size growth on CPU, the allocator's peak on CUDA) and, on CPU, the peak of
the stack's own tensors over its first step (``memory/tensor_peak_bytes``, tracked as the run
tracks it).  The stack is built exactly as the run builds it (each model from its run's seed,
``stack_module_state``, the stacked optimizer, the trial step that picks the batched-matmul path
or ``vmap``, and ``train.threads: auto`` timed on the stacked step), under a forked RNG (torch's,
Python's and NumPy's states are restored), with its records going nowhere: the runs it predicts
are unchanged.  No torch optimizer is built or stepped, so the probe does not import
``torch._dynamo`` (about 1 s a process), as a stacked run does not.

A model the stacked step cannot batch raises :class:`~trainlab.engine.stack.StackUnsupported`
(the estimate then probes the runs alone, as they will train).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from trainlab.components.datasets import Split
from trainlab.config.schema import RunConfig
from trainlab.devices import resolve_device, synchronize
from trainlab.engine import contention, machine
from trainlab.engine.allocator import rss_bytes
from trainlab.engine.loop import epoch_permutation
from trainlab.engine.stack import _StackTrainer
from trainlab.engine.timing import sample_steps, trimmed_mean
from trainlab.records import NullSink

WINDOW = 5  # stacked steps per timed sample on an accelerator (as the solo probe's)


@dataclass(frozen=True)
class StackProbe:
    """What a few steps of a stack of ``size`` runs measured."""

    size: int  # models in the stack
    step_s: float  # mean seconds per stacked step (warm-up excluded, 10 % trimmed)
    eval_batch_s: float  # seconds per stacked evaluation batch (all models' forward)
    step_bytes: int  # memory the stack (models, optimizer state, a step) added
    base_bytes: int  # process RSS (CPU) or allocated bytes (CUDA) before the stack existed
    steps_timed: int
    seconds: float  # what the probe itself cost
    stack_step: str  # "batched matmul" or "vmap" (engine/stack_fast.py)
    threads: int  # the intra-op threads the steps were timed at
    busy: dict[str, float] = field(default_factory=dict)  # engine/contention.py values
    tensor_peak_bytes: int | None = None  # the stack's own tensors at their peak (CPU)

    @property
    def disturbed(self) -> bool:
        return self.busy.get(contention.DISTURBED_KEY, 0.0) > 0


def probe_stack(configs: Sequence[RunConfig], *, min_steps: int = 10, max_steps: int = 100,
                budget_s: float = 1.0, min_window_s: float = 0.25) -> StackProbe:
    """Measure a few real stacked steps of ``configs`` (one stack) on their device.

    The same stopping rule as the solo probe (:func:`trainlab.estimate.probe.probe`): at most
    ``max_steps`` timed steps or about ``budget_s``, but at least ``min_window_s`` of them.
    Raises :class:`~trainlab.engine.stack.StackUnsupported` when the models cannot be
    stacked, and the step's own error (out of memory, say) when it fails.
    """
    t_begin = time.perf_counter()
    device = resolve_device(configs[0].train.device)
    threads_before = torch.get_num_threads()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _probe(list(configs), device, t_begin, min_steps, max_steps, budget_s,
                          min_window_s)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_num_threads(threads_before)


def _probe(configs: list[RunConfig], device: torch.device, t_begin: float, min_steps: int,
           max_steps: int, budget_s: float, min_window_s: float) -> StackProbe:
    n = len(configs)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()
    trainer = _StackTrainer(configs, [f"stack-probe-{i}" for i in range(n)], [None] * n,
                            NullSink())
    trainer._setup()  # as the run: data, models, stacked optimizer, trial step, threads
    split = trainer.train_split
    bs = configs[0].data.batch_size
    lrs = [m.lr for m in trainer.members]
    gen = torch.Generator().manual_seed(0)
    # The first step as the run takes it (its tensor peak tracked on CPU), on the first batch
    # of each run's own epoch order.
    orders = torch.stack([epoch_permutation(len(split), c.train.seed, 1)
                          for c in configs]).to(device)
    idx = orders[:, :bs]
    x, y = split.inputs[idx], split.targets[idx]
    trainer._warm_step(x, y, lrs, (orders, idx, x, y), False)
    synchronize(device)

    def steps(count: int) -> float:
        index = torch.randint(0, len(split), (count, n, min(bs, len(split))),
                              generator=gen).to(device)
        synchronize(device)
        t = time.perf_counter()
        for one in index:
            xb, yb = split.inputs[one], split.targets[one]
            losses, _ = trainer._losses(trainer.params, trainer.buffers, xb, yb)
            losses.sum().backward()
            trainer.optimizer.step(lrs)
            for p in trainer.params.values():
                p.grad = None
        synchronize(device)
        return time.perf_counter() - t

    before = machine.read()
    per = 1 if device.type == "cpu" else WINDOW
    times, _ = sample_steps(lambda: steps(per), min_steps=min_steps, max_steps=max_steps,
                            budget_s=budget_s, min_window_s=min_window_s, per=per)
    busy = contention.epoch_contention(before, machine.read(), torch.get_num_threads(),
                                       cpu_bound=device.type == "cpu")
    eval_bs = configs[0].data.eval_batch_size or max(bs, 256)
    source = trainer.valid_split if len(trainer.valid_split) else split
    batch = Split(source.inputs[:eval_bs], source.targets[:eval_bs])
    eval_times = []
    for _ in range(3):  # all models' forward, losses and metrics on one batch, one host sync
        synchronize(device)
        t = time.perf_counter()
        trainer._evaluate(batch, trainer.params)
        eval_times.append(time.perf_counter() - t)
    memory = trainer.memory.read()
    peak = int(memory["memory/peak_bytes"])
    tensor_peak = memory.get("memory/tensor_peak_bytes") if device.type != "cuda" else None
    return StackProbe(
        size=n, step_s=trimmed_mean(times), eval_batch_s=min(eval_times[1:]),
        step_bytes=max(0, peak - base), base_bytes=base, steps_timed=len(times) * per,
        seconds=time.perf_counter() - t_begin,
        stack_step="batched matmul" if trainer.fast else "vmap",
        threads=trainer.threads.threads, busy=busy,
        tensor_peak_bytes=int(tensor_peak) if tensor_peak is not None else None)


__all__ = ["StackProbe", "probe_stack"]
