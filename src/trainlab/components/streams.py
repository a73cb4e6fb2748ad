"""Streaming data: a training source with no length, read in order a pass at a time.

Two sources stream: a ``torch.utils.data.IterableDataset`` of your own (``data: {name:
python}``, as the ``train`` split) and Hugging Face data with ``data.streaming: true``
(:mod:`trainlab.components.hf_stream`).  Neither has a length, so an epoch is
``train.steps_per_epoch`` batches (required for such data, exit 2 without it):

- Each epoch reads its batches from a new pass over the source whose order is a function of
  (``train.seed``, epoch): Hugging Face data is shuffled with ``.shuffle(seed, buffer_size)``
  by a seed of the two; your iterable's ``set_epoch(n)`` is called, when it has one, with
  such a number before each pass (without it every epoch reads it from its start).
- A pass that ends before the epoch's batches is restarted (a new pass, its own seed) and the
  epoch goes on, so every epoch has its steps and schedules see the steps they were built
  for; the run's summary says so in its notes.  A pass's last partial batch is dropped.
- A run resumed mid-epoch reads past the batches it had consumed (a stream cannot jump):
  loading them costs what loading them cost the first time, without training on them.
- With ``data.loader.workers`` each worker process iterates its own copy of the source:
  Hugging Face data splits its shards between them (a source of fewer shards than workers
  leaves the extra workers idle); your iterable must split itself by
  ``torch.utils.data.get_worker_info()``, or each worker repeats every item.  Two workers
  whose first batches are equal fail the run, naming the fix.  With ``data.loader.persistent``
  (the default) the workers are started once and kept: each new pass reaches them as its
  seed, in shared memory, and each worker's RNGs (``random``, ``torch``, ``numpy``, and
  ``get_worker_info().seed``) are reseeded at the pass's start exactly as a new worker of that
  pass would be, so batches and random draws are those of workers started for each pass
  (``persistent: false``), without the start-up (~0.1 s a pass, a fork and a copy of the
  source per worker).  The worker's copy of your iterable is reused, though: state it changes
  while iterating, other than through ``set_epoch``/``set_rank``, carries into its next pass.
- Under ``--nproc`` each rank reads its share: Hugging Face data through
  ``datasets.distributed.split_dataset_by_node``; your iterable through its ``set_rank(rank,
  world)`` when it has one (called before each pass, after ``set_epoch``, in the process that
  reads it, with 0, 1 outside ``--nproc``: it then yields rank ``rank``'s share only, split
  between workers as usual),
  else by keeping every ``world``-th item from its ``rank``-th (each rank then reads, and
  pays for, the whole stream; the run's notes say so).

Validation and test splits of streaming data are read once, whole, into memory (for Hugging
Face data up to ``data.eval_limit`` examples each), and every evaluation reads all of them: a
fixed set, so evaluations compare.  They must end.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torch.utils.data._utils.worker import _generate_state

from trainlab.components.datasets import LoaderSpec, Split
from trainlab.components.items import Indices, ItemSplit, conform, pin_memory
from trainlab.errors import ConfigError, RunError

SAMPLE = 256  # items of the stream's first pass kept for take() (probes, shape checks)
EVAL_CAP = 1_000_000  # items of a streamed valid/test split read into memory at most


class Stream(Protocol):
    """A training source read in passes: :meth:`items` is one pass, called in the process
    that reads it (a DataLoader worker, or the training process)."""

    @property
    def name(self) -> str: ...

    @property
    def checks_workers(self) -> bool:
        """Whether equal first batches of two workers mean repeated items."""
        ...

    def items(self, seed: int, rank: int, world: int) -> Iterator[Any]: ...


@dataclass(frozen=True)
class StreamSplit(ItemSplit):
    """A training split that streams: ``items`` is the :class:`Stream`; ``size`` is an
    epoch's examples (``train.steps_per_epoch`` x ``batch_size``; 0 until they are set)."""

    batch_size: int = 0
    # What happened to the stream while the run trained (a restarted pass): the run's notes.
    log: list[str] = field(default_factory=list, compare=False)
    _sample: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, stream: Stream, task: str) -> StreamSplit:
        """A stream's split, sized later (load_dataset, by train.steps_per_epoch)."""
        return cls(cast(Any, stream), 0, task)

    streams: ClassVar[bool] = True  # what load_dataset asks (it cannot import this module)

    def sized(self, steps_per_epoch: int, batch_size: int) -> StreamSplit:
        """This stream with epochs of ``steps_per_epoch`` batches (fresh notes: the run's)."""
        return replace(self, size=steps_per_epoch * batch_size, batch_size=batch_size, log=[])

    def _stream_loader(self, settings: LoaderSpec, device: torch.device) -> StreamBatches:
        return StreamBatches(self, settings, device)

    @property
    def stream(self) -> Stream:
        return self.items  # type: ignore[return-value]

    @property
    def steps(self) -> int:
        return self.size // self.batch_size if self.batch_size else 0

    def head(self, n: int) -> ItemSplit:
        raise ConfigError("`data.limit`: streaming data has no length to cap; "
                          "train.steps_per_epoch sets how much an epoch reads",
                          field="data.limit")

    def subset(self, indices: Sequence[int]) -> ItemSplit:
        return self.head(len(indices))

    def take(self, indices: Indices) -> tuple[Tensor, Tensor]:
        """A batch of the stream's first items (``indices`` modulo the :data:`SAMPLE` kept):
        for probes and checks that need an example batch, not for training."""
        if "xy" not in self._sample:
            items = list(itertools.islice(self.stream.items(0, 0, 1), SAMPLE))
            if not items:
                raise ConfigError(f"`data`: the training stream of {self.stream.name} gave "
                                  "no items", field="data.name")
            self._sample["xy"] = self.collate(items)
        x, y = self._sample["xy"]
        index = torch.as_tensor(list(indices) if not isinstance(indices, Tensor)
                                else indices.cpu(), dtype=torch.long) % len(x)
        return x[index], y[index]


