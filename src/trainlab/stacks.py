"""Which runs of a sweep train together as one stacked model (``train.stack``), and why the
others train alone.

Runs stack when they share everything a stacked model must share (data, model architecture and
shapes, batch size, epochs, the rest of ``train``, the optimizer's kind) and differ only in what
can differ per model: the optimizer's hyperparameters (``lr``, ``weight_decay``, ``momentum``,
``betas``, ``eps``), the schedule and the seed.  Up to ``train.stack`` runs form one stack
(``auto``: up to :data:`AUTO_STACK`, and no more than a memory budget holds), in the sweep's
order.  No torch here: the bound for ``auto`` comes in from the estimate
(:mod:`trainlab.estimate.stacked`, which knows each model's memory) as ``limit_for``, or from
what the last estimate in this process remembered (:func:`remember_caps`: ``trainlab run``
estimates before its executor plans the stacks).  The stacked trainer is
:mod:`trainlab.engine.stack`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainlab.config.schema import RunConfig
    from trainlab.plan import PlannedRun

AUTO_STACK = 16  # train.stack: auto stacks up to this many runs (fewer where memory says so)
# The optimizers the stacked trainer implements (trainlab.engine.stack_optim).
STACKABLE_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
# Optimizer fields each model of a stack may have its own value of.
PER_MODEL_OPTIMIZER = ("lr", "weight_decay", "momentum", "betas", "eps")


def stack_limit(config: RunConfig) -> int:
    """The most runs one stack may hold under this run's ``train.stack`` (1: off)."""
    value = config.train.stack
    if value == "off":
        return 1
    return AUTO_STACK if value == "auto" else int(value)


def why_alone(config: RunConfig) -> str | None:
    """Why a run with ``train.stack`` set cannot be stacked, from its config (None: it can;
    whether vmap batches its model is found on the stack's trial step)."""
    tc, opt, model = config.train, config.optimizer, config.model
    if opt.name not in STACKABLE_OPTIMIZERS:
        return (f"optimizer {opt.name!r} has no stacked version (stacked: "
                f"{', '.join(STACKABLE_OPTIMIZERS)})")
    if getattr(opt, "amsgrad", False):
        return "optimizer.amsgrad has no stacked version"
    if opt.fused is True:
        return "optimizer.fused: true asks for torch's fused kernel, which steps one model"
    if opt.lr == "auto":
        return "optimizer.lr: auto picks each run's LR with a range test first"
    if getattr(config.schedule, "cycle_momentum", False):
        return (f"schedule.cycle_momentum cycles the optimizer's momentum, which the stacked "
                f"optimizer keeps fixed (schedule {config.schedule.name!r})")
    if getattr(model, "dropout", 0.0):
        return ("model.dropout draws masks from one random stream: a stacked run's masks would "
                "differ from its solo run's")
    checks = (
        (config.finetune.name != "full", f"finetune.name={config.finetune.name!r} (only full "
                                         "training stacks)"),
        (tc.nproc > 1, "train.nproc > 1 trains with DDP"),
        (tc.precision != "fp32", f"train.precision={tc.precision} (stacks train in fp32)"),
        (tc.compile, "train.compile compiles one model"),
        (tc.clip_grad_norm is not None, "train.clip_grad_norm has no stacked version"),
        (tc.early_stopping is not None, "train.early_stopping stops runs at different epochs"),
        (tc.eval_every is not None, "train.eval_every has no stacked version (validation "
                                    "every epoch)"),
        (tc.profile is not None, "train.profile profiles one run"),
        (config.data.loader is not None, "data.loader: the data is read item by item"),
        (tc.deterministic, "train.deterministic has no stacked version"),
        (getattr(tc, "steps_per_epoch", None) is not None, "train.steps_per_epoch: streaming "
                                                           "data is read item by item"),
    )
    for bad, reason in checks:
        if bad:
            return reason
    return None


def stack_key(config: RunConfig) -> str:
    """What the runs of one stack share: the config without what may differ per model."""
    tree: dict[str, Any] = config.to_dict()
    tree.pop("root", None)
    tree["train"] = {k: v for k, v in tree["train"].items() if k != "seed"}
    tree["optimizer"] = {k: v for k, v in tree["optimizer"].items()
                         if k not in PER_MODEL_OPTIMIZER}
    tree.pop("schedule")
    return json.dumps(tree, sort_keys=True, default=str)


