"""The fine-tuning registry and what a strategy hands the engine.

Strategy modules import this module (never their package) and register themselves in
:data:`FINETUNE`, as PEFT's tuners do; :mod:`trainlab.components.finetune` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainlab.components.base import Spec
from trainlab.hooks import Callback
from trainlab.registry import Registry

if TYPE_CHECKING:  # no torch where specs are validated
    from torch import nn


@dataclass
class FinetuneSetup:
    """What a strategy hands the engine."""

    param_groups: list[dict[str, Any]]
    callbacks: list[Callback] = field(default_factory=list)
    model: nn.Module | None = None  # the model to train, when the strategy wrapped it


Builder = Callable[..., FinetuneSetup]


class FinetuneSpec(Spec):
    """Options of a fine-tuning strategy; each strategy adds its own."""


FINETUNE: Registry[Builder] = Registry("fine-tuning strategy", base=FinetuneSpec)


def build_finetune(spec: FinetuneSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    return FINETUNE.get(spec.name, field="finetune.name").build(spec, model, lr)
