"""``full``: the default strategy, every parameter trains at the optimizer's LR."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainlab.components.finetune.base import FINETUNE, FinetuneSetup, FinetuneSpec

if TYPE_CHECKING:  # no torch where specs are validated
    from torch import nn


class FullSpec(FinetuneSpec):
    """Train every parameter with the optimizer's learning rate."""


@FINETUNE.register("full", spec=FullSpec)
def build_full(spec: FullSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    """Train every parameter that requires a gradient, at the optimizer's LR (the default)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return FinetuneSetup([{"params": params, "name": "all"}])
