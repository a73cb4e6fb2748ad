"""Optimizers: sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad (all from torch.optim).

``weight_decay`` is L2 added to the gradient for every optimizer except ``adamw``, where it is
decoupled from the adaptive step (Loshchilov & Hutter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import torch
from pydantic import Field, PositiveFloat

from trainlab.components.base import Spec
from trainlab.registry import Registry

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]
Builder = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: Registry[Builder] = Registry("optimizer")


class OptimizerSpec(Spec):
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(default=0.0, ge=0.0, description="L2 penalty")


def build_optimizer(spec: OptimizerSpec, params: Params) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(spec.name, field="optimizer.name").build(spec, params)


class SGDSpec(OptimizerSpec):
    """Stochastic gradient descent."""

    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)


class MomentumSpec(OptimizerSpec):
    momentum: float = Field(default=0.9, gt=0.0, lt=1.0)


@OPTIMIZERS.register("sgd", spec=SGDSpec)
def build_sgd(spec: SGDSpec, params: Params) -> torch.optim.Optimizer:
    """Plain SGD (momentum 0 unless set)."""
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                           weight_decay=spec.weight_decay)


@OPTIMIZERS.register("momentum", spec=MomentumSpec)
def build_momentum(spec: MomentumSpec, params: Params) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum (0.9 by default)."""
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                           weight_decay=spec.weight_decay)


@OPTIMIZERS.register("nesterov", spec=MomentumSpec)
def build_nesterov(spec: MomentumSpec, params: Params) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (0.9 by default)."""
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=True,
                           weight_decay=spec.weight_decay)


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class AdamSpec(OptimizerSpec):
    betas: tuple[Beta, Beta] = Field(default=(0.9, 0.999), description="each in [0, 1)")
    eps: PositiveFloat = 1e-8
    amsgrad: bool = False


@OPTIMIZERS.register("adam", spec=AdamSpec)
def build_adam(spec: AdamSpec, params: Params) -> torch.optim.Optimizer:
    """Adam; weight_decay is L2 added to the gradient."""
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                            weight_decay=spec.weight_decay, amsgrad=spec.amsgrad)


class AdamWSpec(AdamSpec):
    weight_decay: float = Field(default=0.01, ge=0.0, description="decoupled weight decay")


@OPTIMIZERS.register("adamw", spec=AdamWSpec)
def build_adamw(spec: AdamWSpec, params: Params) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay (0.01 by default, as torch)."""
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                             weight_decay=spec.weight_decay, amsgrad=spec.amsgrad)


class RMSpropSpec(OptimizerSpec):
    alpha: float = Field(default=0.99, gt=0.0, lt=1.0)
    eps: PositiveFloat = 1e-8
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)


@OPTIMIZERS.register("rmsprop", spec=RMSpropSpec)
def build_rmsprop(spec: RMSpropSpec, params: Params) -> torch.optim.Optimizer:
    """RMSprop."""
    return torch.optim.RMSprop(params, lr=spec.lr, alpha=spec.alpha, eps=spec.eps,
                               momentum=spec.momentum, weight_decay=spec.weight_decay)


class AdagradSpec(OptimizerSpec):
    eps: PositiveFloat = 1e-10
    lr_decay: float = Field(default=0.0, ge=0.0)


@OPTIMIZERS.register("adagrad", spec=AdagradSpec)
def build_adagrad(spec: AdagradSpec, params: Params) -> torch.optim.Optimizer:
    """Adagrad."""
    return torch.optim.Adagrad(params, lr=spec.lr, eps=spec.eps, lr_decay=spec.lr_decay,
                               weight_decay=spec.weight_decay)
