"""The stacked step's fast path: models made only of ``Flatten``, ``Linear`` and elementwise
activations (the built-in ``mlp`` and ``linear``) run as batched matmuls with ordinary autograd,
without ``vmap``.

``vmap(functional_call)`` batches any model, but on a small model its per-op dispatch is a
large share of the step, and torch's ``bmm`` backward hands the weight gradient back transposed,
which autograd then copies into the parameter's layout (about 30 % of a stacked digits-MLP step
on this CPU).  :class:`_StackedLinear` computes each gradient in its parameter's own layout and
skips the input gradient of the first layer.  The loss is computed batched too: one
cross-entropy (or squared error) over the ``N x B`` rows, averaged per model, so each model's
gradient is its solo run's (``1 / B`` per example).  Equal to the vmap path to float rounding;
the stack's trial step checks its losses against each model's own before using it
(:mod:`trainlab.engine.stack`), and needs no vmap then.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Layers that act on each element alone: the same module runs on a stacked tensor unchanged.
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Identity)


class _StackedLinear(torch.autograd.Function):
    """``x @ w.T + b`` for N models at once: x ``[N, R, in]``, w ``[N, out, in]``, b
    ``[N, out]``; gradients in the parameters' own layout (no copy in autograd)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        if b is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = torch.bmm(grad, w) if need_x else None
        gw = torch.bmm(grad.transpose(1, 2), x) if need_w else None
        gb = grad.sum(1) if need_b and ctx.has_bias else None
        return gx, gw, gb


class LinearChain:
    """A ``Sequential`` of ``Flatten``/``Linear``/elementwise layers, run on stacked weights."""

    def __init__(self, ops: list[tuple[str, Any]]) -> None:
        self.ops = ops

    @classmethod
    def of(cls, model: nn.Module) -> LinearChain | None:
        """The chain of ``model``, or None when it is anything else (it then goes by vmap)."""
        if type(model) is not nn.Sequential or any(True for _ in model.buffers()):
            return None
        ops: list[tuple[str, Any]] = []
        for name, layer in model.named_children():
            if type(layer) is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1:
                ops.append(("flatten", None))
            elif type(layer) is nn.Linear:
                ops.append(("linear", (f"{name}.weight",
                                       f"{name}.bias" if layer.bias is not None else None)))
            elif type(layer) in _ELEMENTWISE:
                ops.append(("act", layer))
            else:
                return None
        return cls(ops) if any(kind == "linear" for kind, _ in ops) else None

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs ``[N, B, ...]`` of the N models on inputs ``x`` ``[N, B, ...]``."""
        n = x.shape[0]
        for kind, op in self.ops:
            if kind == "flatten":
                x = x.flatten(2)
            elif kind == "linear":
                w = params[op[0]]
                b = params[op[1]] if op[1] is not None else None
                lead = x.shape[1:-1]
                y = _StackedLinear.apply(x.reshape(n, -1, x.shape[-1]), w, b)
                x = y.reshape(n, *lead, w.shape[1])
            else:
                x = op(x)
        return x


def batched_loss(task: str, out: Tensor, y: Tensor) -> Tensor | None:
    """Each model's mean training loss ``[N]`` from outputs ``[N, B, ...]`` and targets
    ``[N, B, ...]``, as the task's own loss (cross-entropy or squared error) of each model
    would give it; None when the shapes are not the plain ones (the vmap path then)."""
    n = out.shape[0]
    if task == "classification" and out.dim() == 3 and y.dim() == 2:
        rows = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return rows.view(n, -1).mean(1)
    if task == "regression" and out.shape == y.shape:
        return F.mse_loss(out, y, reduction="none").reshape(n, -1).mean(1)
    return None


def stacked_grad_norms(params: Iterable[Tensor], n: int, device: torch.device) -> Tensor:
    """Each model's global L2 gradient norm ``[N]`` from stacked gradients ``[N, ...]``, left
    on the device (no host sync): per tensor a norm over all but the model dimension, then
    the norm of those, as :func:`trainlab.engine.measure.grad_norm` of each solo run.  No
    gradient at all: zeros."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(n, device=device)
    per_tensor = torch.stack([torch.linalg.vector_norm(g.reshape(n, -1), 2.0, dim=1)
                              for g in grads])  # [tensors, N]
    return torch.linalg.vector_norm(per_tensor, 2.0, dim=0)
