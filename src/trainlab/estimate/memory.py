"""Memory of a training step, by parts: parameters, gradients, optimizer state, activations.

Parameter, gradient and optimizer-state bytes are exact (counted from the model and the
optimizer's update rule).  Activations come from tracing one forward and backward pass on the
meta device (no memory, no time).  The trace counts tensors, not
library workspaces or allocator overhead, so on CPU it undercounts a real step by 25-40 % on
LSTMs and transformers; the calibration probe (see ``probe.py``) measures the real thing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainlab.components import DataInfo, build_finetune, build_model
from trainlab.components.finetune.base import FinetuneSpec
from trainlab.components.models import ModelSpec
from trainlab.components.optimizers import OptimizerSpec, no_dynamo_import


@dataclass(frozen=True)
class StateBytes:
    params: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(optimizer: OptimizerSpec, trainable: list[torch.Tensor]) -> int:
    """Bytes of the optimizer's state once it has stepped, from its update rule.

    Adam/AdamW keep two moments (three with amsgrad), Adagrad a sum, RMSprop a square average
    (plus a momentum buffer), SGD a momentum buffer when momentum > 0; the adaptive ones also
    keep one float32 step counter per parameter tensor.
    """
    size, count = _bytes(trainable), len(trainable)
    name = optimizer.name
    momentum = float(getattr(optimizer, "momentum", 0.0) or 0.0)
    if name in ("sgd", "momentum", "nesterov"):
        return size if momentum > 0 else 0
    step = 4 * count
    if name in ("adam", "adamw"):
        return (3 if getattr(optimizer, "amsgrad", False) else 2) * size + step
    if name == "rmsprop":
        return size * (2 if momentum > 0 else 1) + step
    if name == "adagrad":
        return size + step
    return 2 * size + step  # an unknown optimizer: assume Adam-like


def state_bytes(model: nn.Module, optimizer: OptimizerSpec,
                trainable: list[torch.Tensor]) -> StateBytes:
    params = _bytes(list({id(p): p for p in model.parameters()}.values()))
    buffers = _bytes(list(model.buffers()))
    grads = _bytes(trainable)
    return StateBytes(params + buffers, grads, optimizer_state_bytes(optimizer, trainable))


def trace(model_spec: ModelSpec, finetune: FinetuneSpec, info: DataInfo, batch_size: int,
          lr: float = 1e-3, device: str = "meta") -> dict[str, int] | None:
    """Peak bytes by category of one forward and backward pass, traced on the meta device
    (``device="cpu"``: run for real on the CPU, for a small model: the meta kernels' dtype
    rules import sympy, 1-2 s of a process that otherwise never needs it; call it under a
    forked RNG, as the model's init draws from it).

    Returns ``{"params", "grads", "activations", "peak"}`` (activations: what the forward pass
    keeps for the backward pass, its output included), or None when the model cannot be
    traced (an op without a meta kernel).  Counted by the engine's own storage tracker
    (:class:`~trainlab.engine.measure.TensorTracker`), not torch's ``MemTracker``, whose
    import (``torch.distributed._tools``: DTensor, inductor) costs about 2 s a process.
    """
    try:
        # A trace that fails makes torch warn from inside hooks; reported as "not traced".
        # The meta kernels are marked not-to-compile, which would import torch._dynamo.
        with warnings.catch_warnings(), no_dynamo_import():
            warnings.simplefilter("ignore")
            return _trace(model_spec, finetune, info, batch_size, lr, torch.device(device))
    except Exception:
        return None


def _trace(model_spec: ModelSpec, finetune: FinetuneSpec, info: DataInfo, batch_size: int,
           lr: float, meta: torch.device) -> dict[str, int]:
    from trainlab.engine.measure import TensorTracker, storage_bytes

    with meta:
        model = build_model(model_spec, info)
        # Freezes what the strategy freezes; adapters / PEFT wrap or extend the model.
        model = build_finetune(finetune, model, lr).model or model
        x = info.example_batch(batch_size)
    weights = storage_bytes([*model.parameters(), *model.buffers()], meta)
    tracker = TensorTracker(meta, [*model.parameters(), *model.buffers(), *_tensors(x)])
    with tracker:
        out = model(x).float().sum()
        # After the forward pass, every tensor kept for the backward pass is alive.
        activations = tracker.live - tracker.start
        out.backward()
    grads = storage_bytes([p.grad for p in model.parameters() if p.grad is not None], meta)
    return {"params": weights, "grads": grads, "activations": activations,
            "peak": tracker.peak}


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a batch: a tensor, or a mapping / sequence of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []
