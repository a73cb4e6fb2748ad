"""Hugging Face text data that stays on disk: tokenized once into Arrow files, read by batch.

With ``data.in_memory: false`` (or ``auto`` over the memory budget) the ``hf`` dataset's splits
are tokenized with ``datasets.Dataset.map(batched=True)``: a thousand rows at a time, written
to an Arrow file that ``datasets`` keeps as its cache (next to the dataset's own Arrow files, or
under ``HF_DATASETS_CACHE/trainlab`` for data without files there) and reuses while the data,
the tokenizer and the options are unchanged.  The file is memory-mapped; its pages are read
when a batch touches them, so memory does not grow with the dataset.

Rows (int32, the vocabulary fits):

- classification: ``input_ids`` (``max_length`` tokens, padded) and ``labels`` (class ids);
- language modelling, ``pack: false``: ``input_ids`` and ``labels`` (next tokens, -100 at
  padding), ``max_length`` each;
- language modelling, packed: ``ids``, one token per row, the documents in order with
  end-of-text after each.  Window ``k`` is tokens ``k * L`` to ``k * L + L`` (its targets one
  further), the windows the in-memory packing cuts, so both give the same batches.

:class:`ArrowPairs` reads a batch with one NumPy gather over the memory-mapped file (its
``__getitems__`` returns a ready :class:`~trainlab.components.items.Batch`), not one Python
read per item: Arrow's own ``take`` on a chunked column concatenates the chunks first, i.e.
reads the whole column into memory.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from trainlab.components.datasets import DataInfo, Dataset
from trainlab.components.hf import require
from trainlab.components.items import Batch, ItemSplit
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

IGNORE_INDEX = -100
_FORMAT = 1  # bump when the rows written here change: old cache files are then not reused
_MAP_BATCH = 1000  # rows tokenized at a time (~100 bytes a token while tokenizing)
# `auto` holds data in memory when tokenizing it there peaks under this share of the available
# memory.  The peak is the tokenizer's output for the whole split: its Encoding objects and
# Python lists took 94-99 bytes a token here (tiny BERT, 2.6M and 10M tokens), 12x the int64
# tensors that stay afterwards.
IN_MEMORY_SHARE = 0.5
BYTES_PER_TOKEN = 100
# A mapped page counts in the process's resident set (and its peak, memory/peak_bytes) until
# the process lets go of it, so an epoch over a file would count the whole file.  Over a file
# larger than _RESIDENT_CAP a reader drops its mapped pages every _RESIDENT_CAP bytes of reads,
# counting _FAULT_BYTES a row: a fault maps more than the row (fault-around, large page-cache
# folios: ~160 KB a row was seen here), and what it maps stays in the page cache.
_RESIDENT_CAP = 64 << 20
_FAULT_BYTES = 128 << 10


# --- auto: memory or disk ----------------------------------------------------------------------


def available_memory() -> int:
    """Bytes this process may still allocate: the machine's available memory, or less where a
    cgroup (a container) limits the process."""
    import psutil

    available = int(psutil.virtual_memory().available)
    try:  # cgroup v2: memory.max is "max" or a byte count
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def memory_budget() -> int:
    """Bytes tokenizing in memory may take at its peak under ``data.in_memory: auto``."""
    return int(available_memory() * IN_MEMORY_SHARE)


def in_memory_bytes(parts: list[Any], text: str, task: str, pack: bool, max_length: int
                    ) -> int:
    """Peak bytes of tokenizing the splits in memory, estimated before tokenizing from the
    rows (padded to ``max_length``) or, packed, from the text (a token per 4 bytes)."""
    rows = sum(len(p) for p in parts)
    if task == "classification" or not pack:
        return rows * max_length * BYTES_PER_TOKEN
    tokens = 0
    for part in parts:
        table = part.data  # the Arrow table under any row selection: scale by the share kept
        total = max(table.num_rows, 1)
        tokens += int(table.column(text).nbytes * len(part) / total / 4) + len(part)
    return tokens * BYTES_PER_TOKEN


# --- reading: a memory-mapped Arrow file as (input, target) batches -----------------------------


class _Column:
    """One int32 column of an Arrow file (its chunks scattered through the file), gathered
    with one NumPy index over the whole mapped file."""

    def __init__(self, whole: pa.Buffer, column: pa.ChunkedArray, width: int) -> None:
        self.width = width
        self.flat = np.frombuffer(whole, dtype=np.int32, count=whole.size // 4)
        starts, offsets = [0], []
        for chunk in column.chunks:
            values = chunk.flatten() if width > 1 else chunk
            if chunk.null_count or values.null_count or values.type.bit_width != 32:
                raise ValueError(f"unexpected Arrow column {column.type} with nulls")
            start = values.buffers()[1].address - whole.address
            if start % 4:
                raise ValueError("Arrow buffer not aligned to its int32 values")
            offsets.append(start // 4 + values.offset)
            starts.append(starts[-1] + len(chunk))
        self.starts = np.asarray(starts, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.rows = int(self.starts[-1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at ``rows`` (any shape), shaped ``rows.shape + (width,)`` (no trailing axis
        for width 1)."""
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= self.rows):
            raise IndexError(f"row index out of range for a column of {self.rows} rows")
        if len(self.offsets) == 1:
            first = self.offsets[0] + rows * self.width
        else:
            chunk = np.searchsorted(self.starts, rows, side="right") - 1
            first = self.offsets[chunk] + (rows - self.starts[chunk]) * self.width
        if self.width == 1:
            return self.flat[first]
        return self.flat[first[..., None] + np.arange(self.width)]


