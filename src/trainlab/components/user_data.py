"""``data: {name: python}``: the user's own data, as the function ``data.target`` returns it.

```yaml
data: {name: python, target: "corpus.py:splits", args: {seq_len: 64}, task: lm, batch_size: 16}
```

The function, called with ``data.args``, returns a mapping with ``train`` and optionally
``valid`` and ``test``.  Each is either

- a pair of tensors (or NumPy arrays) ``(inputs, targets)``, one target per input: kept in
  memory and batched by indexing, the fast path every built-in dataset takes (a plain
  ``TensorDataset`` of two tensors goes this way too), or
- a map-style ``torch.utils.data.Dataset`` of ``(input, target)`` pairs: an
  :class:`~trainlab.components.items.ItemSplit`, read item by item for every batch and never
  frozen into memory, so augmentation draws anew each epoch.

A missing ``valid`` or ``test`` is carved from ``train`` by ``valid_fraction``,
``test_fraction`` and ``split_seed`` (a fixed seed, not the run's), as ``hf`` data does.

What the models learn of the data (:class:`DataInfo`) comes from the data itself: the input
shape from one example; classes as the largest label + 1 over the splits (``num_classes``
skips reading a Dataset's items for it); for lm the vocabulary as the largest token id + 1
(``vocab_size`` to give it); for regression the target width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    Subset,
    TensorDataset,
    default_collate,
)
from torch.utils.data import Dataset as TorchDataset

from trainlab.components.datasets import (
    DataInfo,
    Dataset,
    Split,
    _split_indices,
    held_out_sources,
)
from trainlab.components.items import ItemSplit, conform
from trainlab.components.streams import (
    SAMPLE,
    StreamSplit,
    UserStream,
    rank_and_world,
    read_whole,
)
from trainlab.errors import ConfigError
from trainlab.usercode import where_raised

if TYPE_CHECKING:
    from trainlab.components.python import PythonDataSpec

SPLITS = ("train", "valid", "test")
_EXPECTED = ("a mapping with 'train' and optionally 'valid' and 'test', each a pair of tensors "
             "(inputs, targets) or a map-style torch.utils.data.Dataset of (input, target) "
             "pairs")
_IGNORE = -100  # lm targets that are padding (the engine's IGNORE_INDEX)
_SCAN_BATCH = 256

AnySplit = Split | ItemSplit


def build_user_data(result: Any, spec: PythonDataSpec) -> Dataset:
    """The :class:`Dataset` the user's function returned (``result``), checked, its missing
    splits carved from train and its :class:`DataInfo` computed."""
    target = spec.target
    if not isinstance(result, Mapping):
        _fail(f"{target} returned {type(result).__name__}; expected {_EXPECTED}")
    unknown = [str(k) for k in result if k not in SPLITS]
    if unknown:
        _fail(f"{target} returned keys {', '.join(map(repr, unknown))}; expected {_EXPECTED}")
    if result.get("train") is None:
        _fail(f"{target} returned no 'train' split; expected {_EXPECTED}")
    parts = {name: _split(result[name], name, spec) for name in SPLITS
             if result.get(name) is not None}
    train = parts["train"]
    if isinstance(train, StreamSplit):
        return _streaming(spec, train, parts.get("valid"), parts.get("test"))
    if len(train) == 0:
        _fail(f"{target}'s 'train' split has no examples")
    valid, test = parts.get("valid"), parts.get("test")
    yours = f"{target}'s {{!r}} split"
    sources = (yours.format("train"), yours.format("valid"), yours.format("test"))
    if valid is None or test is None:
        vf = spec.valid_fraction if valid is None else 0.0
        tf = spec.test_fraction if test is None else 0.0
        held = held_out_sources(vf, tf, spec.split_seed, sources[0])
        sources = (held[0], sources[1] if valid is not None else held[1],
                   sources[2] if test is not None else held[2])
        tr, va, te = _split_indices(len(train), vf, tf, spec.split_seed)
        valid = _select(train, va) if valid is None else valid
        test = _select(train, te) if test is None else test
        train = _select(train, tr)
    if spec.cache:
        train, valid, test = (_cached(s, name, spec) for s, name in
                              zip((train, valid, test), SPLITS))
    return Dataset(replace(_info(spec, train, valid, test), sources=sources), train, valid,
                   test)


def _cached(split: AnySplit, name: str, spec: PythonDataSpec) -> AnySplit:
    """``data.cache``: a Dataset split read once, in order, into tensors in memory (what the
    tensor path then indexes); tensor splits as they are."""
    if not isinstance(split, ItemSplit) or len(split) == 0:
        return split
    where = f"{spec.target}'s {name!r} split"
    items = split.items
    getitems = getattr(items, "__getitems__", None)
    inputs: list[Tensor] = []
    targets: list[Tensor] = []
    for batch in split.ranges(0, len(split), _SCAN_BATCH):
        try:
            read = getitems(list(batch)) if getitems is not None else [items[i] for i in batch]
        except Exception as exc:
            raise ConfigError(f"`data.cache`: reading the items of {where} into memory raised "
                              f"{where_raised(exc)}", field="data.cache") from exc
        try:
            x, y = split.collate(read)
        except Exception as exc:  # items of another shape in this batch: name one
            odd = next((batch.start + i for i, item in enumerate(read)
                        if _shapes(item) != _shapes(read[0])), None)
            if odd is None:
                raise ConfigError(f"`data.cache`: the items of {where} cannot be batched "
                                  f"({type(exc).__name__}: {exc})", field="data.cache") from exc
            _cache_shapes(where, _source(items, odd), _shapes(read[odd - batch.start]),
                          _shapes(read[0]), _source(items, batch.start))
        if inputs and (x.shape[1:] != inputs[0].shape[1:] or y.shape[1:] != targets[0].shape[1:]):
            _cache_shapes(where, _source(items, batch.start),
                          [list(x.shape[1:]), list(y.shape[1:])],
                          [list(inputs[0].shape[1:]), list(targets[0].shape[1:])],
                          _source(items, 0))
        inputs.append(x)
        targets.append(y)
    return Split(torch.cat(inputs).contiguous(), torch.cat(targets).contiguous())


def _source(items: Any, index: int) -> int:
    """The index in the user's own Dataset of item ``index`` of a (carved) split."""
    while isinstance(items, Subset):
        index, items = int(items.indices[index]), items.dataset
    return index


