"""The learning-rate range test (Smith 2015; fastai's ``lr_find``).

Train for a short ramp of learning rates, from ``start`` to ``end`` (exponentially by default),
recording the loss after every update; stop once the smoothed loss passes ``diverge`` x its
best or is not finite.  The curve is then read by the pure functions of
:mod:`trainlab.lr.suggest`.

Two entry points:

- :func:`range_test` runs the test on a model and optimizer you built; it restores their
  state (weights, optimizer state, ``requires_grad``, train/eval mode) and the global RNG
  states afterwards, so training after it is exactly what it would have been without it.
- :func:`lr_find` builds the run's data, model, fine-tuning setup and optimizer from a
  :class:`RunConfig` with the same components as :func:`trainlab.engine.train`, and reads the
  batches in the order training does (:func:`epoch_permutation`).

The schedule of the config is ignored: the ramp is the schedule.  Fine-tuning strategies keep
their per-group LR ratios (each group's LR is its ratio x the ramp's LR) and their callbacks
see the first epoch, so the test measures the setup training starts with.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.components import (
    build_finetune,
    build_model,
    build_optimizer,
    load_dataset,
)
from trainlab.components.datasets import Split
from trainlab.components.items import ItemSplit
from trainlab.components.optimizers import with_lr
from trainlab.components.schedules import Schedule
from trainlab.config.schema import LRFindSpec, RunConfig
from trainlab.devices import resolve_device
from trainlab.engine import interrupt
from trainlab.engine.loop import epoch_permutation, seed_everything
from trainlab.engine.measure import Clock
from trainlab.engine.speed import Speed, decide, intra_op_threads
from trainlab.engine.tasks import TASKS, training_loss
from trainlab.errors import TrainlabError
from trainlab.hooks import RunState
from trainlab.lr.suggest import Suggestions, suggest

Batches = Iterator[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LRRangeResult:
    """A range test's curve, why it stopped, what it cost, and what it suggests.

    ``lrs[i]`` is the LR of update i (of the first parameter group; other groups keep their
    ratio to it) and ``losses[i]`` the loss measured after that update: the next training
    batch's loss (before its own update), or the validation loss.  ``seconds`` is the test's
    whole cost (setup, steps, restoring state); ``steps`` the updates it made.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]  # zero-lag smoothed: what the suggestions read (NaN: not finite)
    initial_loss: float  # before any update
    stopped: str  # diverged | not-finite | end
    steps: int
    planned_steps: int
    seconds: float
    settings: dict[str, Any]
    suggestions: Suggestions
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stop_lr(self) -> float | None:
        return self.lrs[-1] if self.lrs else None

    @property
    def usable(self) -> bool:
        """Whether the curve suggests any learning rate at all."""
        s = self.suggestions
        return any(v is not None for v in (s.steepest, s.valley, s.minimum))

    @property
    def status(self) -> str:
        """ok (trusted), untrusted (suggestions with flags) or diverged (no suggestion)."""
        if not self.usable:
            return "diverged"
        return "ok" if self.suggestions.assessment.trusted else "untrusted"

    def explain(self) -> str:
        """One paragraph: why the test stopped and what its flags say."""
        where = f" at lr {self.stop_lr:.3g}" if self.stop_lr is not None else ""
        stop = {"diverged": f"stopped: the smoothed loss passed {self.settings['diverge']:g}x "
                            f"its best{where}",
                "not-finite": f"stopped: the loss was not finite{where}",
                "end": "reached the end of the range"}[self.stopped]
        if not math.isfinite(self.initial_loss):
            stop = ("the loss is not finite before any update: the data or the initial "
                    "weights produce NaN or inf, whatever the LR")
        flags = "; ".join(f.message for f in self.suggestions.assessment.flags)
        return stop + (f". {flags}" if flags else "")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (a NaN or infinite loss becomes null)."""
        return {
            "lrs": self.lrs, "losses": _finite(self.losses), "smoothed": _finite(self.smoothed),
            "initial_loss": _finite([self.initial_loss])[0],
            "stopped": self.stopped, "stop_lr": self.stop_lr, "steps": self.steps,
            "planned_steps": self.planned_steps, "seconds": self.seconds,
            "settings": self.settings, "device": self.device, "status": self.status,
            "explanation": self.explain(), "suggestions": self.suggestions.to_dict(),
            "extra": self.extra,
        }

    @staticmethod
    def from_dict(record: dict[str, Any], settings: LRFindSpec | None = None) -> LRRangeResult:
        """A stored result; its suggestions are read again from the curve (they are pure
        functions of it), with ``settings`` (say, another candidate count) if given."""
        spec = settings or LRFindSpec.model_validate(record["settings"])
        losses = [float("nan") if v is None else float(v) for v in record["losses"]]
        found, smoothed = suggest(record["lrs"], losses, beta=spec.smooth,
                                  stopped=record["stopped"], n_candidates=spec.candidates)
        initial = record.get("initial_loss")
        return LRRangeResult(
            list(record["lrs"]), losses, [float(v) for v in smoothed],
            float("nan") if initial is None else float(initial), record["stopped"],
            int(record["steps"]), int(record["planned_steps"]), float(record["seconds"]),
            spec.model_dump(mode="json"), found, record.get("device", "cpu"),
            dict(record.get("extra") or {}))


def _finite(values: Sequence[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def ramp(settings: LRFindSpec, steps: int) -> np.ndarray:
    """The LR of each update: exponential (log-uniform) or linear from start to end."""
    t = np.arange(steps) / max(steps - 1, 1)
    if settings.mode == "linear":
        return settings.start + (settings.end - settings.start) * t
    return settings.start * (settings.end / settings.start) ** t


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global torch (CPU and CUDA), NumPy and Python RNG states on exit."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
              torch.cuda.get_rng_state_all() if cuda else None)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


@contextmanager
def preserved_training_state(model: nn.Module, optimizer: torch.optim.Optimizer
                             ) -> Iterator[None]:
    """Restore the model's weights, buffers, ``requires_grad`` flags and train/eval mode and
    the optimizer's state and hyperparameters on exit."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    opt_state = copy.deepcopy(optimizer.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(weights)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        for m, mode in zip(model.modules(), modes):
            m.training = mode
        optimizer.load_state_dict(opt_state)
        optimizer.zero_grad(set_to_none=True)


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
               loss_fn: LossFn, settings: LRFindSpec | None = None, *, steps: int | None = None,
               scales: Sequence[float] | None = None,
               evaluate: Callable[[nn.Module], Tensor] | None = None,
               clip_grad_norm: float | None = None, device: torch.device | None = None,
               restore: bool = True, speed: Speed | None = None) -> LRRangeResult:
    """Run the range test on ``model`` and ``optimizer`` and restore both afterwards.

    ``batches`` yields (inputs, targets) on the model's device, at least ``steps + 1`` of them.
    ``scales`` are the parameter groups' LRs relative to the ramp (default: each group's
    current LR over the first group's).  ``evaluate(model)`` returns a validation loss (a 0-d
    tensor) when ``settings.loss == "valid"``.  ``restore=False`` skips saving the model and
    optimizer (for callers that throw them away); the RNG states are restored either way.
    ``speed`` (the run's :func:`~trainlab.engine.speed.decide`) trains under its autocast and
    gradient scaler, as the run will; None: fp32.
    """
    settings = settings or LRFindSpec()
    steps = steps or settings.steps
    device = device or next(model.parameters()).device
    clock = Clock(device)
    t0 = clock.now()
    groups = optimizer.param_groups
    if scales is None:
        base = groups[0]["lr"]
        scales = [g["lr"] / base for g in groups]
    if len(scales) != len(groups):
        raise ValueError(f"{len(scales)} scales for {len(groups)} parameter groups")
    if settings.loss == "valid" and evaluate is None:
        raise ValueError("settings.loss is 'valid' but no evaluate function was given")
    lrs = ramp(settings, steps)
    params = [p for g in groups for p in g["params"]]
    with preserved_rng():
        guard: AbstractContextManager[None] = (
            preserved_training_state(model, optimizer) if restore else nullcontext())
        with guard:
            curve = _run(model, optimizer, batches, loss_fn, settings, lrs, scales, evaluate,
                         clip_grad_norm, params, speed)
    seconds = clock.now() - t0
    measured_lrs, losses, initial, stopped = curve
    found, smoothed = suggest(measured_lrs, losses, beta=settings.smooth, stopped=stopped,
                              n_candidates=settings.candidates)
    return LRRangeResult(measured_lrs, losses, [float(v) for v in smoothed], initial, stopped,
                         len(measured_lrs), steps, seconds, settings.model_dump(mode="json"),
                         found, str(device))


