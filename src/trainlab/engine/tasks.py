"""Loss and metric per task, computed on the device and read by the host only when logged.

Language-model targets equal to :data:`IGNORE_INDEX` (-100, padding) count nowhere: not in
the loss, not in the token count that perplexity is weighted by.  Classification evaluation
also gathers a confusion matrix (on the device, read in the evaluation's one host sync) from
which F1 and Matthews correlation come.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from trainlab.components.python import load_loss

if TYPE_CHECKING:
    from trainlab.config.schema import RunConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

IGNORE_INDEX = -100  # as torch's cross_entropy: a target that is padding


class _LMCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the targets that are not :data:`IGNORE_INDEX`, keeping the
    softmax so that backward needs no second ``exp`` over the logits.

    ``F.cross_entropy`` saves the log-probabilities and its backward runs a zero-fill, a
    scatter and ``log_softmax``'s backward, which exponentiates every logit again: on a
    ``tokens x vocabulary`` LM head the exponentials are most of the loss's time on a CPU.
    Here the forward keeps the probabilities of one fused ``softmax``; the log-sum-exp comes
    from the row's largest logit and largest probability (which is ``1 / sum``, at least
    ``1 / vocabulary``, so its log never underflows), and backward turns the probabilities
    into the gradient in place (``(p - onehot) * w``, ``w`` the row's weight).  Same loss,
    gradients equal to float rounding (tests compare them with torch's).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):  # in fp32, as F.cross_entropy
            x = logits.float()
            p = torch.softmax(x, -1)
            valid = target != IGNORE_INDEX
            safe = torch.where(valid, target, 0).unsqueeze(1)
            count = valid.sum()
            nll = x.amax(-1) - p.amax(-1).log() - x.gather(1, safe).squeeze(1)
            loss = torch.where(valid, nll, 0.0).sum() / count  # none valid: nan, as torch
        ctx.save_for_backward(p, safe, valid, count)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        p, safe, valid, count = ctx.saved_tensors
        # d loss / d row: 0 for ignored rows (also when none is valid, as torch).
        weight = torch.where(valid, grad / count, 0.0).unsqueeze(1)
        out = p.scatter_add_(1, safe, -torch.ones_like(weight)).mul_(weight)
        return out.to(ctx.dtype), None


def lm_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits, target, ignore_index=-100)`` over ``[tokens, vocabulary]``
    logits, with a backward that needs no second pass of exponentials
    (:class:`_LMCrossEntropy`); without a gradient to take, torch's own."""
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    loss: torch.Tensor = _LMCrossEntropy.apply(logits, target)
    return loss


@dataclass(frozen=True)
class TaskKind:
    """Loss and task metric of one kind of data (classification, regression or lm)."""

    name: str
    metric: str  # accuracy | perplexity | rmse
    higher_is_better: bool
    keeps_outputs: bool  # whether the running train metric needs the batch outputs
    extra_metrics: tuple[str, ...] = ()  # evaluated from the confusion matrix

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric an evaluation reports besides the loss."""
        return (self.metric, *self.extra_metrics)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss that training minimises."""
        if self.name == "classification":
            return F.cross_entropy(out, y)
        if self.name == "lm":
            return lm_cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return F.mse_loss(out, y)

    def weight(self, y: torch.Tensor) -> int | torch.Tensor:
        """How many units the mean loss averages over (examples, tokens, or elements).

        For language models, the tokens that are not ignored, as a device tensor (no sync):
        callers sum it on the device and read it with the rest of their values.
        """
        if self.name == "lm":
            return (y != IGNORE_INDEX).sum()
        return y.numel()

    def sums(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, summed metric numerator) over a batch, on the device."""
        if self.name == "classification":
            loss = F.cross_entropy(out, y, reduction="sum")
            return loss, (out.argmax(-1) == y).sum()
        if self.name == "lm":
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
            return loss, loss.new_zeros(())
        loss = F.mse_loss(out, y, reduction="sum")
        return loss, loss.new_zeros(())

    def eval_sums(self, out: torch.Tensor, y: torch.Tensor,
                  classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, summed metric numerator) over an evaluation batch, on the device; with
        ``classes`` (classification with F1 and MCC) the second is the batch's flattened
        confusion matrix instead, whose trace is the correct count: one ``argmax`` per batch
        gives accuracy, F1 and MCC, with no predictions kept and no targets gathered again."""
        if not classes:
            return self.sums(out, y)
        loss = F.cross_entropy(out, y, reduction="sum")
        # confusion_matrix's counts, flat, with two ops less: the index built in place in the
        # fresh argmax (``pred + classes * y``, the same integers) and no reshape to undo.
        index = out.argmax(-1).add_(y if y.dtype == torch.long else y.long(), alpha=classes)
        return loss, torch.bincount(index, minlength=classes * classes)

    def finalize(self, loss_sum: float, metric_sum: float, count: float,
                 confusion: list[list[float]] | None = None) -> dict[str, float]:
        """Loss and task metrics from sums over ``count`` units (and the confusion matrix)."""
        loss = loss_sum / max(count, 1)
        if self.metric == "accuracy":
            value = metric_sum / max(count, 1)
        elif self.metric == "perplexity":
            value = math.exp(min(loss, 700.0))  # token-weighted: exp(mean NLL per token)
        else:
            value = math.sqrt(loss)
        out = {"loss": loss, self.metric: value}
        if confusion is not None and self.extra_metrics:
            out["f1"], out["mcc"] = f1_and_mcc(confusion)
        return out


