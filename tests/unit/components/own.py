"""Own code the component tables build by target ("tests.unit.components.own:Name")."""

from __future__ import annotations

import math

from torch import nn

# What a `python` entry needs beyond its name, for tables over every registered component.
OWN_SPECS = {"optimizer": {"python": {"target": "torch.optim:SGD"}},
             "schedule": {"python": {"target": "torch.optim.lr_scheduler:StepLR",
                                     "args": {"step_size": 5}}}}


def classifier(input_shape: tuple[int, ...], num_classes: int, hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class LanguageModel(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, tokens):  # type: ignore[no-untyped-def]
        return self.out(self.embed(tokens))
