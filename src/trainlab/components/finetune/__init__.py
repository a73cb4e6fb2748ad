"""Fine-tuning strategies: which parameters train, with which learning rates, and when.

A strategy's builder takes the built model and the optimizer's base LR and returns a
:class:`FinetuneSetup`: the optimizer's parameter groups (each may carry its own ``lr`` and a
``name`` that the engine logs as ``lr/<name>``), engine callbacks (gradual unfreezing, for
example, changes ``requires_grad`` at epoch starts) and, when it wrapped the model (PEFT on a
trainlab model), the model to train instead.  One module per strategy registers itself in
:data:`FINETUNE`: ``full`` here; ``freeze_base``, ``discriminative_lr``, ``gradual_unfreeze``,
``adapter`` (Houlsby) and ``peft`` (lora, prompt-tuning, prefix-tuning, ia3) beside it.
Layer groups (embeddings, blocks, head) come from ``layers``.
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
    model: nn.Module | None = None  # the model to train, when the strategy wrapped it


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


# Each strategy module registers itself on import (after FINETUNE exists).
from trainlab.components.finetune import (  # noqa: E402
    adapter,
    discriminative_lr,
    freeze_base,
    gradual_unfreeze,
    peft,
)

__all__ = ["FINETUNE", "FinetuneSetup", "adapter", "build_finetune", "discriminative_lr",
           "freeze_base", "gradual_unfreeze", "peft"]
