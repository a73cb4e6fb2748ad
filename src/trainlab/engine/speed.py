"""Speed options that keep results honest: each is decided once per run and recorded with it.

- precision: autocast to bf16 or fp16 for forward and loss; fp16 adds a gradient scaler.
- compile: ``torch.compile`` of the forward model; the first step (where compilation happens)
  is timed apart and reported as ``time/compile``, not as training time.
- channels_last: the channels-last memory format for models with 2-D convolutions
  (auto: on CUDA, where cuDNN prefers it; on CPU it was no faster here).
- data_on_device: the whole dataset lives on the accelerator when it takes under half the free
  memory (batches are then gathered on the device, no copies); otherwise it stays in ordinary
  host memory and each batch is gathered into page-locked memory and copied asynchronously.
  Gathered on the device, consecutive batches share one index op (:meth:`Speed.batches`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.components.datasets import LoaderSpec, Split
from trainlab.components.items import ItemLoader, ItemSplit
from trainlab.config.schema import TrainSpec
from trainlab.devices import release_cached
from trainlab.engine import allocator

# Inputs gathered per chunk of batches by gathered() (a digits epoch is ~0.4 MB).
GATHER_BYTES = 1 << 20

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def intra_op_threads(threads: int | str | None) -> Iterator[None]:
    """``train.threads`` for one run, probe or range test; the caller's count comes back after.

    Without it, a run that sets ``threads: 1`` would leave every later run of an in-process
    sweep (and the Python API's caller) on one thread.  ``auto`` (or None) sets nothing: the
    count ``auto`` picks is set inside (:mod:`trainlab.engine.threads`) and undone here too.
    """
    before = torch.get_num_threads()
    if isinstance(threads, int):
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Speed:
    """The decided speed options of one run and the helpers the loop calls."""

    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: Any | None  # torch.amp.GradScaler for fp16
    channels_last: bool
    data_on_device: bool
    forward: nn.Module  # the compiled model, or the model itself
    compiled: bool
    threads: int  # torch's intra-op threads while the run trains
    # How a Dataset's items are loaded (data.loader), and the run's loader of each such split.
    loading: LoaderSpec = field(default_factory=LoaderSpec)
    loaders: dict[int, ItemLoader] = field(default_factory=dict)
    # How train.threads: auto chose them (ThreadChoice.describe()); None when set as a number.
    threads_auto: dict[str, Any] | None = None

    def autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def batches(self, split: Split | ItemSplit, batches: Sequence[Tensor], seed: int = 0
                ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(indices, inputs, targets) of each batch of ``batches`` in turn: fetched one by one
        for host-resident data, else gathered in chunks (:func:`gathered`); a Dataset's items
        through the split's DataLoader, whose batch sampler is ``batches`` (``seed`` seeds its
        workers' RNGs)."""
        if isinstance(split, ItemSplit):
            return self._item_batches(split, batches, seed)
        fetch = self.fetcher(split)
        if fetch is None:
            return gathered(split.inputs, split.targets, batches)
        return ((idx, *fetch(idx)) for idx in batches)

    def fetcher(self, split: Split | ItemSplit
                ) -> Callable[[Tensor], tuple[Tensor, Tensor]] | None:
        """A batch fetcher for host-resident data, a Dataset's items or channels-last; None:
        plain indexing."""
        if isinstance(split, ItemSplit):
            return lambda idx: self._place(*split.take(idx), non_blocking=False)
        if self.data_on_device and not self.channels_last:
            return None
        device, cl = self.device, self.channels_last
        on_device = self.data_on_device
        inputs, targets = split.inputs, split.targets

        def fetch(idx: Tensor) -> tuple[Tensor, Tensor]:
            if on_device:
                x, y = inputs[idx], targets[idx]
            else:
                host = idx.cpu()
                # Each batch is gathered straight into page-locked memory (one copy; the
                # split itself stays pageable), so its copy overlaps the previous step.
                x = pinned_rows(inputs, host).to(device, non_blocking=True)
                y = pinned_rows(targets, host).to(device, non_blocking=True)
            if cl and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return x, y

        return fetch

    def eval_batches(self, split: Split | ItemSplit, lo: int, hi: int, batch_size: int
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, targets) on the device, in order, of examples ``lo`` to ``hi``."""
        if isinstance(split, ItemSplit):
            for x, y in self.item_loader(split).batches(split.ranges(lo, hi, batch_size)):
                yield self._place(x, y)
            return
        for start in range(lo, hi, batch_size):
            end = min(start + batch_size, hi)
            x = split.inputs[start:end]
            y = split.targets[start:end]
            if not self.data_on_device:
                x = pinned_copy(x).to(self.device, non_blocking=True)
                y = pinned_copy(y).to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def item_loader(self, split: ItemSplit) -> ItemLoader:
        """The run's DataLoader of ``split``, made at its first pass and kept (persistent
        workers then live across epochs)."""
        loader = self.loaders.get(id(split))
        if loader is None:
            loader = self.loaders[id(split)] = ItemLoader(split, self.loading, self.device)
        return loader

    def close(self) -> None:
        """Stop every loader's worker processes (at the end of the run, however it ends)."""
        for loader in self.loaders.values():
            loader.close()

    def _item_batches(self, split: ItemSplit, batches: Sequence[Tensor], seed: int
                      ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        # The loader (or a stream's) already put each batch on the device: only channels-last
        # is left, so no per-step .to() (two calls of a no-op copy) where it is off.
        loaded = self.item_loader(split).batches(batches, seed)
        if not self.channels_last:
            for idx, (x, y) in zip(batches, loaded):
                yield idx, x, y
            return
        for idx, (x, y) in zip(batches, loaded):
            yield (idx, *self._place(x, y))

    def _place(self, x: Tensor, y: Tensor, non_blocking: bool = True
               ) -> tuple[Tensor, Tensor]:
        """A host batch of a Dataset's items on the device, channels-last where chosen."""
        x = x.to(self.device, non_blocking=non_blocking)
        y = y.to(self.device, non_blocking=non_blocking)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def describe(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What was on, for the run's summary and report."""
        defaults = optimizer.defaults
        return {
            "fused": bool(defaults.get("fused")),
            "foreach": bool(defaults.get("foreach")),
            "precision": {None: "fp32", torch.bfloat16: "bf16",
                          torch.float16: "fp16"}[self.amp_dtype],
            "compile": self.compiled,
            "channels_last": self.channels_last,
            "data_on_device": self.data_on_device,
            "threads": self.threads,
            "threads_auto": self.threads_auto,
            "steady_heap": allocator.is_steady(),
            # Loader settings where a Dataset's items were loaded (tensors need none).
            **({"loader": self.loading.model_dump(mode="json")} if self.loaders else {}),
        }


def page_locked(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An empty page-locked host tensor, from torch's caching host allocator: a batch's block
    is reused once the copy that read it has finished, so a run pins about two batches' worth
    of memory, never a whole split (which large data would make tens of GB)."""
    return torch.empty(tuple(shape), dtype=dtype, pin_memory=True)


def pinned_rows(src: Tensor, index: Tensor) -> Tensor:
    """``src[index]`` gathered straight into page-locked memory (one copy, pinned once)."""
    out = page_locked((len(index), *src.shape[1:]), src.dtype)
    return torch.index_select(src, 0, index, out=out)


def pinned_copy(src: Tensor) -> Tensor:
    """A page-locked copy of ``src`` (a contiguous run of examples)."""
    return page_locked(src.shape, src.dtype).copy_(src)


def scaler_sync_note(speed: Speed, optimizer: torch.optim.Optimizer) -> str | None:
    """Why fp16 on CUDA will sync the host every step with this optimizer, or None.

    ``GradScaler.step`` hands the scale and found-inf flag to optimizers whose step supports
    it (``_step_supports_amp_scaling``: the fused Adam, AdamW, SGD and Adagrad); for any other
    (RMSprop, SGD with momentum unfused, foreach kernels) it reads found-inf with ``.item()``
    before stepping: one device-to-host sync a step."""
    if speed.scaler is None or speed.device.type != "cuda":
        return None
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        return None
    name = type(optimizer).__name__
    fix = ("optimizer.fused: true (it has a fused kernel)"
           if name in ("Adam", "AdamW", "SGD", "Adagrad")
           else "train.precision: bf16 (no scaler), or an optimizer with a fused kernel")
    return (f"train.precision: fp16 with {name}: its step has no fused kernel, so the "
            "gradient scaler reads its overflow flag on the host (.item()) every step, a sync "
            f"that stalls the GPU queue; for full speed use {fix}")


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _fits_on_device(splits: Sequence[Split | ItemSplit], device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    # A Dataset's items stay on the host whatever is decided: only tensor splits count.
    need = sum(t.numel() * t.element_size() for s in splits if isinstance(s, Split)
               for t in (s.inputs, s.targets))
    # mem_get_info counts this process's cached blocks as used: free them first, or the answer
    # depends on what ran before in the process.
    release_cached(device)
    free, _ = torch.cuda.mem_get_info(device)
    return need < free / 2


def decide(train: TrainSpec, model: nn.Module, device: torch.device,
           splits: Sequence[Split | ItemSplit],
           wrap: Callable[[nn.Module], nn.Module] | None = None,
           loading: LoaderSpec | None = None) -> Speed:
    """Resolve the run's speed options ("auto" included) for this model and device.

    ``wrap`` (DistributedDataParallel under torchrun) wraps the model before compilation;
    ``loading`` is ``data.loader`` (for splits that are a Dataset's items).
    """
    channels_last = (train.channels_last if isinstance(train.channels_last, bool)
                     else device.type == "cuda") and _has_conv2d(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    on_device = (train.data_on_device if isinstance(train.data_on_device, bool)
                 else _fits_on_device(splits, device)) or device.type == "cpu"
    amp_dtype = _DTYPES.get(train.precision)
    scaler = torch.amp.GradScaler(device.type) if train.precision == "fp16" else None
    forward: nn.Module = model if wrap is None else wrap(model)
    if train.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    return Speed(device, amp_dtype, scaler, channels_last, on_device, forward, train.compile,
                 torch.get_num_threads(), loading or LoaderSpec())


def gathered(inputs: Tensor, targets: Tensor, batches: Sequence[Tensor]
             ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(indices, inputs, targets) of each batch, for data in the model's device memory.

    Small batches, consecutive ones are gathered together, about ``GATHER_BYTES`` of inputs
    with one index op, and each batch is a slice of that: one gather per chunk instead of two
    per step (the two index ops are ~5 % of a digits MLP's step).  Batches over a quarter of
    ``GATHER_BYTES`` are indexed one by one: what gathering saves is dispatch time, and a
    large batch gathered a step ahead was measured cold (Fashion-MNIST-sized MLP at batch 256,
    two batches a chunk: 2 % slower).  The values, and so the training, are the same as
    indexing each batch.
    """
    if not batches:
        return
    row = math.prod(inputs.shape[1:]) * inputs.element_size()
    per_chunk = GATHER_BYTES // max(1, row * len(batches[0]))
    take_x, take_y = _rows(inputs), _rows(targets)
    if per_chunk < 4:
        for idx in batches:
            yield idx, take_x(idx), take_y(idx)
        return
    for start in range(0, len(batches), per_chunk):
        group = batches[start:start + per_chunk]
        both = torch.cat(list(group))
        sizes = [idx.shape[0] for idx in group]  # len() of a tensor is 4x slower
        yield from zip(group, take_x(both).split_with_sizes(sizes),
                       take_y(both).split_with_sizes(sizes))


def _rows(data: Tensor) -> Callable[[Tensor], Tensor]:
    """``data[idx]`` for a 1-D integer ``idx``: ``index_select`` on contiguous data, the same
    rows into the same contiguous tensor without advanced indexing's general machinery (a
    digits epoch's 1,257 rows of [1, 8, 8]: 15 vs 70 us; a batch of them 3.3 vs 5 us).  Other
    layouts are indexed as they were (their result's strides follow the input's)."""
    if data.is_contiguous():
        return lambda idx: data.index_select(0, idx)
    return data.__getitem__
