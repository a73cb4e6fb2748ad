"""Datasets: each builder returns train/valid/test tensors that live in memory.

Splits are deterministic (a fixed split seed, independent of the run's seed) so every run of a
sweep sees the same examples.  ``data.limit`` caps the number of training examples.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from trainlab.components.base import Spec
from trainlab.errors import ConfigError
from trainlab.registry import Registry

if TYPE_CHECKING:  # torch is imported where data is built, not where specs are validated
    import torch

    from trainlab.components.items import ItemSplit

Task = Literal["classification", "regression", "lm"]


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data."""

    name: str
    task: Task
    input_shape: tuple[int, ...]  # one example, e.g. (1, 8, 8), (64,), or (seq_len,) of tokens
    num_outputs: int  # classes; vocabulary size for "lm"; target width for "regression"
    n_train: int
    n_valid: int
    n_test: int
    tokens_per_example: int = 1  # seq_len for language modelling, so tokens/s is derivable
    vocab_size: int | None = None  # tokenized text: the tokenizer's vocabulary size
    pad_token_id: int | None = None  # tokenized text padded with this id (None: no padding)
    notes: tuple[str, ...] = ()  # how the data was built, for the run's summary (notes)
    # Where the (train, valid, test) splits came from, in words ("hub split validation",
    # "15 % of train held out, split_seed 0"); () where the builder does not say.  The run's
    # summary records them with the sizes (split_summary): which split is which is never a
    # guess in `trainlab show` or the report.
    sources: tuple[str, ...] = ()

    def example_batch(self, batch_size: int) -> torch.Tensor:
        """Zeros shaped like a batch of inputs (token ids for text), for tracing."""
        import torch

        dtype = torch.long if self.task == "lm" or self.vocab_size is not None else torch.float32
        return torch.zeros((batch_size, *self.input_shape), dtype=dtype)


@dataclass(frozen=True)
class Split:
    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def head(self, n: int) -> Split:
        return Split(self.inputs[:n], self.targets[:n])

    def to(self, device: torch.device) -> Split:
        return Split(self.inputs.to(device), self.targets.to(device))


@dataclass(frozen=True)
class Dataset:
    """A dataset's three splits: tensors in memory (:class:`Split`), or items of a torch
    Dataset read anew for every batch (:class:`~trainlab.components.items.ItemSplit`, the
    user's own data with ``data.name: python``)."""

    info: DataInfo
    train: Split | ItemSplit
    valid: Split | ItemSplit
    test: Split | ItemSplit
    vocab: tuple[str, ...] | None = None