class _Pass(IterableDataset[Any]):
    """One pass of a stream, as a DataLoader reads it (copied to each worker).

    ``kept``: the DataLoader's workers are persistent.  The seed is then a tensor in shared
    memory: :meth:`start` sets the next pass's before the loader resumes its workers, whose
    ``iter()`` of this object (one per pass) reads it and reseeds the worker's RNGs as a worker
    started for that pass would be (:func:`_reseed_worker`).
    """

    def __init__(self, stream: Stream, seed: int, rank: int, world: int,
                 kept: bool = False) -> None:
        self.stream, self.rank, self.world, self.kept = stream, rank, world, kept
        self._seed = torch.tensor([seed], dtype=torch.int64)
        if kept:
            self._seed.share_memory_()

    @property
    def seed(self) -> int:
        return int(self._seed[0])

    def start(self, seed: int) -> None:
        """The next pass's seed (before ``iter()`` of the loader that reads it)."""
        self._seed[0] = seed

    def __iter__(self) -> Iterator[Any]:
        seed = self.seed
        if self.kept:
            _reseed_worker(seed)
        return self.stream.items(seed, self.rank, self.world)


def _reseed_worker(seed: int) -> None:
    """In a persistent DataLoader worker, at a pass's start: its RNGs as torch seeds a new
    worker of a loader whose generator is seeded with ``seed`` (the pass's), so that a kept
    worker draws what a worker started for the pass would (``_worker_loop``: base seed from
    the generator, ``base + id`` for ``random`` and ``torch``, numpy's from both)."""
    info = get_worker_info()
    if info is None:
        return
    base = int(torch.empty((), dtype=torch.int64).random_(
        generator=torch.Generator().manual_seed(seed)).item())
    own = base + info.id
    random.seed(own)
    torch.manual_seed(own)
    np.random.seed(_generate_state(base, info.id))
    object.__setattr__(info, "seed", own)  # WorkerInfo refuses assignment; it is this pass's


