"""Hugging Face datasets (``hf``) and the offline ``vader-sentiment`` text set.

Text is tokenized once with the run's tokenizer (``data.tokenizer: auto`` is the model's),
padded and truncated to ``data.max_length``; the token ids become the ``inputs`` tensor
``[N, L]`` and stay in memory like every other dataset.  Language-model text is packed: the
documents of a split are concatenated (end-of-text between them) and cut into windows of
``max_length`` tokens whose targets are the next tokens, so no position is padding; with
``pack: false`` each document is one padded example and the targets at padding are -100
(ignored by the loss and by token counts).  Image columns (MNIST, Fashion-MNIST, CIFAR-10)
become float tensors ``[N, C, H, W]`` in [0, 1].

The tokenized tensors are cached in memory per process (keyed by the data options and the
tokenizer); on disk only the ``datasets`` library's own download cache is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, PositiveInt, field_validator

from trainlab.components.datasets import (
    DATASETS,
    DataInfo,
    Dataset,
    Split,
    _split_indices,
    _SplitFractions,
    held_out_sources,
)
from trainlab.components.hf import load_tokenizer, require
from trainlab.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where data is built, not where specs are validated
    import torch

IGNORE_INDEX = -100  # torch's cross_entropy ignore_index: targets at padding


class _TextOptions(_SplitFractions):
    max_length: int = Field(default=64, ge=2, description="tokens per example (pad/truncate)")
    tokenizer: str = Field(default="auto",
                           description="auto: the model's tokenizer; or a hub id or directory")
    eval_limit: PositiveInt | None = Field(default=None,
                                           description="cap on validation and test examples")


def _require_tokenizer(source: str | None, data: str) -> Any:
    if source is None:
        raise ConfigError(
            f"`data.tokenizer`: dataset {data!r} is text and needs a tokenizer; `auto` takes the "
            "model's, but this model has none. Use model.name hf or minilm, or set "
            "data.tokenizer to a tokenizer directory or hub id", field="data.tokenizer")
    return load_tokenizer(source)


def encode(tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """Token ids ``[N, max_length]``, padded on the right and truncated."""
    import torch

    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=False)
    return torch.tensor(enc["input_ids"], dtype=torch.long).reshape(len(texts), max_length)


def _text_info(name: str, tokenizer: Any, train: Split, valid: Split, test: Split,
               num_classes: int, max_length: int) -> DataInfo:
    return DataInfo(name, "classification", (max_length,), num_classes, len(train), len(valid),
                    len(test), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)


def _cap(split: Split, limit: int | None) -> Split:
    return split.head(limit) if limit is not None and limit < len(split) else split


# --- vader-sentiment --------------------------------------------------------------------------


class VaderSpec(_TextOptions):
    """VADER's human-rated sentiment lexicon as binary text classification."""

    max_length: int = Field(default=16, ge=2, description="tokens per example (pad/truncate)")
    threshold: float = Field(default=1.0, ge=0.0,
                             description="keep entries with |mean valence| > threshold")


def vader_lexicon() -> list[tuple[str, float]]:
    """(token, mean valence in [-4, 4]) for each token of the lexicon ``vaderSentiment`` ships."""
    package = require("vaderSentiment", "`data.name: vader-sentiment`", examples=True,
                      field="data.name")
    path = Path(package.__file__).parent / "vader_lexicon.txt"
    entries: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        # 14 tokens appear twice (emoticons such as 'd:' rated both ways): keep the first, so
        # no token lands in two splits.
        if len(parts) >= 2 and parts[0].strip():
            entries.setdefault(parts[0].strip(), float(parts[1]))
    return list(entries.items())


