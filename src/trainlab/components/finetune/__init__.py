"""Fine-tuning strategies: which parameters train, with which learning rates, and when.

A strategy's builder takes the built model and the optimizer's base LR and returns a
:class:`FinetuneSetup`: the optimizer's parameter groups (each may carry its own ``lr`` and a
``name`` that the engine logs as ``lr/<name>``), engine callbacks (gradual unfreezing, for
example, changes ``requires_grad`` at epoch starts) and, when it wrapped the model (PEFT on a
trainlab model), the model to train instead.  One module per strategy registers itself in
:data:`FINETUNE` (defined in :mod:`.base`): ``full`` (the default), ``freeze_base``,
``discriminative_lr``, ``gradual_unfreeze``, ``adapter`` (Houlsby) and ``peft`` (lora,
prompt-tuning, prefix-tuning, ia3).
Layer groups (embeddings, blocks, head) come from ``layers``.
"""

from __future__ import annotations

# Importing a strategy's module registers it.
from trainlab.components.finetune import (
    adapter,
    discriminative_lr,
    freeze_base,
    full,
    gradual_unfreeze,
    peft,
)
from trainlab.components.finetune.base import FINETUNE, FinetuneSetup, build_finetune

__all__ = ["FINETUNE", "FinetuneSetup", "adapter", "build_finetune", "discriminative_lr",
           "freeze_base", "full", "gradual_unfreeze", "peft"]
