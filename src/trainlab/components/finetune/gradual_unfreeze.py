"""``gradual-unfreeze``: train the top layer group first, one more group each epoch (ULMFiT).

Frozen groups have ``requires_grad`` off, so autograd computes no gradient for them (and,
below the lowest trainable layer, does not backpropagate at all); the optimizer skips them.
The callback sets the groups at each epoch start from the epoch number alone, and keeps the
count in its state, so a resumed run continues the same schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field, PositiveInt

from trainlab.components.finetune.adapter import WithAdapter, maybe_adapters
from trainlab.components.finetune.base import FINETUNE, FinetuneSetup
from trainlab.components.finetune.discriminative_lr import group_factors, trainable_groups
from trainlab.components.finetune.layers import WithLayerGroups, layer_groups
from trainlab.hooks import Callback

if TYPE_CHECKING:  # no torch where specs are validated
    from torch import nn

    from trainlab.hooks import RunState


class GradualUnfreeze(Callback):
    """Unfreeze one more layer group (from the top) every ``every`` epochs."""

    def __init__(self, groups: Sequence[Sequence[nn.Parameter]], names: Sequence[str],
                 every: int) -> None:
        self.groups = [list(g) for g in groups]
        self.names = list(names)
        self.every = every
        self.unfrozen = 0
        self.apply(1)

    def count_at(self, epoch: int) -> int:
        """How many groups (from the top) train in ``epoch`` (1-based)."""
        return min(len(self.groups), 1 + (max(epoch, 1) - 1) // self.every)

    def apply(self, unfrozen: int) -> None:
        self.unfrozen = unfrozen
        first = len(self.groups) - unfrozen
        for i, params in enumerate(self.groups):
            for p in params:
                p.requires_grad_(i >= first)

    def on_epoch_start(self, state: RunState) -> None:
        self.apply(self.count_at(state.epoch))

    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen": self.unfrozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.apply(int(state.get("unfrozen", 1)))


class GradualUnfreezeSpec(WithAdapter, WithLayerGroups):
    """Start with the head; unfreeze one more layer group every `every` epochs."""

    every: PositiveInt = Field(default=1, description="epochs between unfreezing steps")
    decay: float | None = Field(
        default=None, ge=1.0, description="also discriminative LRs with this geometric decay "
                                          "(full ULMFiT: 2.6); default: one LR")


@FINETUNE.register("gradual-unfreeze", spec=GradualUnfreezeSpec)
def build_gradual_unfreeze(spec: GradualUnfreezeSpec, model: nn.Module,
                           lr: float) -> FinetuneSetup:
    """One more layer group unfrozen per epoch from the top (ULMFiT); frozen ones get no grads."""
    maybe_adapters(spec, model)
    groups = [g for g in trainable_groups(layer_groups(model, spec.groups)) if g.params]
    factors = (group_factors(len(groups), "geometric", spec.decay, 1.0) if spec.decay
               else [1.0] * len(groups))
    callback = GradualUnfreeze([g.params for g in groups], [g.name for g in groups],
                               spec.every)
    return FinetuneSetup([{"params": g.params, "name": g.name, "lr": lr * f}
                          for g, f in zip(groups, factors)], [callback])