def _cache_shapes(where: str, odd: int, shapes: Any, first: Any, index: int) -> NoReturn:
    raise ConfigError(
        f"`data.cache`: true stacks every item of {where} into one tensor, but item {odd} has "
        f"(input, target) shapes {shapes[0]}, {shapes[1]} and item {index} has {first[0]}, "
        f"{first[1]}; give every item the same shapes, or leave data.cache unset to read the "
        "items for every batch", field="data.cache")


# --- one split ----------------------------------------------------------------------------------


def _split(value: Any, name: str, spec: PythonDataSpec) -> AnySplit:
    where = f"{spec.target}'s {name!r} split"
    if type(value) is TensorDataset and len(value.tensors) == 2:  # plain tensors: the fast path
        value = value.tensors
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not all(isinstance(v, (Tensor, np.ndarray)) for v in value):
            kinds = ", ".join(type(v).__name__ for v in value)
            _fail(f"{where} is a {type(value).__name__} of ({kinds}); expected a pair of tensors "
                  "(inputs, targets) or a map-style torch.utils.data.Dataset")
        try:
            x, y = torch.as_tensor(value[0]), torch.as_tensor(value[1])
        except (TypeError, RuntimeError) as exc:  # arrays of strings or objects
            _fail(f"{where} cannot be made tensors ({exc}); inputs and targets must be numeric")
        return _tensors(x, y, where, spec.task)
    if isinstance(value, IterableDataset):
        stream = UserStream(value, f"{spec.target}'s {name!r} split "
                                   f"({type(value).__name__})")
        if name == "train":  # streams: epochs of train.steps_per_epoch batches
            streaming = StreamSplit.of(stream, spec.task)
            _check_stream(streaming, where, spec.task)
            return streaming
        # valid and test: read once, whole, into memory (each evaluation reads all of it)
        tensors = read_whole(stream.items(0, 0, 1), where, spec.task, "data.target")
        return _tensors(tensors.inputs, tensors.targets, where, spec.task) if len(tensors) \
            else tensors
    if not isinstance(value, TorchDataset):
        _fail(f"{where} is a {type(value).__name__}; expected a pair of tensors (inputs, "
              "targets) or a map-style torch.utils.data.Dataset of (input, target) pairs")
    try:
        size = len(value)  # type: ignore[arg-type]  # map-style: has __len__
    except TypeError:
        _fail(f"{where}: {type(value).__name__} has no len(); trainlab needs a map-style "
              "Dataset with __len__ and __getitem__")
    split = ItemSplit(value, int(size), spec.task)
    if size:
        _check_item(split, where, spec.task)
        _check_shapes(split, where)
    return split