class RangeTestInterrupted(TrainlabError):
    """A stop was requested (Ctrl-C, SIGTERM: :mod:`trainlab.engine.interrupt`) during the
    ramp; the test stopped after the step it was in and its partial curve is not kept."""

    def __init__(self, steps: int, planned: int) -> None:
        super().__init__(f"the LR range test was interrupted after {steps} of {planned} steps")
        self.steps = steps
        self.planned = planned


def _run(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, loss_fn: LossFn,
         settings: LRFindSpec, lrs: np.ndarray, scales: Sequence[float],
         evaluate: Callable[[nn.Module], Tensor] | None, clip: float | None,
         params: list[Tensor], speed: Speed | None = None
         ) -> tuple[list[float], list[float], float, str]:
    """The ramp.  Returns (LR of each measured update, loss after it, initial loss, stop)."""
    autocast = speed.autocast if speed is not None else nullcontext
    scaler = speed.scaler if speed is not None else None
    train_mode = settings.loss == "train"
    beta, limit = settings.smooth, settings.diverge
    measured: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    initial = math.nan
    model.train()
    if not train_mode and evaluate is not None:
        initial = _host(evaluate(model))
        model.train()
    steps = len(lrs)
    # In train mode step i's forward pass is the measurement of update i - 1 (the loss after
    # it), so the loop runs one forward pass more than it makes updates.
    stop_flag = interrupt.FLAG  # set by the first Ctrl-C / SIGTERM: honoured every step
    for i in range(steps + 1 if train_mode else steps):
        if stop_flag[0]:
            raise RangeTestInterrupted(len(losses), steps)
        x, y = next(batches)
        with autocast():
            loss = loss_fn(model(x), y)
        value: float | None = None
        if train_mode:
            # The stopping rule needs every step's loss on the host: the one sync per step the
            # method cannot do without (the training loop itself never syncs per step).
            value = _host(loss)
            if i == 0:
                initial = value
                if not math.isfinite(value):
                    return measured, losses, initial, "not-finite"
            else:
                measured.append(float(lrs[i - 1]))
        if value is not None and i > 0:
            stop, avg, best = _check(value, len(losses), avg, best, beta, limit)
            losses.append(value)
            if stop:
                return measured, losses, initial, stop
        if i == steps:
            break
        for group, scale in zip(optimizer.param_groups, scales):
            group["lr"] = float(lrs[i]) * scale
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
        else:  # fp16, as the run steps: scaled loss, unscaled before clipping
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            scaler.step(optimizer)
            scaler.update()
        if not train_mode and evaluate is not None:
            value = _host(evaluate(model))  # one sync per step, as above
            model.train()
            measured.append(float(lrs[i]))
            stop, avg, best = _check(value, len(losses), avg, best, beta, limit)
            losses.append(value)
            if stop:
                return measured, losses, initial, stop
    return measured, losses, initial, "end"


