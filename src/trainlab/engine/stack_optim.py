"""Optimizers over stacked weights: N models' SGD, momentum, Nesterov, Adam or AdamW as tensor
math on ``[N, ...]`` parameters, each model with its own hyperparameters.

The formulas are torch.optim's single-tensor ones (``torch/optim/sgd.py``, ``adam.py``; the
foreach path computes the same values), op for op: a hyperparameter every model shares is passed
as the same Python scalar torch passes, and one that differs becomes a ``[N, 1, ...]`` vector in
the op of the same rounding (``addcmul`` with a vector rounds as ``add`` with ``alpha`` does).
torch's fused CPU Adam rounds differently (~1e-7 a step); the stacked forward's batched matmuls
round differently from one model's too, so a stacked run equals its solo run to float rounding,
not bit for bit (tests/unit/engine/test_stack.py measures it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from trainlab.components.optimizers import OptimizerSpec


def _same(values: Sequence[float]) -> bool:
    return all(v == values[0] for v in values)


class StackedOptimizer:
    """One optimizer step for N stacked models; ``step(lrs)`` takes this step's LR of each."""

    def __init__(self, specs: Sequence[OptimizerSpec], params: dict[str, Tensor]) -> None:
        self.name = specs[0].name
        if any(s.name != self.name for s in specs):
            raise ValueError("a stack holds one kind of optimizer")
        self.params = list(params.values())
        self.n = len(specs)
        self.device = self.params[0].device
        self.wd = [float(s.weight_decay) for s in specs]
        self.momentum = [float(getattr(s, "momentum", 0.0)) for s in specs]
        betas = [getattr(s, "betas", (0.9, 0.999)) for s in specs]
        self.beta1 = [float(b[0]) for b in betas]
        self.beta2 = [float(b[1]) for b in betas]
        self.eps = [float(getattr(s, "eps", 1e-8)) for s in specs]
        self.adam = self.name in ("adam", "adamw")
        self.step_count = 0
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]
        self._views: dict[tuple[int, tuple[float, ...]], Tensor] = {}

    def _vec(self, values: Sequence[float], dim: int) -> float | Tensor:
        """A shared value as the scalar torch uses; per-model values as ``[N, 1, ...]``."""
        if _same(values):
            return values[0]
        key = (dim, tuple(values))
        if key not in self._views:
            self._views[key] = torch.tensor(values, dtype=torch.float32, device=self.device
                                            ).view(-1, *[1] * (dim - 1))
        return self._views[key]

    def step(self, lrs: Sequence[float]) -> None:
        self.step_count += 1
        with torch.no_grad():
            if self.adam:
                self._adam(lrs)
            else:
                self._sgd(lrs)

    def _sgd(self, lrs: Sequence[float]) -> None:
        nesterov = self.name == "nesterov"
        use_momentum = any(m != 0.0 for m in self.momentum)
        for p, state in zip(self.params, self.state):
            grad = p.grad
            if grad is None:
                continue
            dim = p.dim()
            if any(w != 0.0 for w in self.wd):
                wd = self._vec(self.wd, dim)
                # In place: the trainer drops each gradient after the step (saves an
                # allocation of every weight's size per step).
                grad = (grad.add_(p, alpha=wd) if isinstance(wd, float)
                        else grad.addcmul_(p, wd))
            if use_momentum:
                mom = self._vec(self.momentum, dim)
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    buf.mul_(mom).add_(grad)  # dampening 0, as trainlab builds SGD
                if nesterov:
                    grad = grad.add(buf, alpha=mom) if isinstance(mom, float) else (
                        grad.addcmul(buf, mom))
                else:
                    grad = buf
            neg = self._vec([-lr for lr in lrs], dim)
            if isinstance(neg, float):
                p.add_(grad, alpha=neg)
            else:
                p.addcmul_(grad, neg)

    def _adam(self, lrs: Sequence[float]) -> None:
        decoupled = self.name == "adamw"
        step = self.step_count
        # Bias corrections as torch computes them: Python floats (double) per model.
        bc1 = [1 - b ** step for b in self.beta1]
        bc2_sqrt = [math.sqrt(1 - b ** step) for b in self.beta2]
        neg_step = [-(lr / c) for lr, c in zip(lrs, bc1)]
        shrink = [1 - lr * w for lr, w in zip(lrs, self.wd)]
        one_minus_b1 = [1 - b for b in self.beta1]
        one_minus_b2 = [1 - b for b in self.beta2]
        has_wd = any(w != 0.0 for w in self.wd)
        for p, state in zip(self.params, self.state):
            grad = p.grad
            if grad is None:
                continue
            dim = p.dim()
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            if has_wd:
                if decoupled:
                    p.mul_(self._vec(shrink, dim))
                else:
                    wd = self._vec(self.wd, dim)
                    grad = (grad.add_(p, alpha=wd) if isinstance(wd, float)
                            else grad.addcmul_(p, wd))  # in place, as in _sgd
            exp_avg.lerp_(grad, self._vec(one_minus_b1, dim))
            b2 = self._vec(self.beta2, dim)
            c2 = self._vec(one_minus_b2, dim)
            exp_avg_sq.mul_(b2)
            if isinstance(c2, float):
                exp_avg_sq.addcmul_(grad, grad, value=c2)
            else:
                exp_avg_sq.addcmul_(c2 * grad, grad)  # value * t1 * t2, in torch's order
            denom = exp_avg_sq.sqrt().div_(self._vec(bc2_sqrt, dim)).add_(
                self._vec(self.eps, dim))
            neg = self._vec(neg_step, dim)
            if isinstance(neg, float):
                p.addcdiv_(exp_avg, denom, value=neg)
            else:
                p.addcdiv_(neg * exp_avg, denom)  # value * t1 / t2, in torch's order

    def reset_model(self, index: int) -> None:
        """Zero model ``index``'s optimizer state (a diverged model, masked out)."""
        for state in self.state:
            for tensor in state.values():
                tensor[index].zero_()


class TrackedOptimizer:
    """What :meth:`TensorTracker.watch` reads of a torch optimizer (its parameters, state and
    a step pre-hook), over the stacked optimizer: the first step's tensor peak then covers the
    optimizer state that later steps hold throughout."""

    def __init__(self, optimizer: StackedOptimizer) -> None:
        self.optimizer = optimizer
        self.hooks: OrderedDict[int, Any] = OrderedDict()  # weakly referenced by the handles

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.optimizer.params}]

    @property
    def state(self) -> dict[int, dict[str, Tensor]]:
        return dict(enumerate(self.optimizer.state))

    def register_step_pre_hook(self, hook: Any) -> RemovableHandle:
        handle = RemovableHandle(self.hooks)
        self.hooks[handle.id] = hook
        return handle

    def step(self, lrs: Sequence[float]) -> None:
        for hook in list(self.hooks.values()):
            hook(self, (), {})
        self.optimizer.step(lrs)
