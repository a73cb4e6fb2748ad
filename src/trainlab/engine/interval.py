"""The steps between two log points, kept on the device until the log point reads them.

Language models and regression: each step's loss (and an LM batch's token count) goes into a
preallocated device buffer, written by a device copy: no host sync and no new allocation per
step.  Holding one small tensor per step between log points instead fragments the host heap
around each step's large transient allocations (measured on the lm-optimizers LSTM: RSS grew
~5 MB a step, +190 MB of peak per run).

Classification keeps each batch's outputs and targets so the running accuracy is scored in one
batched op at the log point; since it holds tensors per step anyway, it keeps the step's loss
the same way, as list appends with no device op at all (the copy and the two detaches were
2-3 % of a 4-4-2 MLP's 0.4 ms step in benchmarks/overhead.py's interleaved harness).  The
kept tensors are the ones the step made: backward has freed their autograd buffers, and they
are only read under ``no_grad``.

A Ctrl-C between log points saves the unfinished interval (:meth:`LogInterval.carry`) in the
mid-epoch checkpoint; the resumed run puts it back (:meth:`LogInterval.resume`) and records
at the next log point exactly what an uninterrupted run records there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class LogInterval:
    def __init__(self, size: int, device: torch.device, keeps_outputs: bool) -> None:
        self.device, self.keeps_outputs = device, keeps_outputs
        self._buffers(torch.zeros(size, device=device), torch.zeros(size, device=device))
        self.host_weights: list[int | None] = []  # None: the weight is in ``weights``
        self.step_losses: list[Tensor] = []  # classification: each step's loss tensor
        self.outputs: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.carried_correct = 0.0  # correct predictions of steps carried over a Ctrl-C

    @classmethod
    def ensure(cls, current: LogInterval | None, size: int, device: torch.device,
               keeps_outputs: bool) -> LogInterval:
        """``current`` emptied, or a new one when it does not fit."""
        if current is None or current.size < size or current.device != device \
                or current.keeps_outputs != keeps_outputs:
            return cls(size, device, keeps_outputs)
        current.clear()
        return current

    def __len__(self) -> int:
        return len(self.host_weights)

    def add(self, loss: Tensor, out: Tensor, y: Tensor, weight: int | Tensor) -> None:
        """Store one step, after its backward (``weight``: a host int, or a device tensor for
        language models; classification's is always a host int)."""
        if self.keeps_outputs:
            self.step_losses.append(loss)
            self.outputs.append(out)
            self.targets.append(y)
            self.host_weights.append(weight)  # type: ignore[arg-type]
            return
        slot = len(self.host_weights)
        if slot >= self.size:  # longer than log_every: a resumed partial epoch
            self._grow(2 * self.size)
        self.loss_slots[slot].copy_(loss.detach())
        if isinstance(weight, Tensor):
            self.weight_slots[slot].copy_(weight)
            self.host_weights.append(None)
        else:
            self.host_weights.append(weight)

    def clear(self) -> None:
        self.host_weights, self.step_losses, self.outputs, self.targets = [], [], [], []
        self.carried_correct = 0.0

    def _losses(self, n: int) -> Tensor:
        """The interval's ``n`` step losses, on the device."""
        return torch.stack(self.step_losses) if self.keeps_outputs else self.losses[:n]

    @torch.no_grad()
    def correct(self) -> Tensor | None:
        """Correct predictions of this process's steps (classification), on the device."""
        return self._correct()

    def _correct(self) -> Tensor | None:  # (under no_grad: read, carry, device_steps)
        if not self.keeps_outputs:
            return None
        if not self.outputs:  # only steps carried over a Ctrl-C: their count is carried
            return torch.zeros((), device=self.device)
        return (torch.cat(self.outputs).argmax(-1) == torch.cat(self.targets)).sum()

    @torch.no_grad()
    def read(self, norm: Tensor | None) -> tuple[float, float, float, float | None]:
        """(loss sum, correct, weight, gradient norm) in one host sync; then empty."""
        n = len(self)
        on_device = self.host_weights[0] is None
        correct_now = self._correct()
        host = self._scalars(correct_now, norm)
        if host is None:
            parts = [self._losses(n).float()]
            if on_device:  # token counts of LM batches with ignored targets
                parts.append(self.weights[:n].float())
            if correct_now is not None:
                parts.append(correct_now.float().view(1))
            if norm is not None:
                parts.append(norm.float().view(1))
            host = torch.cat(parts).tolist()  # the one sync of this interval
        weights = host[n:2 * n] if on_device else [float(w or 0) for w in self.host_weights]
        # Exact summation on the host: the epoch's loss does not depend on where intervals
        # (or a Ctrl-C) split it.
        loss_sum = math.fsum(v * w for v, w in zip(host[:n], weights))
        correct = host[2 * n if on_device else n] if correct_now is not None else 0.0
        result = (loss_sum, correct + self.carried_correct, math.fsum(weights),
                  host[-1] if norm is not None else None)
        self.clear()
        return result

    def _scalars(self, correct: Tensor | None, norm: Tensor | None) -> list[float] | None:
        """Classification's read with one op less: its steps' float32 losses, the correct
        count as float32 and the norm (all 0-dim) in one ``stack`` (the general read stacks,
        then concatenates); 18 vs 23 us for 40 steps (CPU, one thread).  The count is cast
        first: a ``stack`` of mixed dtypes promotes on a slow path (52 us).  None where the
        interval is not that (the general read then reads it)."""
        losses = self.step_losses
        if not self.keeps_outputs or correct is None or not losses or correct.dim() \
                or (norm is not None and (norm.dim() or norm.dtype != torch.float32)):
            return None
        f32 = torch.float32
        for loss in losses:
            if loss.dtype != f32 or loss.dim():
                return None
        count = correct.float()
        scalars = [*losses, count] if norm is None else [*losses, count, norm]
        return torch.stack(scalars).tolist()  # the one sync of this interval

    @torch.no_grad()
    def device_steps(self) -> tuple[tuple[Tensor, Tensor], Tensor | None]:
        """((losses, weights), correct) on the device, for a reduction across DDP ranks;
        then empty (read the views before the next step)."""
        n = len(self)
        if self.host_weights[0] is None:
            weights = self.weights[:n]
        else:
            weights = torch.tensor([float(w or 0) for w in self.host_weights],
                                   device=self.device)
        correct = self._correct()
        if correct is not None and self.carried_correct:
            correct = correct + self.carried_correct
        steps = (self._losses(n), weights)
        self.clear()
        return steps, correct

    @torch.no_grad()
    def carry(self) -> dict[str, Any] | None:
        """The unfinished interval as host values, for a mid-epoch checkpoint."""
        if not len(self):
            return None
        n = len(self)
        on_device = self.host_weights[0] is None
        correct = self._correct()
        parts = [self._losses(n).float()]
        if on_device:
            parts.append(self.weights[:n].float())
        if correct is not None:
            parts.append(correct.float().view(1))
        host = torch.cat(parts).tolist()
        weights = host[n:2 * n] if on_device else [float(w or 0) for w in self.host_weights]
        return {"losses": host[:n], "weights": weights,
                "host_weights": list(self.host_weights),
                "correct": (host[-1] if correct is not None else 0.0) + self.carried_correct}

    def resume(self, carried: dict[str, Any]) -> None:
        """Put back an interval that :meth:`carry` saved."""
        losses = torch.tensor(carried["losses"], dtype=self.losses.dtype)
        if self.keeps_outputs:  # classification: the losses as step tensors, host weights
            self.step_losses = list(losses.to(self.device).unbind())
        else:
            n = len(losses)
            if n > self.size:
                self._grow(n)
            self.losses[:n] = losses
            self.weights[:n] = torch.tensor(carried["weights"], dtype=self.weights.dtype)
        self.host_weights = list(carried["host_weights"])
        self.outputs, self.targets = [], []
        self.carried_correct = carried["correct"]

    def _grow(self, size: int) -> None:
        losses = torch.zeros(size, device=self.device)
        weights = torch.zeros(size, device=self.device)
        n = min(len(self), self.size)
        losses[:n], weights[:n] = self.losses[:n], self.weights[:n]
        self._buffers(losses, weights)

    def _buffers(self, losses: Tensor, weights: Tensor) -> None:
        # One view per slot, made once: ``slot.copy_(loss)`` costs a third of
        # ``losses[i] = loss`` (which builds the view on every call), measurable on small steps.
        self.losses, self.weights, self.size = losses, weights, losses.numel()
        self.loss_slots, self.weight_slots = losses.unbind(), weights.unbind()