def _host(loss: Tensor) -> float:
    return float(loss.detach().float())


def _check(value: float, seen: int, avg: float, best: float, beta: float,
           limit: float) -> tuple[str | None, float, float]:
    """The stopping rule on the causal, bias-corrected EMA: (stop reason or None, avg, best)."""
    if not math.isfinite(value):
        return "not-finite", avg, best
    avg = beta * avg + (1.0 - beta) * value
    smoothed = avg / (1.0 - beta ** (seen + 1)) if beta > 0 else value
    best = min(best, smoothed)
    # A loss at or below zero (a perfect fit) has no "k x best" to exceed: keep going.
    if best > 0 and smoothed > limit * best:
        return "diverged", avg, best
    return None, avg, best


# --- from a run config -----------------------------------------------------------------------


def lr_find(config: RunConfig, settings: LRFindSpec | None = None) -> LRRangeResult:
    """The range test on a run's data, model, fine-tuning setup and optimizer.

    The model is initialised from ``settings.seed`` (not the run's seed: the seed replicas of a
    run share one test) and the batches come in the order training reads them.
    """
    settings = settings or config.lr_find or LRFindSpec()
    t0 = time.perf_counter()
    with intra_op_threads(config.train.threads):
        if not isinstance(config.train.threads, int):  # auto: the count the run will pick
            from trainlab.engine.bench import run_threads

            torch.set_num_threads(run_threads(config).threads)
        result, extra = _lr_find(config, settings)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # The test's model, optimizer and data are gone with _lr_find: give their cached
        # blocks back to the driver.  In a sweep's parent (the pool and Ray run the tests
        # there, once per group) the workers then find that memory free; what stays is this
        # process's CUDA context (a few hundred MB on the test's device).
        torch.cuda.empty_cache()
    seconds = time.perf_counter() - t0  # the whole cost, setup included
    return LRRangeResult(result.lrs, result.losses, result.smoothed, result.initial_loss,
                         result.stopped, result.steps, result.planned_steps, seconds,
                         result.settings, result.suggestions, result.device, extra)