class ArrowPairs(TorchDataset[tuple[torch.Tensor, torch.Tensor]]):
    """(input, target) pairs of token ids from an Arrow file written by :func:`tokenize_split`.

    ``window``: packed language modelling (``ids``, one token per row; item ``k`` is window
    ``k``); otherwise rows of ``input_ids`` and ``labels``.  The file is opened lazily and
    reopened in each DataLoader worker (pickling carries its path, never its pages).
    """

    def __init__(self, path: str | None, window: int | None = None) -> None:
        self.path, self.window = path, window
        self._columns: dict[str, _Column] | None = None
        self._map: mmap.mmap | None = None
        self._size = 0
        self._release_every = 0  # items between releases of the mapped pages (0: never)
        self._read = 0  # items read since the last release
        if path is not None:
            columns = self._open()
            self._size = max(0, (columns["ids"].rows - 1) // window) if window else \
                columns["input_ids"].rows

    def _open(self) -> dict[str, _Column]:
        if self._columns is None:
            import pyarrow as pa

            assert self.path is not None
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_RANDOM"):  # batches are random rows: no read-ahead
                self._map.madvise(mmap.MADV_RANDOM)
            # datasets writes Arrow IPC streams; read from one mapped buffer so that every
            # chunk's values are at a known place in it.
            whole = pa.py_buffer(self._map)
            table = pa.ipc.open_stream(whole).read_all()
            widths = {name: getattr(table.schema.field(name).type, "list_size", 1)
                      for name in table.column_names}
            self._columns = {name: _Column(whole, table.column(name), widths[name])
                             for name in table.column_names}
            row = (self.window + 1) * 4 if self.window else 4 * sum(widths.values())
            if len(self._map) > _RESIDENT_CAP and hasattr(mmap, "MADV_DONTNEED"):
                self._release_every = max(1, _RESIDENT_CAP // (row + _FAULT_BYTES))
        return self._columns

    def _release(self, items: int) -> None:
        """Drop the mapping's pages from this process every ``_release_every`` items: they
        stay in the page cache (a later read maps them again, a minor fault), but mapped they
        count in the resident set, and an epoch would count the whole file."""
        self._read += items
        if self._release_every and self._read >= self._release_every and self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)
            self._read = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "window": self.window, "_size": self._size, "_columns": None,
                "_map": None, "_release_every": 0, "_read": 0}

    def __len__(self) -> int:
        return self._size

    def __getitems__(self, indices: list[int]) -> Batch:
        rows = np.asarray(indices, dtype=np.int64)
        if not self._size or (rows.size and (int(rows.min()) < 0
                                             or int(rows.max()) >= self._size)):
            raise IndexError(f"index out of range for {self._size} items")
        columns = self._open()
        if self.window:
            length = self.window
            tokens = columns["ids"].take(rows[:, None] * length + np.arange(length + 1))
            x, y = tokens[:, :-1], tokens[:, 1:]
        else:
            x, y = columns["input_ids"].take(rows), columns["labels"].take(rows)
        batch = Batch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)),
                      torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))
        self._release(len(rows))
        return batch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._size
        batch = self.__getitems__([index])
        return batch.inputs[0], batch.targets[0]


