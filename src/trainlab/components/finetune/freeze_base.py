"""``freeze-base``: train the head only (the top layer group, or the top N)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt

from trainlab.components.finetune.base import FINETUNE, FinetuneSetup
from trainlab.components.finetune.layers import WithLayerGroups, layer_groups
from trainlab.errors import ConfigError

if TYPE_CHECKING:  # no torch where specs are validated
    from torch import nn


class FreezeBaseSpec(WithLayerGroups):
    """Freeze everything but the top layer group(s)."""

    train_groups: PositiveInt = Field(default=1, description="top layer groups that train")


@FINETUNE.register("freeze-base", spec=FreezeBaseSpec)
def build_freeze_base(spec: FreezeBaseSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    """Train the head only (the top train_groups layer groups); the rest is frozen."""
    groups = layer_groups(model, spec.groups)
    if spec.train_groups >= len(groups):
        raise ConfigError(
            f"`finetune.train_groups`: {spec.train_groups} would train all {len(groups)} layer "
            f"groups ({', '.join(g.name for g in groups)}); use fewer, or finetune.name: full",
            field="finetune.train_groups")
    top = groups[-spec.train_groups:]
    trained = {id(p) for g in top for p in g.params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return FinetuneSetup([{"params": g.params, "name": g.name} for g in top])