def _streaming(spec: PythonDataSpec, train: StreamSplit, valid: AnySplit | None,
               test: AnySplit | None) -> Dataset:
    """A streaming train split (an IterableDataset) with the valid and test splits given:
    none can be carved from a stream, so a missing one is empty (and said so)."""
    if spec.limit is not None:
        raise ConfigError(f"`data.limit`: {spec.limit} caps a split with a length; "
                          f"{spec.target}'s 'train' split is an IterableDataset (it streams); "
                          "train.steps_per_epoch sets how much an epoch reads. Leave "
                          "data.limit unset", field="data.limit")
    if spec.cache:
        raise ConfigError(f"`data.cache`: {spec.target}'s 'train' split is an IterableDataset "
                          "(it streams) and cannot be read into memory; leave data.cache unset",
                          field="data.cache")
    empty = Split(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    missing = [n for n, s in (("valid", valid), ("test", test)) if s is None]
    valid = empty if valid is None else valid
    test = empty if test is None else test
    info = _info(spec, train, valid, test)
    notes = [f"data: {spec.target}'s 'train' split streams (an IterableDataset): "
             "train.steps_per_epoch batches an epoch, each epoch a new pass"]
    if missing:
        notes.append(f"data: no {' and no '.join(missing)} split: none can be carved from a "
                     "stream (return them from the data function)")
    if not hasattr(train.stream.iterable, "set_epoch"):  # type: ignore[attr-defined]
        notes.append("data: the IterableDataset has no set_epoch(n), so every epoch reads it "
                     "in the same order from its start; define set_epoch to vary it by epoch")
    world = rank_and_world()[1]
    if world > 1 and not train.stream.ranked:  # type: ignore[attr-defined]
        notes.append(f"data: the IterableDataset has no set_rank(rank, world), so each of the "
                     f"{world} ranks reads the whole stream and keeps every {world}th item; "
                     "define set_rank to have each rank read only its share")
    if (spec.task == "classification" and spec.num_classes is None) or (
            spec.task == "lm" and spec.vocab_size is None):
        field = "num_classes" if spec.task == "classification" else "vocab_size"
        notes.append(f"data: {field} was computed from the stream's first {SAMPLE} items and "
                     f"the valid and test splits; set data.{field} if later items go beyond")
    return Dataset(replace(info, notes=tuple(notes)), train, valid, test)


def _check_stream(split: StreamSplit, where: str, task: str) -> None:
    """The stream's first item: an (input, target) pair the task can use."""
    try:
        item = next(iter(split.stream.items(0, 0, 1)), None)
    except Exception as exc:
        _fail(f"{where}: iterating it raised {where_raised(exc)}")
    if item is None:
        _fail(f"{where} is an IterableDataset that gave no items")
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        _fail(f"{where}: its first item is a {type(item).__name__}; an IterableDataset's items "
              "must be (input, target) pairs")
    try:
        x, y = default_collate([item])
    except Exception as exc:
        _fail(f"{where}: its first item cannot be batched ({type(exc).__name__}: {exc}); inputs "
              "and targets must be tensors, arrays or numbers")
    _check_dtypes(torch.as_tensor(x), torch.as_tensor(y), where, task, " of its first item")


def _tensors(x: Tensor, y: Tensor, where: str, task: str) -> Split:
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        shapes = f"inputs of shape {list(x.shape)} and targets of shape {list(y.shape)}"
        _fail(f"{where} has {shapes}; a pair needs one target per input (the same first "
              "dimension)")
    _check_dtypes(x, y, where, task, "")
    x, y = conform(x, y, task)
    return Split(x.contiguous(), y.contiguous())


def _check_item(split: ItemSplit, where: str, task: str) -> None:
    """Item 0 of a Dataset: an (input, target) pair the task can use."""
    try:
        item = split.items[0]
    except Exception as exc:
        _fail(f"{where}: reading item 0 raised {where_raised(exc)}")
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        _fail(f"{where}: item 0 is a {type(item).__name__}; a Dataset's items must be "
              "(input, target) pairs")
    try:
        x, y = default_collate([item])
    except Exception as exc:
        _fail(f"{where}: item 0 cannot be batched ({type(exc).__name__}: {exc}); inputs and "
              "targets must be tensors, arrays or numbers")
    _check_dtypes(torch.as_tensor(x), torch.as_tensor(y), where, task, " of item 0")


def _check_shapes(split: ItemSplit, where: str) -> None:
    """A few items besides item 0 (the second, the middle and the last): shaped as item 0 is,
    or a batch of them cannot be stacked.  Bad input now rather than a failed run at the
    first batch that holds such an item (an unread one still fails there, naming it)."""
    n = len(split)
    first = _shapes(split.items[0])
    for i in sorted({1, n // 2, n - 1} - {0}):
        if i >= n:
            continue
        try:
            item = split.items[i]
        except Exception as exc:
            _fail(f"{where}: reading item {i} raised {where_raised(exc)}")
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            _fail(f"{where}: item {i} is a {type(item).__name__}; a Dataset's items must be "
                  "(input, target) pairs")
        shapes = _shapes(item)
        if shapes != first:
            _fail(f"{where}: item {i} has (input, target) shapes {shapes[0]}, {shapes[1]} but "
                  f"item 0 has {first[0]}, {first[1]}; every item must have the same shapes "
                  "(pad or crop in __getitem__, or pass a collate-ready Dataset)")


def _shapes(item: Any) -> tuple[list[int], list[int]]:
    return tuple(list(np.shape(v)) if not isinstance(v, Tensor) else list(v.shape)
                 for v in item)  # type: ignore[return-value]


def _check_dtypes(x: Tensor, y: Tensor, where: str, task: str, of: str) -> None:
    integral = not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
    if task == "classification":
        if y.ndim != 1:
            _fail(f"{where}: classification targets{of} must be one class id per example "
                  f"(shape [N]); got shape {list(y.shape)}")
        if not integral and y.numel() and not bool(torch.all(y == y.round())):
            odd = y[y != y.round()].flatten()[0].item()
            _fail(f"{where}: classification targets{of} must be integer class ids; got "
                  f"{y.dtype} values such as {odd}")
    elif task == "lm":
        if x.dtype.is_floating_point or x.dtype.is_complex:
            _fail(f"{where}: lm inputs{of} must be integer token ids; got {x.dtype}")
        if not integral or y.shape != x.shape:
            _fail(f"{where}: lm targets{of} must be integer token ids shaped like the inputs "
                  f"({list(x.shape)}); got {y.dtype} of shape {list(y.shape)}")
    elif y.ndim > 2:
        _fail(f"{where}: regression targets{of} must be shaped [N] or [N, D]; got "
              f"{list(y.shape)}")


def _select(split: AnySplit, indices: np.ndarray) -> AnySplit:
    if isinstance(split, ItemSplit):
        return split.subset(indices.tolist())
    index = torch.as_tensor(indices, dtype=torch.long)
    return Split(split.inputs[index], split.targets[index])


# --- what the model learns of the data ----------------------------------------------------------


def _info(spec: PythonDataSpec, train: AnySplit, valid: AnySplit, test: AnySplit) -> DataInfo:
    splits = [train, valid, test]
    x0, y0 = _first(train)
    input_shape = tuple(x0.shape[1:])
    vocab_size = spec.vocab_size
    if spec.task == "classification":
        outputs = spec.num_classes or _label_range(splits, spec, "targets") + 1
        tensors = [s.targets for s in splits if isinstance(s, Split) and len(s)]
        top = max((int(t.max()) for t in tensors), default=-1)
        if top >= outputs:  # given too small: cheap to see for tensors (a Dataset's at step 1)
            raise ConfigError(f"`data.num_classes` = {outputs} but the labels go up to {top}; "
                              f"set it to at least {top + 1} (or leave it out to compute it)",
                              field="data.num_classes")
    elif spec.task == "lm":
        outputs = vocab_size or _label_range(splits, spec, "tokens") + 1
        vocab_size = outputs
    else:
        outputs = int(y0.shape[1])
    tokens = math.prod(input_shape) if spec.task == "lm" else 1
    return DataInfo(spec.target, spec.task, input_shape, outputs, len(train), len(valid),
                    len(test), tokens_per_example=tokens, vocab_size=vocab_size)


def _first(split: AnySplit) -> tuple[Tensor, Tensor]:
    if isinstance(split, Split):
        return split.inputs[:1], split.targets[:1]
    return split.take([0])


def _label_range(splits: list[AnySplit], spec: PythonDataSpec, what: str) -> int:
    """The largest class id (or token id) over the splits; negative or fractional ones are
    bad input.  Tensor splits are read in memory; a Dataset's items are read once, in
    batches."""
    high = 0
    for split, name in zip(splits, SPLITS):
        for x, y in _all_batches(split, spec):
            values = torch.cat([x.flatten(), y.flatten()]) if what == "tokens" else y.flatten()
            if what == "tokens":
                values = values[values != _IGNORE]
            if values.numel() == 0:
                continue
            if values.dtype.is_floating_point and not bool(torch.all(values == values.round())):
                _fail(f"{spec.target}'s {name!r} split has {what} that are not integers")
            low = int(values.min())
            if low < 0:
                kind = "class id" if what == "targets" else "token id"
                pad = " (or -100 for padding)" if what == "tokens" else ""
                _fail(f"{spec.target}'s {name!r} split has a negative {kind} ({low}); "
                      f"{what} must be >= 0{pad}")
            high = max(high, int(values.max()))
    return high


def _all_batches(split: AnySplit, spec: PythonDataSpec) -> Iterator[tuple[Tensor, Tensor]]:
    """The whole split as (inputs, targets) batches, as given (not yet cast); of a stream,
    its first items."""
    if isinstance(split, Split):
        yield split.inputs, split.targets
        return
    if isinstance(split, StreamSplit):
        yield split.take(range(SAMPLE))
        return
    field = "num_classes" if spec.task == "classification" else "vocab_size"
    loader = DataLoader(split.items, batch_size=_SCAN_BATCH, num_workers=0,
                        collate_fn=_raw_collate, generator=torch.Generator().manual_seed(0))
    try:
        yield from loader
    except ConfigError:
        raise
    except Exception as exc:  # the user's __getitem__ failed while trainlab read every item
        raise ConfigError(f"`data.target`: reading every item of {spec.target}'s data to find "
                          f"its {field} (set `data.{field}` to skip this) raised "
                          f"{where_raised(exc)}", field="data.target") from exc


def _raw_collate(items: list[Any]) -> tuple[Tensor, Tensor]:
    x, y = default_collate(items)
    return torch.as_tensor(x), torch.as_tensor(y)


def _fail(message: str) -> NoReturn:
    raise ConfigError(f"`data.target`: {message}", field="data.target")


__all__ = ["SPLITS", "build_user_data"]