def eval_batch_size(task: str, batch_size: int, given: int | None, examples: int) -> int:
    """Examples per evaluation batch over a split (or a rank's share) of ``examples``:
    ``data.eval_batch_size`` where ``given``; else the training batch for a language model and
    at least 256 otherwise, and a split at most a quarter over that is one batch (what a plain
    script's one forward does) rather than a full batch and a runt: 1.25x the memory at most."""
    if given is not None:
        return given
    size = batch_size if task == "lm" else max(batch_size, 256)
    return max(examples, 1) if examples <= size + size // 4 else size


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor,
                     classes: int) -> torch.Tensor:
    """``[classes, classes]`` counts, rows true class, columns predicted; on the device."""
    index = targets.long() * classes + predictions.long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def f1_score(confusion: list[list[float]]) -> float:
    """F1 of class 1 for two classes (the GLUE convention), macro-averaged F1 for more.

    A class never predicted and never present scores 0, as scikit-learn's default.
    """
    return f1_and_mcc(confusion)[0]


def matthews_corrcoef(confusion: list[list[float]]) -> float:
    """Matthews correlation (Gorodkin's multiclass R_K; the binary MCC for two classes).

    0 when it is undefined (every prediction or every target in one class), as scikit-learn.
    """
    return f1_and_mcc(confusion)[1]


def f1_and_mcc(confusion: list[list[float]]) -> tuple[float, float]:
    """(:func:`f1_score`, :func:`matthews_corrcoef`) of one confusion matrix, its row and
    column sums taken once for both (each validation's end); the same sums in the same order
    as each computed alone, so the same floats (tested)."""
    k = len(confusion)
    predicted = [sum(col) for col in zip(*confusion)]  # column sums
    actual = [sum(row) for row in confusion]  # row sums
    diagonal = [confusion[c][c] for c in range(k)]
    scores = [2 * tp / (p + t) if p + t else 0.0
              for tp, p, t in zip(diagonal, predicted, actual)]
    f1 = scores[1] if k == 2 else (sum(scores) / k if k else 0.0)
    n = sum(actual)
    cov = sum(diagonal) * n - sum(p * t for p, t in zip(predicted, actual))
    denom = math.sqrt((n * n - sum(p * p for p in predicted))
                      * (n * n - sum(t * t for t in actual)))
    return f1, (cov / denom if denom else 0.0)


TASKS = {
    "classification": TaskKind("classification", "accuracy", True, True, ("f1", "mcc")),
    "lm": TaskKind("lm", "perplexity", False, False),
    "regression": TaskKind("regression", "rmse", False, False),
}


def training_loss(config: RunConfig, task: TaskKind) -> LossFn:
    """What training minimises: the user's ``train.loss`` where given, else ``task``'s."""
    if config.train.loss is not None:
        return load_loss(config.train.loss, config.root)
    return task.loss