@DATASETS.register("vader-sentiment", spec=VaderSpec)
def build_vader(spec: VaderSpec, tokenizer: str | None = None) -> Dataset:
    """Words and emoticons of VADER's lexicon (vaderSentiment), label 1 if mean valence > threshold, 0 if < -threshold."""  # noqa: E501
    import torch

    tok = _require_tokenizer(tokenizer, "vader-sentiment")
    kept = [(w, v) for w, v in vader_lexicon() if abs(v) > spec.threshold]
    if len(kept) < 20:
        raise ConfigError(f"`data.threshold`: only {len(kept)} lexicon entries have |valence| > "
                          f"{spec.threshold}; use a threshold below 3", field="data.threshold")
    words = [w for w, _ in kept]
    labels = torch.tensor([int(v > 0) for _, v in kept], dtype=torch.long)
    ids = encode(tok, words, spec.max_length)
    tr, va, te = _split_indices(len(words), spec.valid_fraction, spec.test_fraction,
                                spec.split_seed)
    train = Split(ids[tr], labels[tr])
    valid = _cap(Split(ids[va], labels[va]), spec.eval_limit)
    test = _cap(Split(ids[te], labels[te]), spec.eval_limit)
    info = _text_info("vader-sentiment", tok, train, valid, test, 2, spec.max_length)
    sources = held_out_sources(spec.valid_fraction, spec.test_fraction, spec.split_seed,
                               f"the {len(words)} lexicon entries")
    return Dataset(replace(info, sources=sources), train, valid, test)


# --- Hugging Face datasets --------------------------------------------------------------------


class HFDataSpec(_TextOptions):
    """A dataset through ``datasets.load_dataset`` (hub id, local files, or a saved dataset)."""

    path: str = Field(description="hub id (glue, ag_news, wikitext, mnist, ...), a builder (csv, "
                                  "json) with data_files, or a save_to_disk directory")
    config: str | None = Field(default=None, description="subset, e.g. sst2, cola")
    data_files: dict[str, str] | str | None = Field(
        default=None, description="local files for csv/json/parquet builders")
    revision: str | None = None
    text: str | None = Field(default=None, description="text column (default: text or sentence)")
    image: str | None = Field(default=None, description="image column (default: the Image one)")
    label: str | None = Field(default="label", description="label column (null: language model)")
    task: Literal["auto", "classification", "lm"] = Field(
        default="auto", description="auto: lm when there is no label column")
    pack: bool = Field(default=True, description="lm: concatenate documents into full windows")
    train_split: str = "train"
    valid_split: str | None = Field(
        default=None, description="default: validation/valid/dev if present and not the test set, "
                                  "else a valid_fraction of train")
    test_split: str | None = Field(
        default=None, description="default: test if labelled, else validation (as GLUE), "
                                  "else a test_fraction of train")
    in_memory: bool | Literal["auto"] | None = Field(
        default=None, description="text: true holds the tokenized splits as tensors; false "
        "tokenizes once to Arrow files (datasets.map, cached on disk) and reads batches from "
        "them memory-mapped, so memory does not grow with the data; auto (null): in memory "
        "unless tokenizing there would take over half the available memory",
        json_schema_extra={"run_id": "when set"})
    streaming: bool | None = Field(
        default=None, description="true: stream the train split (load_dataset(..., "
        "streaming=True); a save_to_disk directory through to_iterable_dataset): tokenized as "
        "read, never held whole; epochs of train.steps_per_epoch batches; validation and test "
        "are the dataset's own splits, read into memory up to eval_limit",
        json_schema_extra={"run_id": "when set"})
    shuffle_buffer: PositiveInt | None = Field(
        default=None, description="streaming: rows shuffled at a time (.shuffle(seed, "
        "buffer_size), seeded by train.seed and the epoch); default 1000",
        json_schema_extra={"run_id": "when set"})

    @field_validator("in_memory")
    @classmethod
    def _auto_is_unset(cls, value: bool | str | None) -> bool | None:
        # `auto` and leaving it out are one setting, with one run id.
        return None if value == "auto" else value  # type: ignore[return-value]


