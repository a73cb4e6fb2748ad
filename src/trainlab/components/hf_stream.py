"""Hugging Face data that streams: ``data: {name: hf, streaming: true}``.

The train split is a ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``; a
``save_to_disk`` directory through ``to_iterable_dataset``), never downloaded nor held whole:
rows are tokenized as they are read, a chunk at a time, with the same encoders as the
memory-mapped path (:mod:`trainlab.components.arrow_data`), so a packed language-model stream
cuts the windows the in-memory packing cuts.  Epochs are ``train.steps_per_epoch`` batches
(:mod:`trainlab.components.streams`): each epoch's pass is ``.shuffle(seed, buffer_size)``
with a seed of (``train.seed``, epoch) (``data.shuffle_buffer`` rows in the buffer; the shard
order is shuffled too), DataLoader workers split the shards between them, and under
``--nproc`` each rank reads its share (``split_dataset_by_node``).

Validation and test are the dataset's own splits (``valid_split`` / ``test_split``, else
validation/valid/dev and test), read once into memory up to ``data.eval_limit`` examples;
none is carved from the stream (``valid_fraction`` does not apply).  Classes come from a
``ClassLabel`` feature, else from the largest label seen in the eval splits and the stream's
first items (said in the run's notes).
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from trainlab.components.arrow_data import _documents, _encode_labelled, _encode_padded
from trainlab.components.datasets import DataInfo, Dataset, Split
from trainlab.components.hf import require
from trainlab.components.streams import SAMPLE, StreamSplit, read_whole
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.components.text_data import HFDataSpec

SHUFFLE_BUFFER = 1000  # data.shuffle_buffer's default: rows shuffled at a time
_CHUNK = 256  # rows tokenized at a time


@dataclass(frozen=True)
class HFStream:
    """(token ids, target) pairs of a ``datasets.IterableDataset``, tokenized as read."""

    dataset: Any
    tok: Any
    text: str
    label: str | None  # classification; None: language modelling
    max_length: int
    pack: bool
    buffer: int  # rows in the shuffle buffer; 0: read in the dataset's order
    name: str
    checks_workers: bool = False  # datasets shards by worker itself

    def items(self, seed: int, rank: int, world: int) -> Iterator[Any]:
        ds = self.dataset
        if world > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=rank, world_size=world)
        if self.buffer:
            ds = ds.shuffle(seed=seed % 2**32, buffer_size=self.buffer, **_one_shard(ds))
        rows = iter(ds)
        try:
            yield from self._pairs(rows)
        finally:
            _close_later(rows)

    def _pairs(self, rows: Iterator[dict[str, Any]]) -> Iterator[Any]:
        carry: list[int] = []  # packed lm: tokens not yet in a window
        length = self.max_length
        while True:
            chunk = list(itertools.islice(rows, _CHUNK))
            if not chunk:
                return
            batch = {k: [row[k] for row in chunk] for k in chunk[0]}
            if self.label is not None:
                enc = _encode_labelled(batch, self.tok, self.text, self.label, length, None)
                for x, y in zip(enc["input_ids"], enc["labels"]):
                    yield torch.from_numpy(x.astype(np.int64)), int(y)
            elif not self.pack:
                enc = _encode_padded(batch, self.tok, self.text, length)
                for x, y in zip(enc["input_ids"], enc["labels"]):
                    yield torch.from_numpy(x.astype(np.int64)), torch.from_numpy(
                        y.astype(np.int64))
            else:
                for doc in _documents(batch, self.tok, self.text):
                    carry.extend(doc)
                start = 0
                while len(carry) - start >= length + 1:  # window k: tokens kL .. kL + L
                    window = torch.tensor(carry[start: start + length + 1], dtype=torch.long)
                    yield window[:-1], window[1:]
                    start += length
                carry = carry[start:]


def _one_shard(ds: Any) -> dict[str, Any]:
    """``shuffle``'s arguments for a reader (this process, or this DataLoader worker) of at
    most one shard: no interleaving of shards into the buffer (``max_buffer_input_shards=1``).

    ``datasets`` fills the shuffle buffer from up to 10 shards at a time, read on threads of
    their own; for parquet it then sleeps ``SLEEP_TIME_ON_THREADS_SHUTDOWN`` (5 s) as a pass
    ends or is closed (a PyArrow threads workaround).  Interleaving one shard mixes nothing, so
    a reader of one shard skips it and its pause: the same shuffle, in another order.  Readers
    of several shards keep it (the buffer then mixes them) and its pause."""
    if "max_buffer_input_shards" not in inspect.signature(type(ds).shuffle).parameters:
        return {}  # a datasets without the argument: its own shuffle
    shards = getattr(ds, "num_shards", None)
    if not isinstance(shards, int):
        return {}
    info = get_worker_info()
    if info is not None:  # the worker reads its share of this process's shards
        shards = shards // info.num_workers + (info.id < shards % info.num_workers)
    return {"max_buffer_input_shards": 1} if shards <= 1 else {}


def _close_later(rows: Iterator[Any]) -> None:
    """Close a pass's row iterator on a thread of its own: datasets sleeps
    ``SLEEP_TIME_ON_THREADS_SHUTDOWN`` (5 s) when its file readers close (an Arrow threads
    workaround), and an epoch that leaves a pass unfinished would wait for it (or, closed by
    the garbage collector, inside a later step's data wait)."""
    close = getattr(rows, "close", None)
    if close is not None:
        threading.Thread(target=close, name="trainlab-close-pass", daemon=True).start()


def _load(spec: HFDataSpec) -> dict[str, Any]:
    datasets = require("datasets", "`data.name: hf`")
    local = Path(spec.path).expanduser()
    try:
        if local.is_dir() and any((local / f).is_file() for f in
                                  ("dataset_dict.json", "state.json")):
            saved = datasets.load_from_disk(str(local))
            if isinstance(saved, datasets.Dataset):
                saved = {"train": saved}
            # Shards let DataLoader workers split the rows between them.
            return {k: v.to_iterable_dataset(num_shards=max(1, min(8, len(v))))
                    for k, v in saved.items()}
        loaded = datasets.load_dataset(spec.path, spec.config, data_files=spec.data_files,
                                       revision=spec.revision, streaming=True)
    except Exception as exc:  # offline, unknown id, bad files: all bad input here
        first = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {first[0][:300]}" if first else type(exc).__name__
        raise ConfigError(f"`data.path`: dataset {spec.path!r} could not be streamed "
                          f"({detail}). Without network access use local files (data_files) "
                          "or a save_to_disk directory", field="data.path") from None
    if isinstance(loaded, datasets.IterableDataset):
        return {"train": loaded}
    return dict(loaded)


def build_stream(spec: HFDataSpec, tokenizer: str | None,
                 columns: Callable[[HFDataSpec, Any], tuple[str | None, str | None, str | None]],
                 load_tok: Callable[[str | None, str], Any]) -> Dataset:
    """The ``hf`` dataset ``spec`` names, its train split streaming; ``columns`` and
    ``load_tok`` are text_data's (which imports this module) column finder and tokenizer."""
    for field, value in (("in_memory", spec.in_memory), ("limit", spec.limit)):
        if value is not None:
            raise ConfigError(f"`data.{field}`: {value} does not apply to streaming data (data."
                              "streaming: true reads the train split as it trains; "
                              "train.steps_per_epoch sets an epoch); leave data."
                              f"{field} unset", field=f"data.{field}")
    splits = _load(spec)
    names = list(splits)
    for field, wanted in (("train_split", spec.train_split), ("valid_split", spec.valid_split),
                          ("test_split", spec.test_split)):
        if wanted is not None and wanted not in splits:
            raise ConfigError(f"`data.{field}`: dataset {spec.path!r} has no split {wanted!r}; "
                              f"its splits: {', '.join(names)}", field=f"data.{field}")
    train = splits[spec.train_split]
    if train.features is None:  # json and csv streams: types from the first rows
        train = train._resolve_features()
    text, image, label = columns(spec, train)
    name = spec.path if spec.config is None else f"{spec.path}/{spec.config}"
    if image is not None or text is None:
        raise ConfigError(f"`data.streaming`: streams text only; dataset {name!r} has images "
                          "(leave data.streaming unset)", field="data.streaming")
    task = spec.task if spec.task != "auto" else ("classification" if label else "lm")
    if task == "classification" and label is None:
        raise ConfigError(f"`data.label`: classification needs a label column; dataset "
                          f"{spec.path!r} has none named {spec.label!r}", field="data.label")
    labelled = label if task == "classification" else None
    classes = None
    if labelled is not None:
        feature = train.features[labelled]
        if hasattr(feature, "names"):
            classes = len(feature.names)
        elif not str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
            raise ConfigError(f"`data.label`: streaming needs integer or ClassLabel labels; "
                              f"column {labelled!r} of {name!r} is {feature}",
                              field="data.label")
    tok = load_tok(tokenizer, name)
    buffer = SHUFFLE_BUFFER if spec.shuffle_buffer is None else spec.shuffle_buffer

    def stream(part: Any, what: str, shuffle: bool) -> HFStream:
        return HFStream(part, tok, text, labelled, spec.max_length, spec.pack,
                        buffer if shuffle else 0, f"{name} split {what!r} (streaming)")

    dev = next((n for n in ("validation", "valid", "dev") if n in splits), None)
    valid_name = spec.valid_split or dev
    test_name = spec.test_split or ("test" if "test" in splits else None)
    evals = []
    for what in (valid_name, test_name):
        if what is None or what == spec.train_split:
            evals.append(Split(torch.zeros(0, spec.max_length, dtype=torch.long),
                               torch.zeros(0, dtype=torch.long)))
            continue
        part = splits[what]
        if spec.eval_limit is not None:
            part = part.take(spec.eval_limit)
        evals.append(read_whole(stream(part, what, False).items(0, 0, 1), f"{name} split "
                                f"{what!r}", task, "data.eval_limit"))
    valid, test = evals
    train_split = StreamSplit.of(stream(train, spec.train_split, True), task)
    notes = [f"data.streaming: the train split of {name} streams, shuffled "
             f"{buffer} rows at a time; validation {valid_name or 'none'}, test "
             f"{test_name or 'none'} read into memory"
             + (f" (at most {spec.eval_limit} each)" if spec.eval_limit else "")]
    if task == "classification":
        if classes is None:
            seen = [s.targets for s in (valid, test) if len(s)]
            seen.append(train_split.take(range(SAMPLE))[1])
            classes = int(max(int(t.max()) for t in seen)) + 1
            notes.append(f"data: {classes} classes, from the largest label in the eval splits "
                         f"and the stream's first {SAMPLE} rows (a ClassLabel feature names "
                         "them)")
        info = DataInfo(name, "classification", (spec.max_length,), classes, 0, len(valid),
                        len(test), vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                        notes=tuple(notes))
    else:
        info = DataInfo(name, "lm", (spec.max_length,), len(tok), 0, len(valid), len(test),
                        tokens_per_example=spec.max_length, vocab_size=len(tok),
                        pad_token_id=None if spec.pack else tok.pad_token_id,
                        notes=tuple(notes))
    return Dataset(info, train_split, valid, test)


__all__ = ["SHUFFLE_BUFFER", "HFStream", "build_stream"]
