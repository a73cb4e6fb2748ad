"""One evaluation pass of the training loop over a split (or a DDP rank's share of it).

Loss and task metric summed on the device batch by batch and read in one host sync at the end.
Classification with F1 and MCC sums a confusion matrix instead (one ``argmax`` per batch):
accuracy is its trace.  A split that fits the evaluation batch is one forward
(:func:`~trainlab.engine.tasks.eval_batch_size`), what a plain script's evaluation does.

Per evaluation (each epoch's validation) it costs what a plain script's costs plus the
metrics: the batch's confusion matrix goes into the sums as it is (``torch.cat`` promotes
its integer counts to the loss's float32, as ``.float()`` did, without the extra op), and an
example count known on the host (classification, regression) stays there instead of being
copied into the device vector and read back; both read the same values (float32 counts, as
before), tested in tests/unit/engine/test_evaluate.py.  Under DDP the count still travels in
the vector, which the ranks sum in one all-reduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from trainlab.engine.tasks import TaskKind


def evaluation_sums(task: TaskKind, batches: Iterable[tuple[Tensor, Tensor]],
                    forward: Callable[[Tensor], Tensor], classes: int, device: torch.device,
                    *, host_count: bool = True) -> tuple[Tensor, float | None, int]:
    """(the device vector [loss sum, metric sums (the flattened confusion matrix with
    ``classes``) ...], the example count, batches) over ``batches``; call under
    ``inference_mode`` (and autocast).  The count is a host float (float32-rounded, as the
    device held it) where it is known on the host and ``host_count``; else None, and the
    vector ends with it (an LM's token count; every count under DDP, ``host_count=False``,
    whose ranks sum the vector).  :func:`read_sums` reads both in the one host sync."""
    sums: Tensor | None = None
    count: float | Tensor = 0  # examples on the host; an LM's token count on the device
    n = 0
    for x, y in batches:
        batch_loss, batch_metric = task.eval_sums(forward(x), y, classes)
        if batch_metric.dtype.is_floating_point:
            part = torch.cat([batch_loss.float().view(1), batch_metric.float().view(-1)])
        else:  # the confusion counts: cat makes them float32 with the loss, one op less
            part = torch.cat([batch_loss.float().view(1), batch_metric.view(-1)])
        sums = part if sums is None else sums.add_(part)
        count = count + task.weight(y)
        n += 1
    if sums is None:  # an empty share of the split (a DDP rank's)
        sums = torch.zeros(1 + (classes * classes if classes else 1), device=device)
    if host_count and not isinstance(count, Tensor):
        return sums, float(np.float32(count)), n  # the float32 the device vector held
    return torch.cat([sums, torch.as_tensor(count, device=device,
                                            dtype=torch.float32).view(1)]), None, n


def read_sums(sums: Tensor, count: float | None,
              reduce: Callable[[Tensor], Tensor] | None = None) -> list[float]:
    """:func:`evaluation_sums`' values on the host, the count last: the evaluation's one
    sync (``reduce``: DDP's sum over the ranks first)."""
    host = (sums if reduce is None else reduce(sums)).tolist()
    if count is not None:
        host.append(count)
    return host


def evaluation_result(task: TaskKind, host: list[float], classes: int) -> dict[str, float]:
    """Loss and metrics (accuracy, F1 and MCC from the confusion matrix) from
    :func:`evaluation_sums`' values."""
    loss_total, weight = host[0], host[-1]
    if not classes:
        return task.finalize(loss_total, host[1], weight)
    confusion = [host[1 + r * classes: 1 + (r + 1) * classes] for r in range(classes)]
    correct = math.fsum(confusion[c][c] for c in range(classes))
    return task.finalize(loss_total, correct, weight, confusion)


__all__ = ["evaluation_result", "evaluation_sums", "read_sums"]
