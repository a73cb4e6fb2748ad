"""The adapter module itself, apart from its spec (:mod:`.adapter`): validating a config
imports no torch; only inserting adapters into a model imports this."""

from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Bottleneck adapter: ``h + up(gelu(down(h)))``, near identity at initialisation."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.act = nn.GELU()
        for layer in (self.down, self.up):
            nn.init.normal_(layer.weight, std=1e-2)  # small: the block starts as it was
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


__all__ = ["Adapter"]
