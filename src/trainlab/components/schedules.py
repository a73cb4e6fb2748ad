"""Learning-rate schedules.

Every schedule is a torch scheduler stepped at one of three moments, its ``interval``:
after each optimizer ``step``, at the end of each ``epoch``, or after each validation
(``eval``, for plateau).  Schedules written as a factor of the optimizer's LR (cyclic,
slanted-triangular, warmup-linear) keep per-group LRs in proportion, so they compose with
discriminative learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from trainlab.components.base import Spec
from trainlab.registry import Registry

if TYPE_CHECKING:  # torch is imported where a schedule is built, not where specs are validated
    import torch
    from torch.optim import lr_scheduler

Interval = Literal["step", "epoch"]


@dataclass(frozen=True)
class ScheduleContext:
    epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def units(self, interval: str) -> int:
        return self.total_steps if interval == "step" else self.epochs


class Schedule:
    """A torch LR scheduler (or none) with the moment it is stepped at."""

    def __init__(self, scheduler: Any | None, interval: Literal["step", "epoch", "eval"]) -> None:
        self.scheduler: Any = scheduler  # a torch LR scheduler or None
        self.interval = interval

    @property
    def per_step(self) -> bool:
        """Whether :meth:`after_step` does anything (the loop skips the call otherwise)."""
        return self.interval == "step" and self.scheduler is not None

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.interval == "epoch" and self.scheduler is not None:
            self.scheduler.step()

    def after_eval(self, valid_loss: float) -> None:
        if self.interval == "eval" and self.scheduler is not None:
            self.scheduler.step(valid_loss)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


Builder = Callable[..., Schedule]


class ScheduleSpec(Spec):
    """Options of a schedule; each schedule adds its own."""


SCHEDULES: Registry[Builder] = Registry("schedule", base=ScheduleSpec)


def build_schedule(spec: ScheduleSpec, optimizer: torch.optim.Optimizer,
                   ctx: ScheduleContext) -> Schedule:
    return SCHEDULES.get(spec.name, field="schedule.name").build(spec, optimizer, ctx)


def _factor(optimizer: torch.optim.Optimizer, fn: Callable[[int], float]) -> lr_scheduler.LambdaLR:
    from torch.optim import lr_scheduler

    return lr_scheduler.LambdaLR(optimizer, fn)


class ConstantSpec(ScheduleSpec):
    """A fixed learning rate."""


@SCHEDULES.register("constant", spec=ConstantSpec)
def build_constant(spec: ConstantSpec, opt: torch.optim.Optimizer,
                   ctx: ScheduleContext) -> Schedule:
    """The optimizer's LR, unchanged."""
    return Schedule(None, "step")


class StepSpec(ScheduleSpec):
    step_size: PositiveInt = Field(default=1, description="epochs (or steps) between decays")
    gamma: PositiveFloat = 0.1
    interval: Interval = "epoch"


@SCHEDULES.register("step", spec=StepSpec)
def build_step(spec: StepSpec, opt: torch.optim.Optimizer, ctx: ScheduleContext) -> Schedule:
    """StepLR: multiply the LR by gamma every step_size epochs (or steps)."""
    from torch.optim import lr_scheduler

    return Schedule(lr_scheduler.StepLR(opt, spec.step_size, spec.gamma), spec.interval)


class MultiStepSpec(ScheduleSpec):
    milestones: list[PositiveInt] = Field(min_length=1)
    gamma: PositiveFloat = 0.1
    interval: Interval = "epoch"


@SCHEDULES.register("multistep", spec=MultiStepSpec)
def build_multistep(spec: MultiStepSpec, opt: torch.optim.Optimizer,
                    ctx: ScheduleContext) -> Schedule:
    """MultiStepLR: multiply the LR by gamma at each milestone epoch (or step)."""
    from torch.optim import lr_scheduler

    return Schedule(lr_scheduler.MultiStepLR(opt, sorted(spec.milestones), spec.gamma),
                    spec.interval)


class ExponentialSpec(ScheduleSpec):
    gamma: float = Field(default=0.95, gt=0.0, le=1.0)
    interval: Interval = "epoch"


@SCHEDULES.register("exponential", spec=ExponentialSpec)
def build_exponential(spec: ExponentialSpec, opt: torch.optim.Optimizer,
                      ctx: ScheduleContext) -> Schedule:
    """ExponentialLR: multiply the LR by gamma every epoch (or step)."""
    from torch.optim import lr_scheduler

    return Schedule(lr_scheduler.ExponentialLR(opt, spec.gamma), spec.interval)


class CosineSpec(ScheduleSpec):
    min_lr: float = Field(default=0.0, ge=0.0)
    interval: Interval = "step"


@SCHEDULES.register("cosine", spec=CosineSpec)
def build_cosine(spec: CosineSpec, opt: torch.optim.Optimizer, ctx: ScheduleContext) -> Schedule:
    """Cosine annealing from the optimizer's LR to min_lr over the whole run."""
    from torch.optim import lr_scheduler

    sched = lr_scheduler.CosineAnnealingLR(opt, max(1, ctx.units(spec.interval)), spec.min_lr)
    return Schedule(sched, spec.interval)


