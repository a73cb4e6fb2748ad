"""DistributedDataParallel inside the one loop: what changes when a run trains on several ranks.

The loop asks :func:`current` once per run; it returns ``None`` unless this process is a rank
of a torchrun group with more than one process, and every single-process code path stays as
it was.  Under DDP:

- Data: each rank keeps the whole dataset in memory and takes its slice of every global batch
  of the shared :func:`~trainlab.engine.loop.epoch_permutation`, so ``data.batch_size`` is the
  global batch.  Each rank's mean loss is scaled by ``n_rank * world / n_batch`` so that DDP's
  gradient average equals the gradient of the global batch's mean loss, even when the last
  batch does not split evenly.
- Metrics: at each log point the interval's per-step losses, weights and correct counts are
  summed across ranks in one all-reduce (with the stop request, so every rank stops at the
  same step); validation and test are sharded and their sums reduced.  Every rank computes the
  same values; rank 0 alone writes records, checkpoints and ``best.pt``.
- Memory: each rank's peaks are gathered at epoch end: each ``memory/*`` value (the run's own
  tensors' ``memory/tensor_peak_bytes`` too) is the largest over ranks,
  ``memory/peak_bytes/rank<r>`` each rank's own peak.
- Randomness: every rank builds the model from the run's seed (DDP also broadcasts rank 0's
  weights); ranks above 0 then reseed so their dropout masks differ, and each rank's RNG state
  is saved in the checkpoint for resume.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainlab.engine import interrupt
from trainlab.errors import RunError

# Set on rank 0 when its launcher forwards a stop (Ctrl-C); the ranks agree on it at the next
# log point, so all of them stop after the same step.
REQUEST = [False]


def request_stop() -> None:
    REQUEST[0] = True


@dataclass
class DistContext:
    """This process's place in the group and the collectives the loop needs."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- setup -------------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model under DistributedDataParallel (gradients averaged during backward)."""
        from torch.nn.parallel import DistributedDataParallel

        self.trainable = _trainable(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def needs_rewrap(self, model: nn.Module) -> bool:
        """Whether the set of trainable parameters changed (gradual unfreezing at an epoch
        start): DDP only synchronises the parameters that required grad when it was built."""
        return _trainable(model) != self.trainable

    def fork_rng(self, seed: int) -> None:
        """Ranks above 0 draw their own dropout masks (rank 0 keeps the single-process stream)."""
        if self.rank > 0:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def sum_float(self, value: float) -> float:
        buf = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(buf)
        return float(buf.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    # --- training ----------------------------------------------------------------------------

    def shard(self, batches: Sequence[Tensor], loss: Callable[[Tensor, Tensor], Tensor],
              first: int) -> tuple[list[Tensor], Callable[[Tensor, Tensor], Tensor]]:
        """This rank's slice of each global batch, and a loss scaled so that averaging the
        ranks' gradients gives the gradient of the global batch's mean loss."""
        local, scales = [], []
        for idx in batches:
            part = idx.tensor_split(self.world)[self.rank]
            if len(part) == 0:
                raise RunError(f"a batch of {len(idx)} examples cannot be split over "
                               f"{self.world} ranks; use a data.batch_size (and data.limit) "
                               f"that leaves at least train.nproc examples in every batch")
            local.append(part)
            scales.append(len(part) * self.world / len(idx))
        remaining = iter(scales[first:])

        def scaled(out: Tensor, y: Tensor) -> Tensor:
            scale = next(remaining)
            value = loss(out, y)
            return value if scale == 1.0 else value * scale

        return local, scaled

    def reduce_interval(self, steps: tuple[Tensor, Tensor], correct: Tensor | None,
                        norm: Tensor | None) -> tuple[float, float, int, float | None]:
        """(loss sum, correct count, weight, grad norm) of a log interval over all ranks.

        One all-reduce carries each step's mean loss (the scaled local losses averaged), each
        step's weight, the correct count and the stop request; then every rank decides alike.
        """
        losses, weights = steps  # each step's scaled local loss and weight, on the device
        n = losses.numel()
        parts = [losses.double().to(self.device) / self.world, weights.double().to(self.device)]
        if correct is not None:
            parts.append(correct.double().view(1).to(self.device))
        parts.append(torch.tensor([1.0 if REQUEST[0] else 0.0], dtype=torch.float64,
                                  device=self.device))
        buf = torch.cat(parts)
        dist.all_reduce(buf)
        host = buf.tolist()
        means, step_weights = host[:n], host[n:2 * n]
        loss_sum = math.fsum(m * w for m, w in zip(means, step_weights))
        correct_sum = host[2 * n] if correct is not None else 0.0
        if host[-1] > 0:
            interrupt.request_stop()  # on every rank at once: they stop after this step
        # Gradients are averaged before anyone reads them: the norm is the same on every rank.
        norm_value = float(norm.item()) if norm is not None else None
        return loss_sum, correct_sum, round(sum(step_weights)), norm_value

    # --- evaluation ----------------------------------------------------------------------------

    def eval_range(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share of ``n`` evaluation examples."""
        per = -(-n // self.world)
        return min(n, self.rank * per), min(n, (self.rank + 1) * per)

    def reduce_sums(self, values: Tensor) -> Tensor:
        out = values.double()
        dist.all_reduce(out)
        return out

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere, so every rank evaluates the same
        model (and the checkpoint, written by rank 0, is that model)."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def memory(self, mine: dict[str, float]) -> dict[str, float]:
        """The largest peak over ranks, plus each rank's ``memory/peak_bytes/rank<r>``."""
        every = self.gather(mine)
        # Keys every rank records; one some rank lacks is the largest of those that have it.
        out = {key: max(m[key] for m in every if key in m) for key in mine}
        for r, m in enumerate(every):
            out[f"memory/peak_bytes/rank{r}"] = m["memory/peak_bytes"]
        return out


def _trainable(model: nn.Module) -> tuple[str, ...]:
    return tuple(name for name, p in model.named_parameters() if p.requires_grad)


def current() -> DistContext | None:
    """This process's DDP context when it is one of several ranks; None otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world == 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    backend = dist.get_backend()
    device = (torch.device("cuda", local_rank) if backend == "nccl"
              else torch.device("cpu"))
    return DistContext(dist.get_rank(), world, local_rank, device)
