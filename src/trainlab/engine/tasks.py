"""Loss and metric per task, computed on the device and read by the host only when logged."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TaskKind:
    """Loss and task metric of one kind of data (classification, regression or lm)."""

    name: str
    metric: str  # accuracy | perplexity | rmse
    higher_is_better: bool
    keeps_outputs: bool  # whether the running train metric needs the batch outputs

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss that training minimises."""
        if self.name == "classification":
            return F.cross_entropy(out, y)
        if self.name == "lm":
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return F.mse_loss(out, y)

    def weight(self, y: torch.Tensor) -> int:
        """How many units the mean loss averages over (examples, tokens, or elements)."""
        return y.numel()

    def sums(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, summed metric numerator) over a batch, on the device."""
        if self.name == "classification":
            loss = F.cross_entropy(out, y, reduction="sum")
            return loss, (out.argmax(-1) == y).sum()
        if self.name == "lm":
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")
            return loss, loss.new_zeros(())
        loss = F.mse_loss(out, y, reduction="sum")
        return loss, loss.new_zeros(())

    def finalize(self, loss_sum: float, metric_sum: float, count: float) -> dict[str, float]:
        """Loss and task metric from sums over ``count`` units."""
        loss = loss_sum / max(count, 1)
        if self.metric == "accuracy":
            value = metric_sum / max(count, 1)
        elif self.metric == "perplexity":
            value = math.exp(min(loss, 700.0))  # token-weighted: exp(mean NLL per token)
        else:
            value = math.sqrt(loss)
        return {"loss": loss, self.metric: value}


TASKS = {
    "classification": TaskKind("classification", "accuracy", True, True),
    "lm": TaskKind("lm", "perplexity", False, False),
    "regression": TaskKind("regression", "rmse", False, False),
}
