"""Memory of a training step, by parts: parameters, gradients, optimizer state, activations.

Parameter, gradient and optimizer-state bytes are exact (counted from the model and the
optimizer's update rule).  Activations come from tracing one forward and backward pass on the
meta device with torch's ``MemTracker`` (no memory, no time).  The trace counts tensors, not
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
from trainlab.components.optimizers import OptimizerSpec


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
          lr: float = 1e-3) -> dict[str, int] | None:
    """Peak bytes by category of one forward and backward pass, traced on the meta device.

    Returns ``{"params", "grads", "activations", "peak"}`` (activations: what the forward pass
    keeps for the backward pass), or None when the model cannot be traced (an op without a
    meta kernel).
    """
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # a torch without it
        return None
    try:
        # A trace that fails (frozen parameters: MemTracker hooks every parameter's gradient)
        # makes torch warn from inside its hooks; the failure is reported as "not traced".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _trace(MemTracker, model_spec, finetune, info, batch_size, lr)
    except Exception:
        return None


def _trace(tracker_type: Any, model_spec: ModelSpec, finetune: FinetuneSpec, info: DataInfo,
           batch_size: int, lr: float) -> dict[str, int]:
    with torch.device("meta"):
        model = build_model(model_spec, info)
        # Freezes what the strategy freezes; adapters / PEFT wrap or extend the model.
        model = build_finetune(finetune, model, lr).model or model
        x = info.example_batch(batch_size)
    tracker = tracker_type()
    tracker.track_external(model)
    with tracker:
        out = model(x).float().sum()
        # After the forward pass, every tensor kept for the backward pass is alive.
        forward = _parts(tracker.get_tracker_snapshot())
        out.backward()
    peak = _parts(tracker.get_tracker_snapshot("peak"))
    return {"params": peak.get("PARAM", 0) + peak.get("BUFFER", 0),
            "grads": peak.get("GRAD", 0), "activations": forward.get("ACT", 0),
            "peak": peak.get("Total", 0)}


def _parts(snapshot: Mapping[Any, Mapping[Any, int]]) -> dict[str, int]:
    """A MemTracker snapshot of the (one) device, keyed by category name."""
    return {str(k).rsplit(".", 1)[-1]: int(v) for k, v in next(iter(snapshot.values())).items()}
