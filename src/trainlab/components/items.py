"""A split read item by item: a map-style ``torch.utils.data.Dataset`` of ``(input, target)``.

Tensor splits (:class:`~trainlab.components.datasets.Split`) live in memory and the engine
indexes them a batch at a time.  An :class:`ItemSplit` is never materialised: a dataset's items
may change on every access (augmentation), so every batch calls its ``__getitem__`` again,
through a ``DataLoader`` at zero workers (fast loading is ``data.loader``'s work).

Order: the ``DataLoader``'s batch sampler is the list of index batches the caller passes, i.e.
the engine's own :func:`~trainlab.engine.loop.epoch_permutation` split into batches; a resumed
or a sharded (DDP) run passes its remaining batches, or its slice of each, exactly as for
tensors.  The loader gets a generator of its own: a default ``DataLoader`` draws a seed from the
global RNG at every ``iter()``, which would shift every later dropout mask.  Augmentation drawn
from the global RNG inside ``__getitem__`` is the user's, replayed on resume because items are
fetched lazily, one batch per step, and the RNG state is checkpointed.

Batches are shaped as tensor splits are: float64 inputs become float32 (the models' dtype);
classification and lm targets become int64; regression targets float32, ``[B]`` -> ``[B, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, default_collate
from torch.utils.data import Dataset as TorchDataset

Indices = Tensor | range | Sequence[int]


def conform(x: Tensor, y: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """Inputs and targets in the dtypes and shapes the engine's tasks expect (no copy when
    they already are)."""
    if x.dtype == torch.float64:
        x = x.float()
    if task == "regression":
        y = y.float()
        if y.ndim == 1:
            y = y[:, None]
    else:
        y = y.long()
    return x, y


@dataclass(frozen=True)
class ItemSplit:
    """``n`` items of a map-style torch Dataset, fetched anew for every batch."""

    items: TorchDataset[Any]
    size: int
    task: str  # classification | regression | lm: how targets are shaped

    def __len__(self) -> int:
        return self.size

    @property
    def device(self) -> torch.device:
        """Where the items are: the host (each batch is moved to the model's device)."""
        return torch.device("cpu")

    def head(self, n: int) -> ItemSplit:
        return ItemSplit(Subset(self.items, range(min(n, self.size))), min(n, self.size),
                         self.task)

    def subset(self, indices: Sequence[int]) -> ItemSplit:
        return ItemSplit(Subset(self.items, list(indices)), len(indices), self.task)

    def to(self, device: torch.device) -> ItemSplit:
        """The split itself: items stay where the dataset keeps them; batches move."""
        return self

    def collate(self, items: list[Any]) -> tuple[Tensor, Tensor]:
        x, y = default_collate(items)
        return conform(torch.as_tensor(x), torch.as_tensor(y), self.task)

    def take(self, indices: Indices) -> tuple[Tensor, Tensor]:
        """One batch of the items at ``indices`` (on the host), as the loader would give it."""
        index = indices.tolist() if isinstance(indices, Tensor) else list(indices)
        getitems = getattr(self.items, "__getitems__", None)
        items = getitems(index) if getitems is not None else [self.items[i] for i in index]
        return self.collate(items)

    def loader(self, batches: Sequence[Indices], pin_memory: bool = False
               ) -> DataLoader[Any]:
        """A zero-worker DataLoader over ``batches`` (lists of indices), in their order."""
        sampler = [b.tolist() if isinstance(b, Tensor) else list(b) for b in batches]
        return DataLoader(self.items, batch_sampler=sampler, num_workers=0,
                          collate_fn=self.collate, pin_memory=pin_memory,
                          # Its own generator: a default loader draws from the global RNG.
                          generator=torch.Generator().manual_seed(0))

    def batches(self, batches: Sequence[Indices], device: torch.device
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, targets) of each of ``batches`` in turn, on ``device``."""
        pin = device.type == "cuda"  # page-locked batches let the copy overlap the step
        for x, y in self.loader(batches, pin_memory=pin):
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)

    def ranges(self, lo: int, hi: int, batch_size: int) -> list[range]:
        """Consecutive batches of ``batch_size`` covering items ``lo`` to ``hi``."""
        return [range(s, min(s + batch_size, hi)) for s in range(lo, hi, batch_size)]


__all__ = ["ItemSplit", "conform"]
