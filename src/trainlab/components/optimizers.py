"""Optimizers: sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad (all from torch.optim).

``weight_decay`` is L2 added to the gradient for every optimizer except ``adamw``, where it is
decoupled from the adaptive step (Loshchilov & Hutter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import Field, PositiveFloat, field_validator

from trainlab.components.base import Spec
from trainlab.errors import ConfigError, RunError
from trainlab.registry import Registry

if TYPE_CHECKING:  # torch is imported where an optimizer is built, not where specs are validated
    import torch

Params: TypeAlias = "Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]"
Builder: TypeAlias = "Callable[..., torch.optim.Optimizer]"


class OptimizerSpec(Spec):
    lr: float | Literal["auto"] = Field(
        default=1e-3, description="learning rate, or auto: an LR range test picks it")
    weight_decay: float = Field(default=0.0, ge=0.0, description="L2 penalty")
    fused: Literal["auto"] | bool = Field(
        default="auto", description="fused kernels (auto: on where they change weights only "
        "at float rounding: adam, adamw, adagrad, plain sgd); else foreach")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_positive_or_auto(cls, value: Any) -> Any:
        if value == "auto":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number greater than 0, or auto (an LR range test "
                             "picks it)") from None
        if isinstance(value, bool) or not number > 0:
            raise ValueError("must be greater than 0 (or auto: an LR range test picks it)")
        return number


OPTIMIZERS: Registry[Builder] = Registry("optimizer", base=OptimizerSpec)


@contextmanager
def no_dynamo_import() -> Iterator[None]:
    """Run the block without importing ``torch._dynamo`` (0.8-3 s a process) unless it is
    really used.

    Eager PyTorch imports the compiler only to say "do not compile this": torch marks many
    of its own functions with ``torch._disable_dynamo`` (``Optimizer.add_param_group`` and
    ``zero_grad``, a dispatch mode's handler, the Python meta kernels of a meta-device trace),
    which imports ``torch._dynamo`` on the function's first call only to wrap it, and every
    ``Optimizer.step`` imports it to call ``graph_break()``, which does nothing outside a
    compiled region.  For the block's duration ``torch._dynamo`` is a stand-in whose
    ``disable`` returns the function itself and whose ``graph_break`` does nothing; asked for
    anything else (an attribute, a submodule: ``torch.compile``, DDP's compiled-mode checks),
    it imports the real module then and gets out of the way, and the functions it marked are
    unmarked so torch does as it would have.  The marks are removed when the block ends too.
    Not for blocks that compile (``train.compile``): those import the real module anyway."""
    import importlib
    import sys
    import types

    import torch

    if "torch._dynamo" in sys.modules:
        yield
        return
    marked: list[Callable[..., Any]] = []
    stand_in = types.ModuleType("torch._dynamo", "a stand-in: see trainlab's no_dynamo_import")

    def unmark() -> None:
        for fn in marked:
            if getattr(fn, "__dynamo_disable", None) is fn:
                with suppress(AttributeError):
                    delattr(fn, "__dynamo_disable")
        marked.clear()

    def leave() -> None:
        if sys.modules.get("torch._dynamo") is stand_in:
            del sys.modules["torch._dynamo"]
        if torch.__dict__.get("_dynamo") is stand_in:
            del torch._dynamo
        unmark()

    def real(name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name != "__path__":
            raise AttributeError(name)  # what tools probe modules for: no import for that
        leave()  # the real module from now on
        return getattr(importlib.import_module("torch._dynamo"), name)

    def disable(fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
        if fn is None or isinstance(fn, type) or sys.modules.get("torch._dynamo") is not stand_in:
            return real("disable")(fn, recursive, **kwargs)
        marked.append(fn)
        return fn

    def graph_break(*_: Any, **__: Any) -> None:  # outside a compiled region: nothing
        return None

    for name, value in (("disable", disable), ("graph_break", graph_break),
                        ("__getattr__", real), ("__file__", None)):
        setattr(stand_in, name, value)
    sys.modules["torch._dynamo"] = stand_in
    torch._dynamo = stand_in  # as an import would set it
    try:
        yield
    finally:
        leave()


def build_optimizer(spec: OptimizerSpec, params: Params) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(spec.name, field="optimizer.name").build(spec, params)


def _device_of(params: Params) -> torch.device | None:
    for item in params:
        tensors = item["params"] if isinstance(item, dict) else [item]
        for p in tensors:
            return p.device
    return None


def _kernels(spec: OptimizerSpec, params: Params, *, exact: bool,
             fused_exists: bool = True) -> dict[str, bool]:
    """``fused=True`` or ``foreach=True`` for the torch optimizer.

    ``exact``: whether the fused kernel changes weights only at float rounding (measured:
    Adam after 300 steps differs by < 1e-7; SGD with momentum matches per step but training
    amplifies the rounding to ~3e-5 over 300 steps, so auto leaves it off).
    """
    plist: list[Any] = list(params)
    device = _device_of(plist)
    supported = ("cpu", "cuda", "mps", "xpu")
    usable = fused_exists and device is not None and device.type in supported
    if spec.fused is True:
        if not fused_exists:
            raise ConfigError(f"`optimizer.fused`: {spec.name} has no fused kernel; use auto or "
                              "false", field="optimizer.fused")
        return {"fused": True} if usable else {}
    if spec.fused == "auto" and exact and usable:
        return {"fused": True}
    # foreach: one kernel per op over all tensors (torch's own default on CUDA).
    return {"foreach": True} if device is not None and device.type != "meta" else {}


def is_auto(spec: Any) -> bool:
    """Whether an optimizer spec leaves its learning rate to the LR range test."""
    return getattr(spec, "lr", None) == "auto"


def with_lr(spec: OptimizerSpec, lr: float) -> OptimizerSpec:
    """The same optimizer spec with a concrete learning rate (``lr: auto`` resolved)."""
    return spec.model_copy(update={"lr": float(lr)})


def resolved_lr(spec: OptimizerSpec) -> float:
    """The LR as a number; `auto` must have been resolved by the LR range test before."""
    if spec.lr == "auto":
        raise RunError("optimizer.lr is 'auto' and was not resolved: `trainlab run` runs the LR "
                       "range test first; from Python use trainlab.lr.study.resolve_auto_lr")
    return spec.lr


class SGDSpec(OptimizerSpec):
    """Stochastic gradient descent."""

    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)


class MomentumSpec(OptimizerSpec):
    momentum: float = Field(default=0.9, gt=0.0, lt=1.0)


@OPTIMIZERS.register("sgd", spec=SGDSpec)
def build_sgd(spec: SGDSpec, params: Params) -> torch.optim.Optimizer:
    """Plain SGD (momentum 0 unless set)."""
    import torch

    plist: list[Any] = list(params)
    return torch.optim.SGD(plist, lr=resolved_lr(spec), momentum=spec.momentum,
                           weight_decay=spec.weight_decay,
                           **_kernels(spec, plist, exact=spec.momentum == 0.0))


@OPTIMIZERS.register("momentum", spec=MomentumSpec)
def build_momentum(spec: MomentumSpec, params: Params) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum (0.9 by default)."""
    import torch

    plist: list[Any] = list(params)
    return torch.optim.SGD(plist, lr=resolved_lr(spec), momentum=spec.momentum,
                           weight_decay=spec.weight_decay, **_kernels(spec, plist, exact=False))


@OPTIMIZERS.register("nesterov", spec=MomentumSpec)
def build_nesterov(spec: MomentumSpec, params: Params) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (0.9 by default)."""
    import torch

    plist: list[Any] = list(params)
    return torch.optim.SGD(plist, lr=resolved_lr(spec), momentum=spec.momentum, nesterov=True,
                           weight_decay=spec.weight_decay, **_kernels(spec, plist, exact=False))


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class AdamSpec(OptimizerSpec):
    betas: tuple[Beta, Beta] = Field(default=(0.9, 0.999), description="each in [0, 1)")
    eps: PositiveFloat = 1e-8
    amsgrad: bool = False


@OPTIMIZERS.register("adam", spec=AdamSpec)
def build_adam(spec: AdamSpec, params: Params) -> torch.optim.Optimizer:
    """Adam; weight_decay is L2 added to the gradient."""
    import torch

    plist: list[Any] = list(params)
    return torch.optim.Adam(plist, lr=resolved_lr(spec), betas=spec.betas, eps=spec.eps,
                            weight_decay=spec.weight_decay, amsgrad=spec.amsgrad,
                            **_kernels(spec, plist, exact=True))


class AdamWSpec(AdamSpec):
    weight_decay: float = Field(default=0.01, ge=0.0, description="decoupled weight decay")


@OPTIMIZERS.register("adamw", spec=AdamWSpec)
def build_adamw(spec: AdamWSpec, params: Params) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay (0.01 by default, as torch)."""
    import torch

    plist: list[Any] = list(params)
    return torch.optim.AdamW(plist, lr=resolved_lr(spec), betas=spec.betas, eps=spec.eps,
                             weight_decay=spec.weight_decay, amsgrad=spec.amsgrad,
                             **_kernels(spec, plist, exact=True))


class RMSpropSpec(OptimizerSpec):
    alpha: float = Field(default=0.99, gt=0.0, lt=1.0)
    eps: PositiveFloat = 1e-8
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)


@OPTIMIZERS.register("rmsprop", spec=RMSpropSpec)
def build_rmsprop(spec: RMSpropSpec, params: Params) -> torch.optim.Optimizer:
    """RMSprop (no fused kernel in torch: foreach)."""
    import torch

    plist: list[Any] = list(params)
    return torch.optim.RMSprop(plist, lr=resolved_lr(spec), alpha=spec.alpha, eps=spec.eps,
                               momentum=spec.momentum, weight_decay=spec.weight_decay,
                               **_kernels(spec, plist, exact=False, fused_exists=False))


class AdagradSpec(OptimizerSpec):
    eps: PositiveFloat = 1e-10
    lr_decay: float = Field(default=0.0, ge=0.0)


@OPTIMIZERS.register("adagrad", spec=AdagradSpec)
def build_adagrad(spec: AdagradSpec, params: Params) -> torch.optim.Optimizer:
    """Adagrad."""
    import torch

    plist: list[Any] = list(params)
    return torch.optim.Adagrad(plist, lr=resolved_lr(spec), eps=spec.eps, lr_decay=spec.lr_decay,
                               weight_decay=spec.weight_decay, **_kernels(spec, plist, exact=True))
