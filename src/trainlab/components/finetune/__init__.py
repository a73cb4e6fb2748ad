"""Fine-tuning strategies: which parameters train, with which learning rates, and when.

A strategy's builder takes the built model and the optimizer's base LR and returns a
:class:`FinetuneSetup`: the optimizer's parameter groups (each may carry its own ``lr`` and a
``name`` that the engine logs as ``lr/<name>``) and engine callbacks (gradual unfreezing, for
example, changes ``requires_grad`` at epoch starts).  One module per strategy registers itself
in :data:`FINETUNE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from trainlab.components.base import Spec
from trainlab.registry import Registry


@dataclass
class FinetuneSetup:
    """What a strategy hands the engine."""

    param_groups: list[dict[str, Any]]
    callbacks: list[Any] = field(default_factory=list)  # trainlab.engine.Callback instances


Builder = Callable[..., FinetuneSetup]
FINETUNE: Registry[Builder] = Registry("fine-tuning strategy")


def build_finetune(spec: Spec, model: nn.Module, lr: float) -> FinetuneSetup:
    return FINETUNE.get(spec.name, field="finetune.name").build(spec, model, lr)


class FullSpec(Spec):
    """Train every parameter with the optimizer's learning rate."""


@FINETUNE.register("full", spec=FullSpec)
def build_full(spec: FullSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    """Train every parameter that requires a gradient, at the optimizer's LR (the default)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return FinetuneSetup([{"params": params, "name": "all"}])