def _load_hf(spec: HFDataSpec) -> Any:
    datasets = require("datasets", "`data.name: hf`")
    local = Path(spec.path).expanduser()
    try:
        if local.is_dir() and any((local / f).is_file() for f in
                                  ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(spec.path, spec.config, data_files=spec.data_files,
                                           revision=spec.revision)
    except Exception as exc:  # offline, unknown id, bad files: all bad input here
        first = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {first[0][:300]}" if first else type(exc).__name__
        raise ConfigError(
            f"`data.path`: dataset {spec.path!r}" + (f" (config {spec.config!r})" if spec.config
                                                     else "")
            + f" could not be loaded ({detail}). Without network access use local files "
            "(data_files) or a save_to_disk directory", field="data.path") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _labelled(split: Any, label: str | None) -> bool:
    """Whether every row has a label (GLUE's test splits have -1 throughout)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if label is None or len(split) == 0:
        return len(split) > 0
    for column in _label_batches(split, label):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return True
        if len(column) and int(pc.min(column).as_py()) < 0:
            return False
    return True


def _choose_splits(spec: HFDataSpec, ds: Any) -> tuple[str | None, str | None]:
    """The dataset's own (valid, test) split names; None where they are carved from train."""
    names = list(ds.keys())
    for field_, wanted in (("train_split", spec.train_split), ("valid_split", spec.valid_split),
                           ("test_split", spec.test_split)):
        if wanted is not None and wanted not in names:
            raise ConfigError(f"`data.{field_}`: dataset {spec.path!r} has no split {wanted!r}; "
                              f"its splits: {', '.join(names)}", field=f"data.{field_}")
    label = spec.label if spec.label in ds[spec.train_split].column_names else None
    dev = next((n for n in ("validation", "valid", "dev") if n in names), None)
    test = spec.test_split
    if test is None:
        if "test" in names and _labelled(ds["test"], label):
            test = "test"
        elif dev is not None and dev != spec.valid_split:
            test = dev  # GLUE hides its test labels: report on validation, as papers do
    valid = spec.valid_split
    if valid is None and dev is not None and dev != test:
        valid = dev
    return valid, test


def _columns(spec: HFDataSpec, split: Any) -> tuple[str | None, str | None, str | None]:
    """(text, image, label) column names of the split, checked."""
    datasets = require("datasets", "`data.name: hf`")
    cols = list(split.column_names)
    features = split.features

    def check(field_: str, name: str | None) -> None:
        if name is not None and name not in cols:
            raise ConfigError(f"`data.{field_}`: no column {name!r} in dataset {spec.path!r}; "
                              f"columns: {', '.join(cols)}", field=f"data.{field_}")

    check("text", spec.text)
    check("image", spec.image)
    label = spec.label if spec.label in cols else None
    if spec.label is not None and label is None and spec.task == "classification":
        check("label", spec.label)
    image = spec.image or next((c for c in cols if isinstance(features[c], datasets.Image)),
                               None)
    text = spec.text
    if text is None and image is None:
        strings = [c for c in cols if getattr(features[c], "dtype", None) in ("string",
                                                                               "large_string")]
        text = next((c for c in ("text", "sentence", "content") if c in strings),
                    strings[0] if strings else None)
        if text is None:
            raise ConfigError(f"`data.text`: dataset {spec.path!r} has no text or image column; "
                              f"columns: {', '.join(cols)}", field="data.text")
    return text, image, label


@DATASETS.register("hf", spec=HFDataSpec)
def build_hf_data(spec: HFDataSpec, tokenizer: str | None = None) -> Dataset:
    """A Hugging Face dataset: text classification, language modelling or image classification."""
    if spec.streaming:  # the train split streams (components/hf_stream.py)
        from trainlab.components.hf_stream import build_stream

        return build_stream(spec, tokenizer, _columns, _require_tokenizer)
    ds = _load_hf(spec)
    if spec.train_split not in ds:
        raise ConfigError(f"`data.train_split`: dataset {spec.path!r} has no split "
                          f"{spec.train_split!r}; its splits: {', '.join(ds.keys())}",
                          field="data.train_split")
    text, image, label = _columns(spec, ds[spec.train_split])
    task = spec.task if spec.task != "auto" else ("classification" if label else "lm")
    if task == "classification" and label is None:
        raise ConfigError(f"`data.label`: classification needs a label column; dataset "
                          f"{spec.path!r} has none named {spec.label!r}", field="data.label")
    if task == "lm" and image is not None:
        raise ConfigError("`data.task`: lm needs a text column, not images", field="data.task")
    valid_name, test_name = _choose_splits(spec, ds)
    parts = _carve(spec, ds, valid_name, test_name)
    name = spec.path if spec.config is None else f"{spec.path}/{spec.config}"
    sources = _hf_sources(spec, ds, valid_name, test_name)
    if image is not None:
        if spec.in_memory is False:
            raise ConfigError(f"`data.in_memory`: false reads tokenized text from disk; image "
                              f"dataset {name!r} is held in memory (leave data.in_memory unset)",
                              field="data.in_memory")
        data = _image_dataset(name, parts, image, label, spec)
        return replace(data, info=replace(data.info, sources=sources))
    tok = _require_tokenizer(tokenizer, name)
    assert text is not None  # _columns found a text column where there is no image one
    in_memory, note = _in_memory(spec, parts, text, task)
    if not in_memory:
        from trainlab.components.arrow_data import arrow_dataset, tokenizer_hash

        labelled = label if task == "classification" else None
        classes, n = _label_classes(parts, labelled) if labelled else (None, 0)
        data = arrow_dataset(name, parts, text, labelled,
                             classes, n, tok, tokenizer_hash(tok), spec.max_length, spec.pack)
        files = {str(Path(path).parent) for s in (data.train, data.valid, data.test)
                 if (path := getattr(getattr(s, "items", None), "path", None)) is not None}
        note = (f"{note}: batches read from memory-mapped Arrow files in {', '.join(sorted(files))}"
                " (tokenized once with datasets.map; reused while the data, tokenizer and "
                "options stay the same)")
    elif task == "lm":
        data = _lm_dataset(name, parts, text, tok, spec)
    else:
        data = _text_dataset(name, parts, text, label, tok, spec)  # type: ignore[arg-type]
    return replace(data, info=replace(data.info, sources=sources,
                                      notes=(note,) if note else data.info.notes))


def _hf_sources(spec: HFDataSpec, ds: Any, valid_name: str | None, test_name: str | None
                ) -> tuple[str, str, str]:
    """Where each split comes from, in words (the run's summary): the dataset's own split, or
    a share of train held out; GLUE's validation as the test split says why."""
    train = f"dataset split {spec.train_split}"
    vf = spec.valid_fraction if valid_name is None else 0.0
    tf = spec.test_fraction if test_name is None else 0.0
    held = held_out_sources(vf, tf, spec.split_seed, train)
    valid = f"dataset split {valid_name}" if valid_name else held[1]
    test = f"dataset split {test_name}" if test_name else held[2]
    if test_name is not None and test_name != "test" and spec.test_split is None \
            and "test" in ds:
        test += " (split test has no labels)"
    n = len(ds[spec.train_split])
    rest = n - round(n * vf) - round(n * tf)
    if spec.limit is not None and spec.limit < rest:  # _carve shuffles, then takes the first
        held = (f"{held[0]}; {spec.limit} of {rest}, drawn by split_seed (data.limit)",
                *held[1:])
    if spec.eval_limit is not None:
        valid, test = (f"{text}; at most the first {spec.eval_limit} (data.eval_limit)"
                       for text in (valid, test))
    return held[0], valid, test


def _in_memory(spec: HFDataSpec, parts: list[Any], text: str, task: str
               ) -> tuple[bool, str | None]:
    """Whether the tokenized splits are held as tensors, and for the run's summary how
    ``auto`` decided (None where ``in_memory: true`` says so)."""
    from trainlab.components import arrow_data

    if isinstance(spec.in_memory, bool):
        return spec.in_memory, None if spec.in_memory else "data.in_memory false"
    need = arrow_data.in_memory_bytes(parts, text, task, spec.pack, spec.max_length)
    budget = arrow_data.memory_budget()
    mib = (f"tokenizing in memory would peak at ~{need / 2**20:.0f} MiB, budget "
           f"{budget / 2**20:.0f} MiB = {arrow_data.IN_MEMORY_SHARE:.0%} of the available "
           "memory")
    if need <= budget:
        return True, f"data.in_memory auto: tokenized splits held in memory ({mib})"
    return False, f"data.in_memory auto: over the memory budget ({mib})"


def _carve(spec: HFDataSpec, ds: Any, valid_name: str | None, test_name: str | None
           ) -> list[Any]:
    """[train, valid, test] dataset objects; missing ones carved from train by split_seed."""
    train = ds[spec.train_split]
    valid = ds[valid_name] if valid_name else None
    test = ds[test_name] if test_name else None
    if valid is None or test is None:
        vf = spec.valid_fraction if valid is None else 0.0
        tf = spec.test_fraction if test is None else 0.0
        tr, va, te = _split_indices(len(train), vf, tf, spec.split_seed)
        valid = train.select(va) if valid is None else valid
        test = train.select(te) if test is None else test
        train = train.select(tr)
    else:
        train = train.shuffle(seed=spec.split_seed)  # so data.limit takes a fair sample
    if spec.limit is not None and spec.limit < len(train):
        train = train.select(range(spec.limit))  # tokenize only what trains
    if spec.eval_limit is not None:
        valid = valid.select(range(min(spec.eval_limit, len(valid))))
        test = test.select(range(min(spec.eval_limit, len(test))))
    return [train, valid, test]


def _label_ids(parts: list[Any], label: str) -> tuple[list[np.ndarray], int]:
    feature = parts[0].features[label]
    raw = [_values(p, label) for p in parts]
    if raw[0] and isinstance(raw[0][0], str):
        classes = sorted({v for r in raw for v in r})
        index = {c: i for i, c in enumerate(classes)}
        return [np.array([index[v] for v in r], dtype=np.int64) for r in raw], len(classes)
    arrays = [np.asarray(r, dtype=np.int64) for r in raw]
    n = len(feature.names) if hasattr(feature, "names") else int(max(
        (a.max() for a in arrays if a.size), default=0)) + 1
    if any(a.size and (a.min() < 0 or a.max() >= n) for a in arrays):
        _unlabelled(label, n)
    return arrays, n


def _values(split: Any, column: str) -> list[Any]:
    """A text or label column as a list, read through Arrow: iterating ``split[column]`` reads
    row by row (50x slower on a shuffled split)."""
    values: list[Any] = []
    for batch in split.select_columns([column]).with_format("arrow").iter(batch_size=4096):
        values.extend(batch.column(0).to_pylist())
    return values


def _unlabelled(label: str, n: int) -> None:
    raise ConfigError(f"`data.label`: labels of column {label!r} must be in [0, {n}); a "
                      "split has unlabelled (-1) rows: choose labelled splits with "
                      "data.valid_split / data.test_split", field="data.label")


def _label_batches(split: Any, label: str) -> Iterator[Any]:
    """The label column of ``split`` as Arrow arrays, a batch at a time (never all of it)."""
    # Small batches: a split with a row selection (shuffle, select) gathers rows one by one.
    for batch in split.select_columns([label]).with_format("arrow").iter(batch_size=4096):
        yield batch.column(0)


def _label_classes(parts: list[Any], label: str) -> tuple[list[str] | None, int]:
    """(sorted class names for string labels, else None; number of classes), as
    :func:`_label_ids` finds them, read a batch at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    feature = parts[0].features[label]
    names: set[str] = set()
    strings = False
    low, high = 0, -1
    for part in parts:
        for column in _label_batches(part, label):
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                strings = True
                names.update(v for v in pc.unique(column).to_pylist() if v is not None)
            elif len(column):
                bounds = pc.min_max(column).as_py()
                low, high = min(low, int(bounds["min"])), max(high, int(bounds["max"]))
    if strings:
        return sorted(names), len(names)
    n = len(feature.names) if hasattr(feature, "names") else high + 1
    if low < 0 or high >= n:
        _unlabelled(label, n)
    return None, max(n, 1)


def _text_dataset(name: str, parts: list[Any], text: str, label: str, tok: Any,
                  spec: HFDataSpec) -> Dataset:
    import torch

    labels, n = _label_ids(parts, label)
    train, valid, test = (Split(encode(tok, [str(t) for t in _values(p, text)], spec.max_length),
                                torch.from_numpy(y)) for p, y in zip(parts, labels))
    return Dataset(_text_info(name, tok, train, valid, test, n, spec.max_length),
                   train, valid, test)


def _lm_dataset(name: str, parts: list[Any], text: str, tok: Any, spec: HFDataSpec) -> Dataset:
    import torch

    length = spec.max_length
    eos = tok.eos_token_id
    splits = []
    for part in parts:
        docs = [str(t) for t in _values(part, text) if str(t).strip()]
        if spec.pack:
            ids: list[int] = []
            for doc in tok(docs, add_special_tokens=False)["input_ids"]:
                ids.extend(doc + ([eos] if eos is not None else []))
            n = (len(ids) - 1) // length
            if n < 1:
                raise ConfigError(f"`data.max_length`: {length} tokens is longer than a split of "
                                  f"{name!r} ({len(ids)} tokens)", field="data.max_length")
            t = torch.tensor(ids[: n * length + 1], dtype=torch.long)
            splits.append(Split(t[:-1].view(n, length), t[1:].view(n, length)))
        else:
            # One padded example per document: its tokens, end-of-text, then padding, whose
            # targets are ignored (the pad id may equal end-of-text, as in GPT-2).
            rows = torch.full((len(docs), length + 1), tok.pad_token_id, dtype=torch.long)
            targets = torch.full((len(docs), length), IGNORE_INDEX, dtype=torch.long)
            for i, doc in enumerate(tok(docs, add_special_tokens=False)["input_ids"]):
                ids_ = (doc + ([eos] if eos is not None else []))[: length + 1]
                rows[i, : len(ids_)] = torch.tensor(ids_, dtype=torch.long)
                targets[i, : len(ids_) - 1] = rows[i, 1: len(ids_)]
            seqs = rows
            splits.append(Split(seqs[:, :-1], targets))
    train, valid, test = splits
    info = DataInfo(name, "lm", (length,), len(tok), len(train), len(valid), len(test),
                    tokens_per_example=length, vocab_size=len(tok),
                    pad_token_id=None if spec.pack else tok.pad_token_id)
    return Dataset(info, train, valid, test)


def _image_dataset(name: str, parts: list[Any], image: str, label: str | None,
                   spec: HFDataSpec) -> Dataset:
    import torch

    if label is None:
        raise ConfigError(f"`data.label`: image dataset {name!r} needs a label column",
                          field="data.label")
    labels, n = _label_ids(parts, label)
    splits = []
    for part, y in zip(parts, labels):
        arrays = [np.asarray(img, dtype=np.float32) for img in part[image]]
        if not arrays:
            x = torch.zeros((0, 1, 1, 1))
        else:
            x = torch.from_numpy(np.stack(arrays))
            x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # [N, C, H, W]
            x = x / 255.0
        splits.append(Split(x.contiguous(), torch.from_numpy(y)))
    train, valid, test = splits
    info = DataInfo(name, "classification", tuple(train.inputs.shape[1:]), n, len(train),
                    len(valid), len(test))
    return Dataset(info, train, valid, test)
