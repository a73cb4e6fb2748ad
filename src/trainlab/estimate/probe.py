"""The calibration probe: a few real training steps of a run's model on the target device.

It measures what the run will see: seconds per step (warm-up excluded), seconds per evaluation
batch, and the step's memory (the process's resident set size growth on CPU, the allocator's
peak on CUDA) at the configured batch size.  It uses its own model and optimizer instances and
a forked RNG, so it changes nothing in the runs it predicts.

A step is timed as the engine runs it: the batch fetched from where the engine keeps the data
(on the device when it fits), then zero_grad, forward, loss, backward and the optimizer step.
An epoch's time is the sum of its steps, so the probe reports their mean, not the median:
step times on a shared machine are skewed to the right (the median under-predicted epochs by
10-30 % here), and the mean is trimmed of the slowest and fastest 10 % so that one descheduled
step among a few dozen does not move it.

A machine reading before and after the training steps (two cheap reads of ``/proc``) gives the
same contention values an epoch records (:func:`trainlab.engine.contention.epoch_contention`):
a probe whose threads waited for a core is flagged ``disturbed``, and so is what it predicts.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from trainlab.components import build_finetune, build_model, build_optimizer, load_dataset
from trainlab.components.datasets import Split
from trainlab.components.optimizers import resolved_lr
from trainlab.config.schema import RunConfig
from trainlab.devices import resolve_device, synchronize
from trainlab.engine import allocator, contention, machine
from trainlab.engine.allocator import rss_bytes
from trainlab.engine.measure import PeakMemory
from trainlab.engine.speed import decide, intra_op_threads
from trainlab.engine.tasks import TASKS, training_loss


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
    """
    with intra_op_threads(config.train.threads):  # the threads the run will have
        return _probe(config, min_steps, max_steps, budget_s, min_window_s)


def _probe(config: RunConfig, min_steps: int, max_steps: int, budget_s: float,
           min_window_s: float) -> Probe:
    t_begin = time.perf_counter()
    allocator.steady()  # the heap the run will have (the engine sets it at run start)
    device = resolve_device(config.train.device)
    data = load_dataset(config.data, config.model)
    task = TASKS[data.info.task]
    loss_fn = training_loss(config, task)
    bs = config.data.batch_size
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        memory = PeakMemory(device)
        memory.reset()
        base = (torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes())
        model = build_model(config.model, data.info).to(device)
        tuning = build_finetune(config.finetune, model, resolved_lr(config.optimizer))
        model = (tuning.model or model).to(device)  # adapters / PEFT wrap or extend it
        optimizer = build_optimizer(config.optimizer, tuning.param_groups)
        speed = decide(config.train, model, device, [data.train])
        train = data.train.to(device) if speed.data_on_device else data.train
        fetch = speed.fetcher(train)
        if fetch is None:  # tensors on the device, indexed as the engine does
            assert isinstance(train, Split)  # a Dataset's items always have a fetcher
            inputs, targets = train.inputs, train.targets
        n = len(train)
        gen = torch.Generator().manual_seed(0)
        times: list[float] = []
        warm: list[float] = []
        steps = 0
        timed = 0.0  # seconds of the timed steps so far
        before = machine.read()
        while len(times) < max_steps or (timed < min_window_s and len(times) < 20 * max_steps):
            idx = torch.randint(0, n, (min(bs, n),), generator=gen).to(train.device)
            synchronize(device)
            t = time.perf_counter()
            x, y = (inputs[idx], targets[idx]) if fetch is None else fetch(idx)
            optimizer.zero_grad(set_to_none=True)
            with speed.autocast():
                loss = loss_fn(speed.forward(x), y)
            loss.backward()
            optimizer.step()
            synchronize(device)
            seconds = time.perf_counter() - t
            steps += 1
            # Warm-up (lazy initialisation, kernel selection) lasts until steps stop getting
            # faster: at least two steps, at most ten.
            if len(warm) < 2 or (len(warm) < 10 and not times and seconds < 0.67 * min(warm)):
                warm.append(seconds)
                continue
            times.append(seconds)
            timed += seconds
            if len(times) >= min_steps and timed > budget_s:
                break
        busy = contention.epoch_contention(before, machine.read(), speed.threads,
                                           cpu_bound=device.type == "cpu")
        default_eval = bs if data.info.task == "lm" else max(bs, 256)
        eval_bs = config.data.eval_batch_size or default_eval
        split = data.valid if len(data.valid) else data.train
        if isinstance(split, Split):
            x_host, y_host = split.inputs[:eval_bs], split.targets[:eval_bs]
        else:  # a Dataset's first items, read once
            x_host, y_host = split.take(range(min(eval_bs, len(split))))
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
        del model, optimizer, tuning, speed
    return Probe(trimmed_mean(times), min(eval_times[1:]), max(0, int(peak) - base), base,
                 len(times), time.perf_counter() - t_begin, busy)


def trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    """The mean of ``values`` without the lowest and highest ``cut`` fraction."""
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    return statistics.fmean(ordered[k:len(ordered) - k])