def pass_seed(seed: int, number: int) -> int:
    """The seed of pass ``number`` of an epoch whose loader seed is ``seed``."""
    if number == 0:
        return seed
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the group's size (0, 1 outside ``--nproc``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StreamBatches:
    """The batches of a :class:`StreamSplit`'s epochs, through a DataLoader with
    ``data.loader``'s settings (what :class:`~trainlab.components.items.ItemLoader` uses for
    a stream)."""

    def __init__(self, split: StreamSplit, settings: LoaderSpec, device: torch.device) -> None:
        self.split, self.settings, self.device = split, settings, device
        self.pin = pin_memory(settings, device)
        self._live: Any = None  # the current pass's DataLoader iterator (its workers)
        # Persistent workers: one DataLoader for every pass (of one batch size, rank, world).
        self.kept = bool(settings.workers and settings.persistent)
        self._kept: tuple[tuple[int, int, int], _Pass, DataLoader[Any]] | None = None

    def batches(self, batches: Sequence[Indices], seed: int = 0
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches from ``batches[0]`` on, one per entry of ``batches`` (sized as
        it is): the epoch's earlier ones (``steps`` minus ``len(batches)``) are read past."""
        if not batches:
            return
        size = len(batches[0])
        skip = max(0, self.split.steps - len(batches))
        stream = self._stream(seed, size)
        try:
            for _ in range(skip):  # a stream cannot jump: read past the consumed batches
                next(stream)
            for _ in range(len(batches)):
                x, y = next(stream)
                if self.device.type != "cpu":
                    x = x.to(self.device, non_blocking=self.pin)
                    y = y.to(self.device, non_blocking=self.pin)
                yield x, y
        finally:
            stream.close()

    def _stream(self, seed: int, size: int) -> Generator[tuple[Tensor, Tensor], None, None]:
        """Batches of ``size`` from pass after pass of the stream (endless)."""
        rank, world = rank_and_world()
        for number in itertools.count():
            count = 0
            self._live = iterator = self._start(pass_seed(seed, number), size, rank, world)
            kept = False  # kept workers stay up for the next pass unless this one failed
            try:
                first: Tensor | None = None
                for x, y in iterator:
                    if count == 0:
                        first = x
                    elif count == 1 and first is not None:
                        self._check_workers(first, x)
                    count += 1
                    yield x, y
                kept = self.kept
            except GeneratorExit:  # the epoch has its batches: the pass stays unfinished
                kept = self.kept
                raise
            finally:
                if not kept:  # workers started for this pass end with it
                    self.close()
            if count == 0:
                raise RunError(f"the training stream of {self.split.stream.name} gave no full "
                               f"batch of {size} items in a pass; it needs at least "
                               "data.batch_size items")
            note = (f"the training stream of {self.split.stream.name} ended after {count} "
                    f"batches of {size}, before train.steps_per_epoch ({self.split.steps}); "
                    "it was restarted (a new pass) and the epoch went on")
            if note not in self.split.log:  # once per run, however many passes end
                self.split.log.append(note)

    def _start(self, seed: int, size: int, rank: int, world: int) -> Iterator[Any]:
        """The batches of a new pass of ``seed``: a DataLoader of its own (and, with workers,
        workers of its own), or the kept one's workers resumed on it."""
        if not self.settings.workers:
            return self._here(self.split.stream.items(seed, rank, world), size)
        if not self.kept:
            return iter(self._loader(_Pass(self.split.stream, seed, rank, world), size, seed))
        key = (size, rank, world)
        if self._kept is None or self._kept[0] != key:
            self.close()
            source = _Pass(self.split.stream, seed, rank, world, kept=True)
            self._kept = (key, source, self._loader(source, size, seed, persistent=True))
        _, source, loader = self._kept
        source.start(seed)  # read by each worker's iter() of the source as it resumes
        # The first: starts the workers; later: resumes them on the new pass, dropping what
        # they had loaded ahead of an unfinished one (at most prefetch batches each).
        return iter(loader)

    def _here(self, items: Iterator[Any], size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """A pass's batches read in this process (no workers): what a DataLoader gives (``size``
        items at a time, collated and pinned as it would, its last partial batch dropped),
        without its per-item Python loop (a sampler's ``None`` and a ``next()`` per item):
        ~20 % of the loading time of small items."""
        collate, pin = self.split.collate, self.pin
        try:
            while True:
                chunk = list(itertools.islice(items, size))
                if len(chunk) < size:
                    return
                x, y = collate(chunk)
                if pin:
                    x, y = x.pin_memory(), y.pin_memory()
                yield x, y
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's own cleanup, now rather than when collected
                close()

    def _loader(self, source: _Pass, size: int, seed: int,
                persistent: bool = False) -> DataLoader[Any]:
        workers = self.settings.workers
        extra: dict[str, Any] = ({"prefetch_factor": self.settings.prefetch,
                                  "persistent_workers": persistent} if workers else {})
        return DataLoader(source, batch_size=size, drop_last=True, num_workers=workers,
                          collate_fn=self.split.collate, pin_memory=self.pin,
                          generator=torch.Generator().manual_seed(seed), **extra)

    def _check_workers(self, first: Tensor, second: Tensor) -> None:
        """The first batches of workers 0 and 1, equal: an iterable that does not split itself
        between workers (each then repeats every item)."""
        if self.settings.workers < 2 or not self.split.stream.checks_workers:
            return
        if first.shape == second.shape and torch.equal(first, second):
            raise RunError(
                f"data.loader.workers: {self.settings.workers} workers each read every item of "
                f"{self.split.stream.name} (workers 0 and 1 gave the same first batch): an "
                "IterableDataset must split its items between workers by "
                "torch.utils.data.get_worker_info() (id, num_workers) in __iter__, or run "
                "with data.loader.workers: 0")

    def close(self) -> None:
        """Stop the workers (the current pass's, or the kept ones: at the run's end)."""
        shutdown = getattr(self._live, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        elif self._live is not None and hasattr(self._live, "close"):  # read here: the pass's
            self._live.close()
        self._live = None
        self._kept = None


# --- a user's IterableDataset -----------------------------------------------------------------


@dataclass(frozen=True)
class UserStream:
    """A ``torch.utils.data.IterableDataset`` of ``(input, target)`` pairs of your own.

    Hooks it may define, each called before every pass in the process that reads the pass (a
    DataLoader worker, or the training process): ``set_epoch(n)``, the pass's order (``n`` a
    function of ``train.seed``, epoch and pass); ``set_rank(rank, world)`` (0, 1 outside
    ``--nproc``): from then on the iterable yields rank ``rank``'s share of ``world`` (disjoint
    shares that together are the stream), so no rank reads the others' items.
    """

    iterable: Any
    name: str
    checks_workers: bool = True

    @property
    def ranked(self) -> bool:
        """Whether the iterable splits itself between ranks (a ``set_rank`` hook)."""
        return callable(getattr(self.iterable, "set_rank", None))

    def items(self, seed: int, rank: int, world: int) -> Iterator[Any]:
        set_epoch = getattr(self.iterable, "set_epoch", None)
        if callable(set_epoch):  # the pass's order: a function of (train.seed, epoch, pass)
            set_epoch(seed)
        if self.ranked:  # the iterable reads rank's share itself (all of it at world 1)
            self.iterable.set_rank(rank, world)
            return iter(self.iterable)
        items = iter(self.iterable)
        # Every rank reads the whole stream and keeps its world-th of it.
        return itertools.islice(items, rank, None, world) if world > 1 else items


def read_whole(items: Any, where: str, task: str, field_name: str,
               cap: int = EVAL_CAP) -> Split:
    """A finite iterable of (input, target) pairs read once into a tensor split."""
    inputs: list[Tensor] = []
    targets: list[Tensor] = []
    chunk: list[Any] = []

    def flush() -> None:
        if chunk:
            x, y = default_collate(chunk)
            xs, ys = conform(torch.as_tensor(x), torch.as_tensor(y), task)
            inputs.append(xs)
            targets.append(ys)
            chunk.clear()

    for count, item in enumerate(items, 1):
        if count > cap:
            raise ConfigError(f"`{field_name}`: {where} gave over {cap} items; a streamed "
                              "validation or test split is read into memory whole, so it must "
                              "end (give a smaller, finite one)", field=field_name)
        chunk.append(item)
        if len(chunk) == 1024:
            flush()
    flush()
    if not inputs:
        return Split(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return Split(torch.cat(inputs).contiguous(), torch.cat(targets).contiguous())


__all__ = ["EVAL_CAP", "SAMPLE", "Stream", "StreamBatches", "StreamSplit", "UserStream",
           "pass_seed", "rank_and_world", "read_whole"]