class LoaderSpec(BaseModel):
    """How a Dataset's items are loaded (``torch.utils.data.DataLoader`` settings).

    Used for data that is not a tensor in memory (a map-style Dataset of your own, memory-mapped
    Hugging Face data); tensors in memory are indexed a batch at a time and need none of it.
    Every field is sweepable: ``grid: {data.loader.workers: [0, 2, 4]}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: NonNegativeInt = Field(
        default=0, description="worker processes loading batches (0: in the training process)")
    pin_memory: Literal["auto"] | bool = Field(
        default="auto", description="page-locked host batches (auto: when training on CUDA)")
    prefetch: PositiveInt = Field(
        default=2, description="batches each worker loads ahead (with workers > 0)")
    persistent: bool = Field(
        default=True, description="keep the workers alive between epochs (with workers > 0)")


class DataSpec(Spec):
    """Options every dataset has."""

    batch_size: PositiveInt = Field(default=32, description="training batch size")
    eval_batch_size: PositiveInt | None = Field(
        default=None,
        description="batch size for validation and test (default: max(batch_size, 256), "
                    "batch_size for language models; a split at most a quarter over the "
                    "default is one batch)"
    )
    limit: PositiveInt | None = Field(default=None, description="cap on training examples")
    loader: LoaderSpec | None = Field(
        default=None, description="DataLoader settings for data that is not a tensor in memory: "
        "{workers: 0, pin_memory: auto, prefetch: 2, persistent: true}",
        json_schema_extra={"run_id": "when set"})


class _SplitFractions(DataSpec):
    valid_fraction: float = Field(default=0.15, ge=0.0, lt=1.0, description="share for validation")
    test_fraction: float = Field(default=0.15, ge=0.0, lt=1.0, description="share for test")
    split_seed: int = Field(default=0, description="seed of the split (not the run's seed)")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> _SplitFractions:
        if self.valid_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"valid_fraction + test_fraction must be < 0.9; got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        return self


Builder = Callable[..., Dataset]
DATASETS: Registry[Builder] = Registry("dataset", base=DataSpec)

_CACHE: dict[str, Dataset] = {}


def load_dataset(spec: DataSpec, model: Spec | None = None, *,
                 steps_per_epoch: int | None = None) -> Dataset:
    """The dataset ``spec`` names, with ``limit`` applied; built once per process.

    ``steps_per_epoch`` is ``train.steps_per_epoch``: streaming data (a train split with no
    length, :mod:`trainlab.components.streams`) needs it and gets epochs of that many batches;
    data with a length refuses it.

    Text datasets (a ``tokenizer`` field) are tokenized with ``data.tokenizer``, where
    ``auto`` means the tokenizer of ``model`` (the run's model spec); the cache key includes
    the tokenizer actually used.
    """
    tokenizer = tokenizer_source(spec, model)
    # A user's data function (name: python) is found relative to the config's folder: two
    # folders with the same file may still read different data files beside it.
    root = getattr(spec, "_root", None)
    key = json.dumps([spec.model_dump(mode="json",
                                      exclude={"batch_size", "eval_batch_size", "loader"}),
                      tokenizer] + ([root] if root is not None else []), sort_keys=True)
    if key not in _CACHE:
        entry = DATASETS.get(spec.name, field="data.name")
        if "tokenizer" in type(spec).model_fields:
            data: Dataset = entry.build(spec, tokenizer=tokenizer)
        else:
            data = entry.build(spec)
        if spec.limit is not None and spec.limit < len(data.train):
            sources = data.info.sources
            if sources:
                sources = (f"{sources[0]}; the first {spec.limit} of {len(data.train)} "
                           "(data.limit)", *sources[1:])  # head(limit)
            data = replace(data, train=data.train.head(spec.limit),
                           info=replace(data.info, n_train=spec.limit, sources=sources))
        _CACHE[key] = data
    return _fit_epoch(_CACHE[key], steps_per_epoch, spec.batch_size)


def _fit_epoch(data: Dataset, steps_per_epoch: int | None, batch_size: int) -> Dataset:
    """``data`` with a streaming train split sized to ``steps_per_epoch`` batches (a fresh
    split each call: its notes are one run's); data with a length as it is."""
    train = data.train
    if not getattr(train, "streams", False):
        if steps_per_epoch is not None:
            raise ConfigError(
                f"`train.steps_per_epoch`: {steps_per_epoch} is for streaming data (an "
                f"IterableDataset, or hf data with streaming: true); dataset {data.info.name!r} "
                f"has {len(train)} training examples and an epoch is all of them; leave "
                "train.steps_per_epoch unset", field="train.steps_per_epoch")
        return data
    if steps_per_epoch is None:
        raise ConfigError(
            f"`train.steps_per_epoch`: dataset {data.info.name!r} streams (its train split has "
            "no length), so an epoch needs a number of steps; set train.steps_per_epoch to a "
            "positive integer, e.g. --set train.steps_per_epoch=100",
            field="train.steps_per_epoch")
    sized = train.sized(steps_per_epoch, batch_size)  # type: ignore[union-attr]
    return replace(data, train=sized, info=replace(data.info, n_train=len(sized)))


def tokenizer_source(spec: DataSpec, model: Spec | None) -> str | None:
    """The tokenizer a text dataset uses: ``data.tokenizer``, or for ``auto`` the model's (None
    when the data has no tokenizer field or the model has no tokenizer)."""
    name = getattr(spec, "tokenizer", None)
    if name is None:
        return None
    if name != "auto":
        return str(name)
    source = getattr(model, "tokenizer_source", None)
    return str(source()) if callable(source) else None


def split_summary(info: DataInfo) -> dict[str, dict[str, Any]]:
    """The run summary's ``splits``: per split (train, valid, test) its size and, where the
    builder said, where it came from.  Sizes count examples (sequences of
    ``tokens_per_example`` tokens for language modelling), after ``data.limit``."""
    unit = f"sequences of {info.tokens_per_example} tokens" if info.task == "lm" else "examples"
    out: dict[str, dict[str, Any]] = {}
    for i, (name, size) in enumerate((("train", info.n_train), ("valid", info.n_valid),
                                      ("test", info.n_test))):
        out[name] = {"size": int(size), "unit": unit}
        if i < len(info.sources) and info.sources[i]:
            out[name]["source"] = info.sources[i]
    return out


def held_out_sources(valid: float, test: float, seed: int, whole: str = "the data"
                     ) -> tuple[str, str, str]:
    """The sources of splits carved by :func:`_split_indices` (a fraction 0 keeps the
    builder's own split, which the caller names)."""
    def part(fraction: float) -> str:
        return f"{fraction:.0%} of {whole} held out (split_seed {seed})"
    rest = "the rest of " + whole if valid or test else whole
    return rest, part(valid), part(test)


def _split_indices(n: int, valid: float, test: float, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(n)
    n_valid, n_test = round(n * valid), round(n * test)
    return order[n_valid + n_test:], order[:n_valid], order[n_valid:n_valid + n_test]


def _from_arrays(name: str, x: np.ndarray, y: np.ndarray, task: Task,
                 spec: _SplitFractions, input_shape: tuple[int, ...] | None = None) -> Dataset:
    tr, va, te = _split_indices(len(x), spec.valid_fraction, spec.test_fraction, spec.split_seed)
    data = _assemble(name, (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te]), task, input_shape)
    sources = held_out_sources(spec.valid_fraction, spec.test_fraction, spec.split_seed,
                               f"the {len(x)} examples")
    return replace(data, info=replace(data.info, sources=sources))


def _assemble(name: str, train: tuple[np.ndarray, np.ndarray],
              valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              task: Task, input_shape: tuple[int, ...] | None = None) -> Dataset:
    import torch

    def split(xy: tuple[np.ndarray, np.ndarray]) -> Split:
        x = torch.as_tensor(np.ascontiguousarray(xy[0]), dtype=torch.float32)
        if input_shape is not None:
            x = x.reshape(len(x), *input_shape)
        if task == "classification":
            y = torch.as_tensor(np.ascontiguousarray(xy[1]), dtype=torch.long)
        else:
            y = torch.as_tensor(np.ascontiguousarray(xy[1]), dtype=torch.float32)
            if y.ndim == 1:
                y = y[:, None]
        return Split(x, y)

    tr, va, te = split(train), split(valid), split(test)
    if task == "classification":
        all_y = np.concatenate([train[1], valid[1], test[1]])
        if all_y.size and (all_y.min() < 0 or not np.all(np.equal(np.mod(all_y, 1), 0))):
            raise ConfigError(f"data {name!r}: classification labels must be integers >= 0")
        outputs = int(all_y.max()) + 1 if all_y.size else 0
    else:
        outputs = int(tr.targets.shape[1])
    info = DataInfo(name, task, tuple(tr.inputs.shape[1:]), outputs, len(tr), len(va), len(te))
    return Dataset(info, tr, va, te)


# --- digits -----------------------------------------------------------------------------------


class DigitsSpec(_SplitFractions):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes)."""


@DATASETS.register("digits", spec=DigitsSpec)
def build_digits(spec: DigitsSpec) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (shipped with trainlab) as 1x8x8 images in [0, 1]."""
    data, target = _digits_arrays()
    x = (data / 16.0).astype(np.float32)
    return _from_arrays("digits", x, target, "classification", spec, (1, 8, 8))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as scikit-learn's ``load_digits`` gives them, from the copy trainlab ships.

    ``trainlab/data/digits.csv.gz`` is scikit-learn's file (BSD-3, see LICENSE-digits.txt next
    to it); the tests check it against ``load_digits()``, so scikit-learn is not needed here.
    """
    source = importlib.resources.files("trainlab") / "data" / "digits.csv.gz"
    with importlib.resources.as_file(source) as path:
        table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


# --- synthetic --------------------------------------------------------------------------------


class SyntheticSpec(_SplitFractions):
    """Random inputs labelled by a random linear teacher: learnable, any shape, no files."""

    task: Literal["classification", "regression"] = "classification"
    n_samples: PositiveInt = 2048
    shape: list[PositiveInt] = Field(default_factory=lambda: [32], min_length=1,
                                     description="shape of one example, e.g. [1, 28, 28]")
    n_classes: int = Field(default=10, ge=2)
    targets: PositiveInt = Field(default=1, description="regression target width")
    noise: float = Field(default=0.1, ge=0.0, description="noise added to the teacher's scores")
    seed: int = Field(default=0, description="seed of the generated data")


@DATASETS.register("synthetic", spec=SyntheticSpec)
def build_synthetic(spec: SyntheticSpec) -> Dataset:
    """Gaussian inputs of a given shape; labels from a random linear teacher plus noise."""
    rng = np.random.default_rng(spec.seed)
    shape = tuple(spec.shape)
    width = int(np.prod(shape))
    x = rng.standard_normal((spec.n_samples, width)).astype(np.float32)
    outputs = spec.n_classes if spec.task == "classification" else spec.targets
    teacher = rng.standard_normal((width, outputs)) / np.sqrt(width)
    scores = x @ teacher + spec.noise * rng.standard_normal((spec.n_samples, outputs))
    y = scores.argmax(1) if spec.task == "classification" else scores.astype(np.float32)
    return _from_arrays("synthetic", x, y, spec.task, spec, shape)


# --- local files: npz and csv -----------------------------------------------------------------


class _FileSpec(_SplitFractions):
    path: str = Field(description="path of the local file")
    task: Literal["auto", "classification", "regression"] = Field(
        default="auto", description="auto: classification when every target is an integer"
    )


def _infer_task(y: np.ndarray, task: str) -> Task:
    if task != "auto":
        return task  # type: ignore[return-value]
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.all(np.equal(np.mod(y, 1), 0))
    )
    return "classification" if integral and y.ndim == 1 else "regression"


def _existing(path: str, field: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"`{field}`: no such file {path!r}", field=field)
    return p


class NpzSpec(_FileSpec):
    """A local .npz with arrays x, y (split here) or x_train, y_train, x_valid, ... (kept)."""


def _rows(rows: np.ndarray, first: int = 0) -> str:
    shown = ", ".join(str(int(r) + first) for r in rows[:10])
    return shown + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


def _check_finite(path: str, name: str, values: np.ndarray) -> None:
    """NaN or inf inputs or targets: refused before training (they would only show up later
    as a diverged loss, blaming the run)."""
    if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(values.dtype,
                                                                          np.complexfloating):
        return
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1)) if values.ndim else \
        np.array([0])
    raise ConfigError(
        f"data file {path!r}: array {name!r} has {int(bad.sum())} NaN or infinite value(s), in "
        f"rows {_rows(rows)} (counting from 0); training on them would diverge. Remove or fill "
        "those rows first.", field="data.path")


@DATASETS.register("npz", spec=NpzSpec)
def build_npz(spec: NpzSpec) -> Dataset:
    """A local NumPy .npz file: keys x and y, or x_train/y_train/x_valid/y_valid/x_test/y_test."""
    import zipfile
    import zlib

    path = _existing(spec.path, "data.path")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            loaded = {k: arrays[k] for k in keys & {"x", "y", "x_train", "y_train", "x_valid",
                                                    "y_valid", "x_test", "y_test"}}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as exc:
        raise ConfigError(
            f"`data.path`: {spec.path!r} could not be read as a NumPy .npz file "
            f"({type(exc).__name__}: {exc}); write it with numpy.savez(path, x=..., y=...)",
            field="data.path") from None
    for name in sorted(loaded):
        _check_finite(spec.path, name, loaded[name])
    if {"x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"} <= keys:
        parts = [(loaded[f"x_{s}"], loaded[f"y_{s}"]) for s in ("train", "valid", "test")]
        task = _infer_task(np.concatenate([p[1] for p in parts]), spec.task)
        data = _assemble(path.stem, parts[0], parts[1], parts[2], task)
        return replace(data, info=replace(data.info, sources=tuple(
            f"the file's x_{s}, y_{s}" for s in ("train", "valid", "test"))))
    if {"x", "y"} <= keys:
        x, y = loaded["x"], loaded["y"]
        if len(x) != len(y):
            raise ConfigError(f"data file {spec.path!r}: x has {len(x)} rows, y has {len(y)}")
        return _from_arrays(path.stem, x, y, _infer_task(y, spec.task), spec, x.shape[1:])
    raise ConfigError(
        f"data file {spec.path!r} has arrays {sorted(keys)}; expected x and y, or "
        "x_train, y_train, x_valid, y_valid, x_test and y_test", field="data.path")


class CsvSpec(_FileSpec):
    """A local CSV file with a header row: numeric feature columns and one target column."""

    target: str | None = Field(default=None, description="target column (default: the last)")
    delimiter: str = ","


@DATASETS.register("csv", spec=CsvSpec)
def build_csv(spec: CsvSpec) -> Dataset:
    """A local CSV with a header: numeric features and one target column (default: the last)."""
    import pandas as pd

    path = _existing(spec.path, "data.path")
    try:
        frame = pd.read_csv(path, sep=spec.delimiter)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"data file {spec.path!r} could not be read as CSV: {exc}") from None
    target = spec.target if spec.target is not None else str(frame.columns[-1])
    if target not in frame.columns:
        raise ConfigError(f"`data.target`: column {target!r} is not in {spec.path!r}; columns: "
                          f"{', '.join(map(str, frame.columns))}", field="data.target")
    # Missing cells (empty, nan, NA) and infinities: named by column and line before anything
    # else, since they also make a numeric column look like text.
    numeric = {c: pd.api.types.is_numeric_dtype(frame[c]) and
               not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns}
    holes = []
    for column in frame.columns:
        missing = np.array(frame[column].isna(), dtype=bool)
        if numeric[column]:
            missing |= ~np.isfinite(frame[column].to_numpy(np.float64, na_value=np.nan))
        if missing.any():
            holes.append(f"column {str(column)!r} on line(s) "
                         f"{_rows(np.flatnonzero(missing), 2)}")
    if holes:
        raise ConfigError(
            f"data file {spec.path!r} has missing, NaN or infinite cells: {'; '.join(holes)} "
            "(line 1 is the header); fill or drop those rows first.", field="data.path")
    features = frame.drop(columns=[target])
    bad = [str(c) for c in features.columns if not numeric[c]]
    if bad:
        raise ConfigError(f"data file {spec.path!r}: feature columns must be numeric; "
                          f"not numeric: {', '.join(bad)}")
    if numeric[target]:
        y = frame[target].to_numpy()
        task = _infer_task(y, spec.task)
    else:  # text labels: classes, in sorted order
        if spec.task == "regression":
            raise ConfigError(f"`data.task`: regression needs a numeric target, but column "
                              f"{target!r} of {spec.path!r} holds text", field="data.task")
        task = "classification"
        y = np.unique(frame[target].astype(str).to_numpy(), return_inverse=True)[1]
    return _from_arrays(path.stem, features.to_numpy(np.float32), y, task, spec)


# --- pydoc-lm ---------------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")


class PydocLMSpec(DataSpec):
    """Word-level language modelling on the documentation text CPython ships (pydoc_data)."""

    seq_len: int = Field(default=64, ge=2, description="tokens per training sequence")
    min_freq: PositiveInt = Field(default=2, description="rarer words become <unk>")
    valid_fraction: float = Field(default=0.1, gt=0.0, lt=0.5, description="share of tokens")
    test_fraction: float = Field(default=0.1, gt=0.0, lt=0.5, description="share of tokens")
    split_seed: int = Field(default=0, description="seed of the paragraph split")


def pydoc_paragraphs() -> list[list[str]]:
    """The paragraphs of ``pydoc_data.topics`` (topics in sorted order), each as lower-cased
    word tokens ending in ``<eos>``."""
    from pydoc_data.topics import topics

    paragraphs = (p for k in sorted(topics) for p in re.split(r"\n\s*\n", topics[k]))
    return [[*words, "<eos>"] for words in (_WORD.findall(p.lower()) for p in paragraphs)
            if words]


@DATASETS.register("pydoc-lm", spec=PydocLMSpec)
def build_pydoc_lm(spec: PydocLMSpec) -> Dataset:
    """Word-level LM corpus from CPython's bundled docs: paragraphs split into train, valid
    and test by a fixed seed; the vocabulary comes from train (rarer words are <unk>)."""
    import torch

    docs = pydoc_paragraphs()
    order = np.random.default_rng(spec.split_seed).permutation(len(docs))
    total = sum(len(d) for d in docs)
    parts: list[list[str]] = [[], [], []]  # valid, test, train
    for i in order:  # fill valid, then test, to their share of tokens; the rest is train
        if len(parts[0]) < spec.valid_fraction * total:
            parts[0].extend(docs[i])
        elif len(parts[1]) < spec.test_fraction * total:
            parts[1].extend(docs[i])
        else:
            parts[2].extend(docs[i])
    valid_words, test_words, train_words = parts
    counts = Counter(train_words)
    kept = sorted(w for w, c in counts.items() if c >= spec.min_freq and w != "<unk>")
    vocab = ["<unk>", *kept]
    index = {w: i for i, w in enumerate(vocab)}

    def chunks(words: list[str]) -> Split:
        ids = torch.tensor([index.get(w, 0) for w in words], dtype=torch.long)
        n = (len(ids) - 1) // spec.seq_len
        if n < 1:
            raise ConfigError(f"`data.seq_len` = {spec.seq_len} is longer than a split of "
                              f"pydoc-lm ({len(ids)} tokens)", field="data.seq_len")
        # Non-overlapping windows; targets are the inputs shifted by one token.
        x = ids[: n * spec.seq_len].view(n, spec.seq_len)
        y = ids[1: n * spec.seq_len + 1].view(n, spec.seq_len)
        return Split(x, y)

    train, valid, test = chunks(train_words), chunks(valid_words), chunks(test_words)
    held = f"of the tokens, whole paragraphs, held out (split_seed {spec.split_seed})"
    info = DataInfo("pydoc-lm", "lm", (spec.seq_len,), len(vocab), len(train), len(valid),
                    len(test), tokens_per_example=spec.seq_len,
                    sources=("the remaining paragraphs", f"{spec.valid_fraction:.0%} {held}",
                             f"{spec.test_fraction:.0%} {held}"))
    return Dataset(info, train, valid, test, tuple(vocab))
