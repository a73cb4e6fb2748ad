"""``discriminative-lr``: one learning rate per layer group, lower for lower layers (ULMFiT).

The top group trains at the optimizer's LR; each group below at the LR of the one above
divided by ``decay`` (2.6, Howard & Ruder 2018), or, with ``mode: linear``, at LRs falling
linearly from the top's to ``min_factor`` times it at the bottom.  Schedules scale every
group's LR by the same factor, so the ratios hold throughout the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from trainlab.components.finetune.adapter import WithAdapter, maybe_adapters
from trainlab.components.finetune.base import FINETUNE, FinetuneSetup
from trainlab.components.finetune.layers import LayerGroup, WithLayerGroups, layer_groups

if TYPE_CHECKING:  # no torch where specs are validated
    from torch import nn


def group_factors(n: int, mode: str, decay: float, min_factor: float) -> list[float]:
    """LR factors of ``n`` groups, bottom to top (the top is 1)."""
    if mode == "geometric":
        return [decay ** -(n - 1 - i) for i in range(n)]
    if n == 1:
        return [1.0]
    return [min_factor + (1.0 - min_factor) * i / (n - 1) for i in range(n)]


def trainable_groups(groups: list[LayerGroup]) -> list[LayerGroup]:
    """The groups restricted to parameters that require a gradient (empty ones kept)."""
    out = []
    for g in groups:
        kept = LayerGroup(g.name)
        for name, p in zip(g.names, g.params):
            if p.requires_grad:
                kept.add(name, p)
        out.append(kept)
    return out


class DiscriminativeLRSpec(WithAdapter, WithLayerGroups):
    """Per layer-group learning rates, decaying from the head down."""

    decay: float = Field(default=2.6, ge=1.0, description="geometric: LR ratio between "
                                                           "neighbouring groups (ULMFiT: 2.6)")
    mode: Literal["geometric", "linear"] = "geometric"
    min_factor: float = Field(default=0.1, gt=0.0, le=1.0,
                              description="linear: the bottom group's LR / the top's")


@FINETUNE.register("discriminative-lr", spec=DiscriminativeLRSpec)
def build_discriminative_lr(spec: DiscriminativeLRSpec, model: nn.Module,
                            lr: float) -> FinetuneSetup:
    """Per layer-group LRs: geometric decay (ULMFiT's 2.6) or linear, from the head down."""
    maybe_adapters(spec, model)
    groups = trainable_groups(layer_groups(model, spec.groups))
    factors = group_factors(len(groups), spec.mode, spec.decay, spec.min_factor)
    return FinetuneSetup([{"params": g.params, "name": g.name, "lr": lr * f}
                          for g, f in zip(groups, factors) if g.params])