@dataclass(frozen=True)
class StackCap:
    """The most runs one stack of ``train.stack: auto`` may hold, and why (the memory budget:
    :func:`trainlab.estimate.stacked.memory_cap`)."""

    size: int
    why: str


# The caps the last estimate in this process found, by stack_key: what plan_stacks applies when
# no limit_for is passed (the executor plans its stacks after `trainlab run`'s estimate).
_REMEMBERED: dict[str, StackCap] = {}


def remember_caps(caps: Mapping[str, StackCap]) -> None:
    """Keep ``caps`` (by :func:`stack_key`) for later :func:`plan_stacks` calls that pass no
    ``limit_for``; replaces what an earlier estimate remembered."""
    _REMEMBERED.clear()
    _REMEMBERED.update(caps)


def _remembered(config: RunConfig) -> StackCap | None:
    return _REMEMBERED.get(stack_key(config)) if _REMEMBERED else None


@dataclass(frozen=True)
class StackPlan:
    """The stacks (two runs or more each, in sweep order) and, for each run with
    ``train.stack`` set that trains alone, why; ``capped``: for each run of a ``train.stack:
    auto`` group that the memory budget split into smaller stacks, the line that says so."""

    stacks: list[list[PlannedRun]]
    alone: dict[str, str]
    capped: dict[str, str] = field(default_factory=dict)

    def stack_of(self, run_id: str) -> list[PlannedRun] | None:
        for stack in self.stacks:
            if any(p.run_id == run_id for p in stack):
                return stack
        return None

    def to_json(self) -> dict[str, Any]:
        return {"stacks": [[p.run_id for p in s] for s in self.stacks], "alone": self.alone,
                **({"capped": self.capped} if self.capped else {})}


def plan_stacks(runs: Sequence[PlannedRun],
                limit_for: Callable[[RunConfig], StackCap | None] | None = None) -> StackPlan:
    """Group the runs to train into stacks (runs without ``train.stack`` train alone and
    are not listed).

    ``limit_for(config)``: the cap of a ``train.stack: auto`` group (None: no cap), called once
    per group of two runs or more; without it, the caps the last estimate remembered.  An
    explicit ``train.stack: N`` is kept as given.
    """
    cap_of = limit_for if limit_for is not None else _remembered
    groups: dict[str, list[PlannedRun]] = {}
    alone: dict[str, str] = {}
    for planned in runs:
        config = planned.run.config
        if stack_limit(config) <= 1:
            if config.train.stack != "off":
                alone[planned.run_id] = "train.stack is 1"
            continue
        reason = why_alone(config)
        if reason is not None:
            alone[planned.run_id] = reason
            continue
        groups.setdefault(stack_key(config), []).append(planned)
    stacks: list[list[PlannedRun]] = []
    capped: dict[str, str] = {}
    for members in groups.values():
        config = members[0].run.config
        limit = stack_limit(config)
        cap = cap_of(config) if config.train.stack == "auto" and len(members) > 1 else None
        if cap is not None and cap.size < min(limit, len(members)):
            limit = max(1, cap.size)
            # As even as the cap allows (16 runs capped at 5: four stacks of 4, none alone).
            count = -(-len(members) // limit)
            chunks = [members[len(members) * i // count:len(members) * (i + 1) // count]
                      for i in range(count)]
            sizes = sorted({len(c) for c in chunks}, reverse=True)
            line = (f"train.stack: auto capped by memory: {len(members)} runs as {count} "
                    f"{'stacks' if limit > 1 else 'runs alone'}"
                    + (f" of {' and '.join(map(str, sizes))}" if limit > 1 else "")
                    + f" (at most {limit} a stack: {cap.why})")
            capped.update((p.run_id, line) for p in members)
        else:
            chunks = [members[a:a + limit] for a in range(0, len(members), limit)]
        for chunk in chunks:
            if len(chunk) > 1:
                stacks.append(chunk)
            elif cap is not None and limit == 1:
                alone[chunk[0].run_id] = f"the memory budget holds one model ({cap.why})"
            else:
                alone[chunk[0].run_id] = (
                    "no other run to train shares its data, model, batch size, epochs and "
                    "optimizer kind (runs stack when they differ only in optimizer "
                    "hyperparameters, schedule and seed)")
    return StackPlan(stacks, alone, capped)
