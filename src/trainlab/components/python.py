"""``name: python``: the user's own model, optimizer and schedule, named by a target.

```yaml
model:     {name: python, target: "nets.py:MiniGPT", args: {layers: 2, d_model: 128}}
optimizer: {name: python, target: "torch.optim:RAdam", args: {decoupled_weight_decay: true}}
schedule:  {name: python, target: "sched.py:warmup_cosine", args: {warmup: 100}}
train:     {loss: "losses.py:label_smoothed"}
```

- model: an ``nn.Module`` class or a function returning one; the data's facts (``vocab_size``,
  ``num_classes``, ``input_shape``, ``num_outputs``) reach it where its signature names them.
- optimizer: a ``torch.optim.Optimizer`` subclass or a function of ``(params, lr, **args)``;
  ``optimizer.weight_decay`` is passed where it is set (non-zero) and the callable takes it.
- schedule: an ``LRScheduler`` subclass or a function of ``(optimizer, total_steps, **args)``
  returning one, stepped after every optimizer step.
- loss: a function ``(outputs, targets) -> scalar tensor`` (training minimises it; validation
  and test report the task's own loss and metrics, so runs that differ in their loss compare on
  one scale).

A target's source file is hashed into the run id (``source``): editing the file makes new
runs.  ``root``, the folder relative file targets are found in, is the config file's folder;
trainlab sets both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, PrivateAttr

from trainlab.components.datasets import DATASETS, DataInfo, Dataset, Task, _SplitFractions
from trainlab.components.models import MODELS, ModelSpec
from trainlab.components.optimizers import OPTIMIZERS, OptimizerSpec, Params, resolved_lr
from trainlab.components.schedules import (
    SCHEDULES,
    Schedule,
    ScheduleContext,
    ScheduleSpec,
)
from trainlab.errors import ConfigError
from trainlab.usercode import call_with, load_target, source_digest

if TYPE_CHECKING:  # torch is imported where a component is built, not where specs are validated
    import torch
    from torch import nn


class PythonTarget(BaseModel):
    """The fields every ``name: python`` component has."""

    target: str = Field(description='your code: "path/to/file.py:Name" (relative to the config '
                                    'file\'s folder) or "package.module:Name"')
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="keyword arguments (sweep one as SECTION.args.KEY)")
    source: str | None = Field(default=None, description="set by trainlab: sha256 of the "
                               "target's file and the local modules it imports (part of the "
                               "run id)")
    # The folder relative file targets are found in (the run's root, set with the source).
    _root: str | None = PrivateAttr(default=None)


def with_source(spec: Any, root: str | None, section: str) -> Any:
    """``spec`` with ``source`` set to its target file's hash and its root recorded (specs
    without a target as they are).  Read at every resolution, so a file edited since the last
    plan gets a new run id."""
    if not isinstance(spec, PythonTarget):
        return spec
    out = spec.model_copy(update={"source": source_digest(spec.target, root,
                                                          f"{section}.target")})
    out._root = root
    return out


def _root(spec: PythonTarget) -> str | None:
    return spec._root


# --- model ------------------------------------------------------------------------------------


class PythonModelSpec(ModelSpec, PythonTarget):
    """Your own model: an nn.Module class or a function returning one."""


def data_facts(info: DataInfo) -> dict[str, Any]:
    """What a user's model may ask for by naming it in its signature."""
    facts: dict[str, Any] = {"input_shape": info.input_shape, "num_outputs": info.num_outputs,
                             "task": info.task, "info": info}
    if info.task == "classification":
        facts["num_classes"] = info.num_outputs
    if info.task == "lm" or info.vocab_size is not None:
        facts["vocab_size"] = info.vocab_size or info.num_outputs
    if info.task == "regression":
        facts["output_dim"] = info.num_outputs
    return facts


@MODELS.register("python", spec=PythonModelSpec)
def build_python_model(spec: PythonModelSpec, info: DataInfo) -> nn.Module:
    """Your own model, named by model.target: an nn.Module class or a function returning one."""
    from torch import nn

    target = load_target(spec.target, _root(spec), "model.target")
    model = call_with(target.obj, spec.args, "model.args", data_facts(info),
                      what=spec.target)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"`model.target`: {spec.target} returned {type(model).__name__}, not "
                          "a torch.nn.Module", field="model.target")
    return model


def check_output(out: Any, info: DataInfo, batch_size: int, where: str) -> None:
    """Raise ConfigError when a model's output on a batch does not fit the task."""
    import torch

    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    expected: tuple[int, ...]
    if info.task == "classification":
        expected = (batch_size, info.num_outputs)
        ok = shape == expected
        text = f"logits [B, C] = {list(expected)}"
    elif info.task == "lm":
        expected = (batch_size, *info.input_shape, info.num_outputs)
        ok = shape == expected
        text = f"logits [B, T, V] = {list(expected)}"
    else:
        ok = shape in ((batch_size,), (batch_size, info.num_outputs))
        text = f"[B] or [B, D] = [{batch_size}] or [{batch_size}, {info.num_outputs}]"
    if not ok:
        got = list(shape) if shape is not None else type(out).__name__
        raise ConfigError(f"`model.target`: {where} on a {info.task} batch must return {text}; "
                          f"it returned {got}", field="model.target")


# --- optimizer --------------------------------------------------------------------------------


class PythonOptimizerSpec(OptimizerSpec, PythonTarget):
    """Your own optimizer: a torch.optim.Optimizer subclass or a function (params, lr, **args)."""


