"""A split read item by item: a map-style ``torch.utils.data.Dataset`` of ``(input, target)``.

Tensor splits (:class:`~trainlab.components.datasets.Split`) live in memory and the engine
indexes them a batch at a time.  An :class:`ItemSplit` is never materialised: a dataset's items
may change on every access (augmentation), so every batch calls its ``__getitem__`` again,
through a ``DataLoader`` (:class:`ItemLoader`) with ``data.loader``'s settings: in the training
process by default, or in ``workers`` worker processes that load the next batches while the
model trains on this one.

Order: the ``DataLoader``'s batch sampler is the list of index batches the caller passes, i.e.
the engine's own :func:`~trainlab.engine.loop.epoch_permutation` split into batches; a resumed
or a sharded (DDP) run passes its remaining batches, or its slice of each, exactly as for
tensors.  The loader gets a generator of its own: a default ``DataLoader`` draws a seed from the
global RNG at every ``iter()``, which would shift every later dropout mask.  Augmentation drawn
from the global RNG inside ``__getitem__`` is the user's.  At zero workers it is replayed on
resume because items are fetched lazily, one batch per step, and the RNG state is checkpointed.
With workers, each worker's RNG is seeded by the loader from the pass's seed (the engine gives
a function of (seed, epoch)); persistent workers are seeded once, at their first pass.  A run
resumed mid-epoch sees the same batches, but its workers' random draws differ from an
uninterrupted run's.

Batches are shaped as tensor splits are: float64 inputs become float32 (the models' dtype);
classification and lm targets become int64; regression targets float32, ``[B]`` -> ``[B, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, default_collate
from torch.utils.data import Dataset as TorchDataset

from trainlab.components.datasets import LoaderSpec

Indices = Tensor | range | Sequence[int]


class Batch(NamedTuple):
    """A ready batch that a dataset's ``__getitems__(indices)`` may return instead of a list of
    items: ``ItemSplit`` then uses it as it is (one read per batch, no per-item collate), as the
    memory-mapped Hugging Face data does."""

    inputs: Tensor  # [B, ...]
    targets: Tensor  # [B] or [B, ...]


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

    def collate(self, items: list[Any] | Batch) -> tuple[Tensor, Tensor]:
        if isinstance(items, Batch):  # a dataset whose __getitems__ reads a batch at once
            return conform(items.inputs, items.targets, self.task)
        x, y = default_collate(items)
        return conform(torch.as_tensor(x), torch.as_tensor(y), self.task)

    def take(self, indices: Indices) -> tuple[Tensor, Tensor]:
        """One batch of the items at ``indices`` (on the host), as the loader would give it."""
        index = indices.tolist() if isinstance(indices, Tensor) else list(indices)
        getitems = getattr(self.items, "__getitems__", None)
        items = getitems(index) if getitems is not None else [self.items[i] for i in index]
        return self.collate(items)

    def batches(self, batches: Sequence[Indices], device: torch.device,
                settings: LoaderSpec | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, targets) of each of ``batches`` in turn, on ``device`` (a loader of its
        own, closed at the end; the engine keeps one per split instead)."""
        loader = ItemLoader(self, settings or LoaderSpec(), device)
        try:
            yield from loader.batches(batches)
        finally:
            loader.close()

    def _stream_loader(self, settings: LoaderSpec, device: torch.device) -> Any:
        """What loads a streaming split's batches (:mod:`.streams`); None: indexed items."""
        return None

    def ranges(self, lo: int, hi: int, batch_size: int) -> list[range]:
        """Consecutive batches of ``batch_size`` covering items ``lo`` to ``hi``."""
        return [range(s, min(s + batch_size, hi)) for s in range(lo, hi, batch_size)]


class _Batches:
    """A batch sampler whose batches are set before each pass: one DataLoader (and, with
    persistent workers, one pool of worker processes) serves every epoch of a run."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def pin_memory(settings: LoaderSpec, device: torch.device) -> bool:
    """``pin_memory: auto`` pins when batches go to a CUDA device (the copy then overlaps the
    step); true pins only where there is a device to pin for."""
    if settings.pin_memory == "auto":
        return device.type == "cuda"
    return bool(settings.pin_memory) and torch.cuda.is_available()


class ItemLoader:
    """The ``DataLoader`` of one split for a run, with ``data.loader``'s settings.

    Its batch sampler is the engine's batches of the pass (:meth:`batches`), so the order stays
    the engine's; workers load up to ``prefetch`` batches each ahead of the step.  Call
    :meth:`close` when the run ends: it stops persistent workers at once rather than when the
    loader is garbage collected.
    """

    def __init__(self, split: ItemSplit, settings: LoaderSpec, device: torch.device) -> None:
        self.split, self.settings, self.device = split, settings, device
        self.pin = pin_memory(settings, device)
        # A streaming split (components/streams.py) reads passes, not index batches.
        self._stream = split._stream_loader(settings, device)
        self._sampler = _Batches()
        # Its own generator: a default loader draws a seed from the global RNG at every iter().
        self._generator = torch.Generator().manual_seed(0)
        workers = settings.workers
        extra: dict[str, Any] = {}
        if workers:
            extra = {"prefetch_factor": settings.prefetch,
                     "persistent_workers": settings.persistent}
        self.loader: DataLoader[Any] = DataLoader(
            split.items, batch_sampler=self._sampler, num_workers=workers,
            collate_fn=split.collate, pin_memory=self.pin, generator=self._generator, **extra)

    def batches(self, batches: Sequence[Indices], seed: int = 0
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, targets) of each of ``batches`` in turn, on the device; ``seed`` seeds the
        workers' RNGs for this pass (non-persistent workers: every pass)."""
        if self._stream is not None:
            yield from self._stream.batches(batches, seed)
            return
        self._sampler.batches = [b.tolist() if isinstance(b, Tensor) else list(b)
                                 for b in batches]
        self._generator.manual_seed(seed)
        device, pin = self.device, self.pin
        if device.type == "cpu":
            yield from self.loader
            return
        for x, y in self.loader:
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)

    def close(self) -> None:
        """Stop the loader's worker processes (persistent ones stay up between passes)."""
        if self._stream is not None:
            self._stream.close()
        iterator = getattr(self.loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


__all__ = ["Batch", "ItemLoader", "ItemSplit", "conform", "pin_memory"]