# --- writing: tokenizing a split into an Arrow file ----------------------------------------------


def fingerprint(*parts: Any) -> str:
    """A name for a cache file: the hash of everything its rows depend on."""
    text = json.dumps([_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def tokenizer_hash(tok: Any) -> str:
    """The tokenizer's content (vocabulary, rules, special tokens), not just its name."""
    from datasets.fingerprint import Hasher

    return str(Hasher.hash(tok))


@contextmanager
def _quiet() -> Iterator[None]:
    """No "Map: ..." progress bars in the sweep's output (the setting comes back after)."""
    datasets = require("datasets", "`data.name: hf`")
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def cache_dir() -> Path:
    """Where tokenized files go for data that has no Arrow files of its own to sit next to."""
    datasets = require("datasets", "`data.name: hf`")
    return Path(datasets.config.HF_DATASETS_CACHE) / "trainlab"


def tokenize_split(part: Any, function: Callable[..., dict[str, Any]], features: Any,
                   key: str, fn_kwargs: dict[str, Any]) -> str | None:
    """Tokenize ``part`` with ``function`` (batched) into an Arrow file; its path (None for an
    empty split).  ``key`` names the result: the same key reuses the file."""
    if len(part) == 0:
        return None
    new = fingerprint(getattr(part, "_fingerprint", None), key)
    where = [f.get("filename") for f in part.cache_files]
    folder = Path(where[0]).parent if where and where[0] else None
    cache_file = None  # datasets' own place: next to the split's Arrow files
    if folder is None or not os.access(folder, os.W_OK):
        cache_file = str(cache_dir() / f"{new}.arrow")
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        mapped = part.map(function, batched=True, batch_size=_MAP_BATCH, fn_kwargs=fn_kwargs,
                          remove_columns=part.column_names, features=features,
                          new_fingerprint=new, cache_file_name=cache_file,
                          writer_batch_size=_MAP_BATCH)
    files = [f["filename"] for f in mapped.cache_files]
    if len(files) != 1:  # map keeps its result in memory only for data with no files at all
        raise RuntimeError(f"tokenized split was not written to one file: {files}")
    return str(files[0])


def _rows(tok: Any, texts: list[Any], max_length: int) -> np.ndarray:
    enc = tok([str(t) for t in texts], padding="max_length", truncation=True,
              max_length=max_length, return_attention_mask=False, return_token_type_ids=False)
    return np.asarray(enc["input_ids"], dtype=np.int32).reshape(len(texts), max_length)


def _encode_labelled(batch: dict[str, list[Any]], tok: Any, text: str, label: str,
                     max_length: int, classes: list[str] | None) -> dict[str, Any]:
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([index[v] for v in batch[label]], dtype=np.int32)
    else:
        labels = np.asarray(batch[label], dtype=np.int64).astype(np.int32)
    return {"input_ids": _rows(tok, batch[text], max_length), "labels": labels}


def _documents(batch: dict[str, list[Any]], tok: Any, text: str) -> list[list[int]]:
    """Each non-empty document's token ids, end-of-text appended (as the in-memory path)."""
    docs = [str(t) for t in batch[text] if str(t).strip()]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    return [ids + eos for ids in tok(docs, add_special_tokens=False)["input_ids"]] if docs else []


def _encode_stream(batch: dict[str, list[Any]], tok: Any, text: str) -> dict[str, Any]:
    docs = _documents(batch, tok, text)
    ids = np.fromiter((t for doc in docs for t in doc), dtype=np.int32)
    return {"ids": ids}


def _encode_padded(batch: dict[str, list[Any]], tok: Any, text: str, max_length: int
                   ) -> dict[str, Any]:
    docs = _documents(batch, tok, text)
    rows = np.full((len(docs), max_length + 1), tok.pad_token_id, dtype=np.int32)
    targets = np.full((len(docs), max_length), IGNORE_INDEX, dtype=np.int32)
    for i, doc in enumerate(docs):
        ids = doc[: max_length + 1]
        rows[i, : len(ids)] = ids
        targets[i, : len(ids) - 1] = rows[i, 1: len(ids)]
    return {"input_ids": rows[:, :-1], "labels": targets}


def labelled_pairs(part: Any, tok: Any, text: str, label: str, max_length: int,
                   classes: list[str] | None, key: str) -> ArrowPairs:
    """A classification split tokenized to disk: (token ids ``[L]``, class id) pairs."""
    datasets = require("datasets", "`data.name: hf`")
    features = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32"), length=max_length),
        "labels": datasets.Value("int32")})
    kwargs = {"tok": tok, "text": text, "label": label, "max_length": max_length,
              "classes": classes}
    path = tokenize_split(part, _encode_labelled, features,
                          fingerprint("classification", key, text, label, max_length, classes),
                          kwargs)
    return ArrowPairs(path)