@OPTIMIZERS.register("python", spec=PythonOptimizerSpec)
def build_python_optimizer(spec: PythonOptimizerSpec, params: Params) -> torch.optim.Optimizer:
    """Your own optimizer, named by optimizer.target (torch.optim:RAdam works too)."""
    import torch

    target = load_target(spec.target, _root(spec), "optimizer.target")
    args = dict(spec.args)
    if spec.weight_decay and "weight_decay" not in args and _takes(target.obj, "weight_decay"):
        args["weight_decay"] = spec.weight_decay
    optimizer = call_with(target.obj, {"lr": resolved_lr(spec), **args}, "optimizer.args",
                          positional=(params,), what=spec.target)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"`optimizer.target`: {spec.target} returned "
                          f"{type(optimizer).__name__}, not a torch.optim.Optimizer",
                          field="optimizer.target")
    return optimizer


# --- schedule ---------------------------------------------------------------------------------


class PythonScheduleSpec(ScheduleSpec, PythonTarget):
    """Your own schedule: an LRScheduler subclass, or a function (optimizer, total_steps,
    **args) returning one; stepped after every optimizer step."""


@SCHEDULES.register("python", spec=PythonScheduleSpec)
def build_python_schedule(spec: PythonScheduleSpec, optimizer: torch.optim.Optimizer,
                          ctx: ScheduleContext) -> Schedule:
    """Your own schedule, named by schedule.target, stepped after every optimizer step."""
    import torch

    target = load_target(spec.target, _root(spec), "schedule.target")
    facts = {"total_steps": ctx.total_steps, "steps_per_epoch": ctx.steps_per_epoch,
             "epochs": ctx.epochs}
    if inspect.isclass(target.obj):  # an LRScheduler: total_steps etc. where it names them
        scheduler = call_with(target.obj, spec.args, "schedule.args", facts,
                              positional=(optimizer,), what=spec.target)
    else:  # a function (optimizer, total_steps, **args)
        scheduler = call_with(target.obj, spec.args, "schedule.args",
                              {k: v for k, v in facts.items() if k != "total_steps"},
                              positional=(optimizer, ctx.total_steps), what=spec.target)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise ConfigError(f"`schedule.target`: {spec.target} returned "
                          f"{type(scheduler).__name__}, not a torch LRScheduler",
                          field="schedule.target")
    return Schedule(scheduler, "step")


# --- loss -------------------------------------------------------------------------------------


def load_loss(text: str, root: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The function ``train.loss`` names, checked to take (outputs, targets)."""
    target = load_target(text, root, "train.loss")
    fn = target.obj
    if not callable(fn):
        raise ConfigError(f"`train.loss`: {text} is {type(fn).__name__}, not a function "
                          "(outputs, targets) -> loss", field="train.loss")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise ConfigError(f"`train.loss`: {text}{inspect.signature(fn)} cannot be called as "
                          "loss(outputs, targets)", field="train.loss") from None
    except ValueError:  # no signature to check (a builtin): try it at the first step
        pass
    return fn


def _takes(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# --- data -------------------------------------------------------------------------------------


class PythonDataSpec(_SplitFractions, PythonTarget):
    """Your own data: a function (called with args) returning {train, valid, test}, each a pair
    of tensors (inputs, targets) or a map-style torch Dataset of (input, target) pairs (train
    may be a torch IterableDataset that streams: epochs of train.steps_per_epoch batches).  A
    missing valid or test split is carved from train (valid_fraction, test_fraction,
    split_seed); given splits are kept as they are.  Dataset items are read anew for every
    batch (augmentation stays random), unless ``cache: true`` reads them once into tensors;
    tensors stay in memory."""

    task: Task = Field(description="classification (targets: class ids), regression (targets: "
                       "numbers, [N] or [N, D]) or lm (inputs and targets: token ids)")
    valid_fraction: float = Field(default=0.15, ge=0.0, lt=1.0, description="share of train "
                                  "carved for validation when the function returns no valid")
    test_fraction: float = Field(default=0.15, ge=0.0, lt=1.0, description="share of train "
                                 "carved for test when the function returns no test")
    num_classes: int | None = Field(
        default=None, gt=0, description="classification: the number of classes (default: "
        "computed as the largest label + 1 over the splits, which reads every item of a "
        "Dataset once)")
    vocab_size: int | None = Field(
        default=None, gt=0, description="lm: the vocabulary size (default: computed as the "
        "largest token id + 1 over the splits); with token-id inputs for another task, passed "
        "to your model as vocab_size")
    cache: bool | None = Field(
        default=None, description="true: read every item of a Dataset split once, before "
        "training, into tensors in memory, batched by indexing as tensor pairs are (faster; "
        "items must share one shape; random augmentation in __getitem__ is then drawn once and "
        "frozen, which is why it is never automatic)", json_schema_extra={"run_id": "when set"})


@DATASETS.register("python", spec=PythonDataSpec)
def build_python_data(spec: PythonDataSpec) -> Dataset:
    """Your own data, from the function data.target names, called with data.args."""
    from trainlab.components.user_data import build_user_data

    target = load_target(spec.target, _root(spec), "data.target")
    if not callable(target.obj):
        raise ConfigError(f"`data.target`: {spec.target} is {type(target.obj).__name__}, not a "
                          "function returning {train, valid, test} splits", field="data.target")
    result = call_with(target.obj, spec.args, "data.args", what=spec.target)
    return build_user_data(result, spec)


__all__ = ["PythonDataSpec", "PythonModelSpec", "PythonOptimizerSpec", "PythonScheduleSpec",
           "PythonTarget", "build_python_data", "build_python_model", "build_python_optimizer",
           "build_python_schedule", "check_output", "data_facts", "load_loss", "with_source"]