def _lr_find(config: RunConfig, settings: LRFindSpec) -> tuple[LRRangeResult, dict[str, Any]]:
    with preserved_rng():
        device = resolve_device(config.train.device)
        data = load_dataset(config.data, config.model,
                            steps_per_epoch=config.train.steps_per_epoch)
        task = TASKS[data.info.task]
        seed_everything(settings.seed)
        model = build_model(config.model, data.info).to(device)
        # Built at LR 1, each group's LR is its ratio to the optimizer's LR.
        tuning = build_finetune(config.finetune, model, 1.0)
        model = (tuning.model or model).to(device)  # adapters / PEFT wrap or extend it
        optimizer = build_optimizer(with_lr(config.optimizer, 1.0),
                                    tuning.param_groups)
        scales = [float(g["lr"]) for g in optimizer.param_groups]
        bs = config.data.batch_size
        # Placement, autocast and scaler as the run decides them: the splits go to the device
        # only when the run would put them there (else host batches copied one at a time).
        speed = decide(config.train, model, device, [data.train, data.valid])
        place = (lambda split: split.to(device)) if speed.data_on_device else (lambda split: split)
        train_split = place(data.train)
        steps_per_epoch = math.ceil(len(train_split) / bs)
        steps = settings.steps
        if settings.epochs is not None:
            steps = max(10, math.ceil(settings.epochs * steps_per_epoch))
        state = RunState("lr-find", config, data.info, device, model, optimizer,
                         Schedule(None, "step"), steps_per_epoch, epoch=1)
        for cb in tuning.callbacks:
            cb.on_run_start(state)
            cb.on_epoch_start(state)
        evaluate = None
        if settings.loss == "valid":
            if len(data.valid) == 0:
                from trainlab.errors import ConfigError

                raise ConfigError("`lr_find.loss`: valid needs a validation split, and "
                                  f"{data.info.name!r} has none here; use train",
                                  field="lr_find.loss")
            valid = place(data.valid)
            eval_bs = config.data.eval_batch_size or max(bs, 256)
            evaluate = _evaluator(valid, task.sums, eval_bs, device, speed)
        result = range_test(model, optimizer,
                            _batches(train_split, bs, settings.seed, device, speed),
                            training_loss(config, task),
                            settings, steps=steps, scales=scales, evaluate=evaluate,
                            clip_grad_norm=config.train.clip_grad_norm, device=device,
                            restore=False, speed=speed)
    return result, {"data": data.info.name, "train_examples": len(train_split),
                    "steps_per_epoch": steps_per_epoch}


def _batches(split: Split | ItemSplit, batch_size: int, seed: int,
             device: torch.device, speed: Speed | None = None) -> Batches:
    """Training batches in the loop's order, epoch after epoch (a Dataset's items through a
    DataLoader whose batch sampler is that order, as the loop reads them); tensors on the
    host, where ``speed`` left them there, are fetched to the device a batch at a time."""
    epoch = 1
    while True:
        if isinstance(split, ItemSplit):
            order = epoch_permutation(len(split), seed, epoch)
            yield from split.batches(order.split(batch_size), device)
        else:
            order = epoch_permutation(len(split), seed, epoch).to(split.inputs.device)
            fetch = speed.fetcher(split) if speed is not None else None
            for idx in order.split(batch_size):
                yield fetch(idx) if fetch is not None else (split.inputs[idx], split.targets[idx])
        epoch += 1


def _evaluator(split: Split | ItemSplit,
               sums: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], batch_size: int,
               device: torch.device, speed: Speed | None = None
               ) -> Callable[[nn.Module], Tensor]:
    autocast = speed.autocast if speed is not None else nullcontext

    def evaluate(model: nn.Module) -> Tensor:
        model.eval()
        total = torch.zeros((), device=device)
        count = 0
        with torch.inference_mode():
            if isinstance(split, ItemSplit):
                batches = split.batches(split.ranges(0, len(split), batch_size), device)
            elif speed is not None:  # on the device, or host batches copied there
                batches = speed.eval_batches(split, 0, len(split), batch_size)
            else:
                batches = ((split.inputs[start:start + batch_size],
                            split.targets[start:start + batch_size])
                           for start in range(0, len(split), batch_size))
            for x, y in batches:
                with autocast():
                    out = model(x)
                total += sums(out, y)[0].float()
                count += y.numel()
        return total / max(count, 1)

    return evaluate


__all__ = ["LRRangeResult", "RangeTestInterrupted", "lr_find", "preserved_rng",
           "preserved_training_state", "ramp", "range_test"]