class WarmupLinearSpec(ScheduleSpec):
    warmup_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    warmup_steps: PositiveInt | None = Field(default=None, description="overrides the fraction")
    final_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="last LR / peak LR")


@SCHEDULES.register("warmup-linear", spec=WarmupLinearSpec)
def build_warmup_linear(spec: WarmupLinearSpec, opt: torch.optim.Optimizer,
                        ctx: ScheduleContext) -> Schedule:
    """Linear warm-up to the optimizer's LR, then linear decay (BERT's schedule)."""
    total = max(1, ctx.total_steps)
    warm = spec.warmup_steps if spec.warmup_steps is not None else int(spec.warmup_fraction * total)
    warm = min(warm, total)

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        rest = max(1, total - warm)
        return max(spec.final_ratio, 1.0 - (1.0 - spec.final_ratio) * (t - warm) / rest)

    return Schedule(_factor(opt, factor), "step")


class OneCycleSpec(ScheduleSpec):
    max_lr: PositiveFloat | None = Field(default=None, description="default: the optimizer's LR")
    pct_start: float = Field(default=0.3, gt=0.0, lt=1.0)
    anneal: Literal["cos", "linear"] = "cos"
    div_factor: PositiveFloat = 25.0
    final_div_factor: PositiveFloat = 1e4
    cycle_momentum: bool = False


@SCHEDULES.register("onecycle", spec=OneCycleSpec)
def build_onecycle(spec: OneCycleSpec, opt: torch.optim.Optimizer,
                   ctx: ScheduleContext) -> Schedule:
    """OneCycleLR (Smith): warm up to max_lr, then anneal far below the start, per step."""
    from torch.optim import lr_scheduler

    max_lr = spec.max_lr if spec.max_lr is not None else [g["lr"] for g in opt.param_groups]
    sched = lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=max(1, ctx.total_steps), pct_start=spec.pct_start,
        anneal_strategy=spec.anneal, div_factor=spec.div_factor,
        final_div_factor=spec.final_div_factor, cycle_momentum=spec.cycle_momentum)
    return Schedule(sched, "step")


class CyclicSpec(ScheduleSpec):
    ratio: float = Field(default=10.0, ge=1.0, description="peak LR / lowest LR")
    step_size_up: PositiveInt | None = Field(
        default=None, description="steps from low to peak (default: half the run: one triangle)")
    mode: Literal["triangular", "triangular2"] = "triangular"


@SCHEDULES.register("cyclic", spec=CyclicSpec)
def build_cyclic(spec: CyclicSpec, opt: torch.optim.Optimizer, ctx: ScheduleContext) -> Schedule:
    """Cyclical (triangular) LR between lr/ratio and the optimizer's LR, per step (Smith)."""
    half = spec.step_size_up or max(1, ctx.total_steps // 2)
    low = 1.0 / spec.ratio

    def factor(t: int) -> float:
        cycle, pos = divmod(t, 2 * half)
        height = 1.0 - abs(pos - half) / half
        if spec.mode == "triangular2":
            height /= 2**cycle
        return low + (1.0 - low) * height

    return Schedule(_factor(opt, factor), "step")


class SlantedTriangularSpec(ScheduleSpec):
    cut_frac: float = Field(default=0.1, gt=0.0, lt=1.0, description="fraction spent increasing")
    ratio: float = Field(default=32.0, ge=1.0, description="peak LR / lowest LR")


@SCHEDULES.register("slanted-triangular", spec=SlantedTriangularSpec)
def build_slanted_triangular(spec: SlantedTriangularSpec, opt: torch.optim.Optimizer,
                             ctx: ScheduleContext) -> Schedule:
    """ULMFiT's slanted triangular LR (Howard & Ruder 2018, eq. 3), per step."""
    total = max(1, ctx.total_steps)
    cut = max(1, math.floor(total * spec.cut_frac))

    def factor(t: int) -> float:
        p = t / cut if t < cut else 1.0 - (t - cut) / (cut * (1.0 / spec.cut_frac - 1.0))
        return (1.0 + max(p, 0.0) * (spec.ratio - 1.0)) / spec.ratio

    return Schedule(_factor(opt, factor), "step")


class PlateauSpec(ScheduleSpec):
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    patience: int = Field(default=2, ge=0, description="evaluations without improvement")
    threshold: float = Field(default=1e-4, ge=0.0)
    min_lr: float = Field(default=0.0, ge=0.0)


@SCHEDULES.register("plateau", spec=PlateauSpec)
def build_plateau(spec: PlateauSpec, opt: torch.optim.Optimizer, ctx: ScheduleContext) -> Schedule:
    """ReduceLROnPlateau on the validation loss, checked after every validation."""
    from torch.optim import lr_scheduler

    sched = lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=spec.factor,
                                           patience=spec.patience, threshold=spec.threshold,
                                           min_lr=spec.min_lr)
    return Schedule(sched, "eval")