def lm_pairs(part: Any, tok: Any, text: str, max_length: int, pack: bool, key: str,
             name: str) -> ArrowPairs:
    """A language-modelling split tokenized to disk: packed windows or padded documents."""
    datasets = require("datasets", "`data.name: hf`")
    int32 = datasets.Value("int32")
    if pack:
        path = tokenize_split(part, _encode_stream, datasets.Features({"ids": int32}),
                              fingerprint("lm-stream", key, text), {"tok": tok, "text": text})
        pairs = ArrowPairs(path, window=max_length)
        if len(pairs) < 1:
            tokens = 0 if path is None else pairs._open()["ids"].rows
            raise ConfigError(f"`data.max_length`: {max_length} tokens is longer than a split of "
                              f"{name!r} ({tokens} tokens)", field="data.max_length")
        return pairs
    features = datasets.Features({"input_ids": datasets.List(int32, length=max_length),
                                  "labels": datasets.List(int32, length=max_length)})
    path = tokenize_split(part, _encode_padded, features,
                          fingerprint("lm-padded", key, text, max_length),
                          {"tok": tok, "text": text, "max_length": max_length})
    return ArrowPairs(path)


def arrow_dataset(name: str, parts: list[Any], text: str, label: str | None,
                  classes: list[str] | None, num_classes: int, tok: Any, tok_hash: str,
                  max_length: int, pack: bool) -> Dataset:
    """The three splits tokenized to disk: classification when ``label`` is given, else
    language modelling.  Each split is an :class:`ItemSplit` of :class:`ArrowPairs`."""
    key = [tok_hash, tok.eos_token_id, tok.pad_token_id]
    if label is not None:
        pairs = [labelled_pairs(p, tok, text, label, max_length, classes, json.dumps(key))
                 for p in parts]
        train, valid, test = (ItemSplit(p, len(p), "classification") for p in pairs)
        info = DataInfo(name, "classification", (max_length,), num_classes, len(train),
                        len(valid), len(test), vocab_size=len(tok),
                        pad_token_id=tok.pad_token_id)
    else:
        pairs = [lm_pairs(p, tok, text, max_length, pack, json.dumps(key), name) for p in parts]
        train, valid, test = (ItemSplit(p, len(p), "lm") for p in pairs)
        info = DataInfo(name, "lm", (max_length,), len(tok), len(train), len(valid), len(test),
                        tokens_per_example=max_length, vocab_size=len(tok),
                        pad_token_id=None if pack else tok.pad_token_id)
    return Dataset(info, train, valid, test)


__all__ = [
    "BYTES_PER_TOKEN",
    "IN_MEMORY_SHARE",
    "ArrowPairs",
    "arrow_dataset",
    "available_memory",
    "in_memory_bytes",
    "labelled_pairs",
    "lm_pairs",
    "memory_budget",
    "tokenize_split",
    "tokenizer_hash",
]
