"""The calibration probe: a few real training steps of a run's model on the target device.

It measures what the run will see: seconds per step (warm-up excluded), seconds per evaluation
batch, and the step's memory (the process's resident set size growth on CPU, the allocator's
peak on CUDA) at the configured batch size.  On CPU one more step is measured as the run
measures its first (``memory/tensor_peak_bytes``, engine/measure.py): the peak bytes of the
tensors it holds (model, optimizer state, the data splits the run keeps in memory, the batch
as the engine gathers it) and of those the step creates.  It uses its own model and
optimizer instances and a forked RNG, so it changes nothing in the runs it predicts.

A step is timed as the engine runs it: the batch fetched from where the engine keeps the data
(on the device when it fits, decided over all three splits as the run decides), then
zero_grad, forward, loss, backward and the optimizer step.  On an accelerator steps are timed
in windows of ``WINDOW`` with one sync at each end: a sync per step would remove the CPU/GPU
overlap the run has.  An epoch's time is the sum of its steps, so the probe reports their
mean, not the median: step times on a shared machine are skewed to the right (the median
under-predicted epochs by 10-30 % here), and the mean is trimmed of the slowest and fastest
10 % so that one descheduled step among a few dozen does not move it.

A machine reading before and after the training steps (two cheap reads of ``/proc``) gives the
same contention values an epoch records (:func:`trainlab.engine.contention.epoch_contention`):
a probe whose threads waited for a core is flagged ``disturbed``, and so is what it predicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from trainlab.components import load_dataset
from trainlab.components.datasets import Split
from trainlab.config.schema import RunConfig
from trainlab.devices import resolve_device, synchronize
from trainlab.engine import allocator, contention, machine, threads
from trainlab.engine.allocator import rss_bytes
from trainlab.engine.bench import Bench, choose_threads
from trainlab.engine.measure import PeakMemory, held_tensors
from trainlab.engine.speed import gathered, intra_op_threads
from trainlab.engine.tasks import TASKS
from trainlab.engine.timing import sample_steps, trimmed_mean

WINDOW = 5  # steps per timed sample on an accelerator


@dataclass(frozen=True)
class Probe:
    step_s: float  # mean seconds per training step (warm-up excluded, 10 % trimmed)
    eval_batch_s: float  # seconds per evaluation batch
    step_bytes: int  # memory the model, optimizer and one step added
    base_bytes: int  # process RSS (CPU) or allocated bytes (CUDA) before the model existed
    steps_timed: int
    seconds: float  # what the probe itself cost
    # time/cpu_share, time/cpu_wait, machine/load, machine/steal and perf/disturbed over the
    # training steps, whichever could be measured (engine/contention.py)
    busy: dict[str, float] = field(default_factory=dict)
    threads: int = 0  # the intra-op threads the steps were timed at
    threads_reason: str | None = None  # how train.threads: auto chose them (None: set)

    # The run's own tensors at their peak over a step (CPU; None on CUDA, where the allocator's
    # peak, base_bytes + step_bytes, is that number, and with train.compile).
    tensor_peak_bytes: int | None = None

    @property
    def disturbed(self) -> bool:
        """Whether other work on the machine disturbed the timed steps."""
        return self.busy.get(contention.DISTURBED_KEY, 0.0) > 0


def probe(config: RunConfig, *, min_steps: int = 10, max_steps: int = 100,
          budget_s: float = 1.0, min_window_s: float = 0.25) -> Probe:
    """Measure a few real steps of ``config`` on its device (at most about ``budget_s``).

    It stops after ``max_steps`` timed steps, or earlier once they add up to ``budget_s``,
    but not before they add up to ``min_window_s`` (up to 20 x ``max_steps`` steps): a
    shared machine's speed moves by tens of percent within a second, and 100 steps of a
    small MLP are a 30-80 ms window (probes of one setup a minute apart gave 0.49 and
    0.81 ms per step with the window at 100 steps).

    With ``train.threads: auto`` it first picks the run's thread count on the same model
    (:mod:`trainlab.engine.threads`), remembers it for the run, and then times at it.
    """
    with intra_op_threads(config.train.threads):  # the threads the run will have
        return _probe(config, min_steps, max_steps, budget_s, min_window_s)


def _probe(config: RunConfig, min_steps: int, max_steps: int, budget_s: float,
           min_window_s: float) -> Probe:
    t_begin = time.perf_counter()
    allocator.steady()  # the heap the run will have (the engine sets it at run start)
    device = resolve_device(config.train.device)
    data = load_dataset(config.data, config.model,
                        steps_per_epoch=config.train.steps_per_epoch)
    task = TASKS[data.info.task]
    bs = config.data.batch_size
    auto = isinstance(config.train.threads, str) and device.type == "cpu"
    limit = threads.ceiling()
    others = threads.others_running() if auto and limit > 1 else None
    choice = (threads.before_timing(limit, others)
              or threads.recall(config, limit, most=threads.room(limit, others))
              if auto else None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        memory = PeakMemory(device)
        memory.reset()
        base = (torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes())
        bench = Bench(config, device, data)
        if auto:
            if choice is None:  # the run's threads, timed on this probe's model
                t_choose = time.perf_counter()
                choice = replace(choose_threads(bench, limit, others),
                                 seconds=time.perf_counter() - t_choose)
                threads.remember(config, limit, choice)
            torch.set_num_threads(choice.threads)  # the probe's caller gets its count back
        tensor_peak = _tensor_peak(bench, memory, [data.train, data.valid, data.test])
        before = machine.read()
        # On an accelerator each sample is the mean of WINDOW steps with one sync at each end
        # (the run syncs only to log); on a CPU a step is a sample (a sync there is a no-op).
        per = 1 if device.type == "cpu" else WINDOW
        times, _ = sample_steps(bench.step if per == 1 else partial(bench.steps, per),
                                min_steps=min_steps, max_steps=max_steps, budget_s=budget_s,
                                min_window_s=min_window_s, per=per)
        busy = contention.epoch_contention(before, machine.read(), torch.get_num_threads(),
                                           cpu_bound=device.type == "cpu")
        default_eval = bs if data.info.task == "lm" else max(bs, 256)
        eval_bs = config.data.eval_batch_size or default_eval
        split = data.valid if len(data.valid) else data.train
        if isinstance(split, Split):
            x_host, y_host = split.inputs[:eval_bs], split.targets[:eval_bs]
        else:  # a Dataset's first items, read once
            x_host, y_host = split.take(range(min(eval_bs, len(split))))
        model, speed = bench.model, bench.speed
        model.eval()
        eval_times = []
        with torch.inference_mode(), speed.autocast():
            for _ in range(3):
                x = x_host.to(device)
                synchronize(device)
                t = time.perf_counter()
                task.sums(speed.forward(x), y_host.to(device))
                synchronize(device)
                eval_times.append(time.perf_counter() - t)
        peak = memory.read()["memory/peak_bytes"]
        del model, speed, bench
    return Probe(trimmed_mean(times), min(eval_times[1:]), max(0, int(peak) - base), base,
                 len(times) * per, time.perf_counter() - t_begin, busy,
                 choice.threads if choice is not None else torch.get_num_threads(),
                 choice.reason if choice is not None else None, tensor_peak_bytes=tensor_peak)


def _tensor_peak(bench: Bench, memory: PeakMemory, splits: list[object]) -> int | None:
    """One step of ``bench`` measured as the engine measures a run's first step on CPU: the
    peak bytes of the tensors the run holds (``splits``: the data it keeps in memory) and of
    those the step creates; None where the run does not measure it this way."""
    if bench.device.type == "cuda" or bench.speed.compiled:
        return None
    order = torch.arange(bench.n, device=bench.where)  # the epoch's order, as the engine holds
    if bench.fetch is None:  # the first batch as the engine gathers it (with the next ones)
        idx, x, y = next(gathered(bench.inputs, bench.targets, order.split(bench.bs)))
    else:
        idx = order[:bench.bs]
        x, y = bench.fetch(idx)
    memory.track_step(held_tensors(bench.model, bench.optimizer, splits, order, idx, x, y),
                      optimizer=bench.optimizer, model=bench.model)
    try:
        bench.optimizer.zero_grad(set_to_none=True)
        with bench.speed.autocast():
            out = bench.speed.forward(x)  # held to the end, as the engine's loop holds it
            loss = bench.loss_fn(out, y)
        loss.backward()
        bench.optimizer.step()
        memory.end_step()
    finally:
        memory.end_step()  # (nothing when it ended above)
    return memory.tensor_peak
