"""Which runs of a sweep train together as one stacked model (``train.stack``), and why the
others train alone.

Runs stack when they share everything a stacked model must share (data, model architecture and
shapes, batch size, epochs, the rest of ``train``, the optimizer's kind) and differ only in what
can differ per model: the optimizer's hyperparameters (``lr``, ``weight_decay``, ``momentum``,
``betas``, ``eps``), the schedule and the seed.  Up to ``train.stack`` runs form one stack
(``auto``: up to :data:`AUTO_STACK`), in the sweep's order.  No torch here: ``trainlab plan``
shows the stacks without it.  The stacked trainer is :mod:`trainlab.engine.stack`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainlab.config.schema import RunConfig
    from trainlab.plan import PlannedRun

AUTO_STACK = 16  # train.stack: auto stacks up to this many runs (no memory budget yet)
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
class StackPlan:
    """The stacks (two runs or more each, in sweep order) and, for each run with
    ``train.stack`` set that trains alone, why."""

    stacks: list[list[PlannedRun]]
    alone: dict[str, str]

    def stack_of(self, run_id: str) -> list[PlannedRun] | None:
        for stack in self.stacks:
            if any(p.run_id == run_id for p in stack):
                return stack
        return None

    def to_json(self) -> dict[str, Any]:
        return {"stacks": [[p.run_id for p in s] for s in self.stacks], "alone": self.alone}


def plan_stacks(runs: Sequence[PlannedRun]) -> StackPlan:
    """Group the runs to train into stacks (runs without ``train.stack`` train alone and
    are not listed)."""
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
    for members in groups.values():
        limit = stack_limit(members[0].run.config)
        for start in range(0, len(members), limit):
            chunk = members[start:start + limit]
            if len(chunk) > 1:
                stacks.append(chunk)
            else:
                alone[chunk[0].run_id] = (
                    "no other run to train shares its data, model, batch size, epochs and "
                    "optimizer kind (runs stack when they differ only in optimizer "
                    "hyperparameters, schedule and seed)")
    return StackPlan(stacks, alone)
