"""``data.in_memory`` of Hugging Face data: tokenized to memory-mapped Arrow files, read by batch.

The data is built here in the hub's formats (save_to_disk, json files) with the tiny tokenizers
of ``tiny_hf`` (conftest): nothing needs the network.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import datasets

from tests.conftest import sentiment_rows
from trainlab.components import arrow_data, load_dataset
from trainlab.components import datasets as datasets_module
from trainlab.components.datasets import Split
from trainlab.components.items import Batch, ItemSplit
from trainlab.config.schema import resolve_component, resolve_run
from trainlab.engine import train
from trainlab.errors import ConfigError
from trainlab.records import NullSink

CURVES = ("train/loss", "valid/loss", "valid/accuracy", "valid/perplexity")


def _lm_file(tmp_path: Path) -> str:
    texts = [f"the movie was {w} and the end" + " very" * (i % 5)
             for i, w in enumerate(["good", "bad", "nice", "sad", "awful", ""] * 20)]
    path = tmp_path / "lm.json"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    return str(path)


def _data(name: str, tiny_hf: dict[str, str], sentiment_dir: str, tmp_path: Path
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, model) sections of a tiny classification, packed-lm or padded-lm run."""
    if name == "classification":
        return ({"name": "hf", "path": sentiment_dir, "max_length": 8, "batch_size": 16},
                {"name": "hf", "path": tiny_hf["bert"]})
    lm = {"name": "hf", "path": "json", "data_files": _lm_file(tmp_path), "label": None,
          "max_length": 12, "batch_size": 8, "eval_batch_size": 5}
    if name == "lm-padded":
        lm.update(pack=False, max_length=20)
    return lm, {"name": "hf", "path": tiny_hf["gpt2"]}


def _curves(data: dict[str, Any], model: dict[str, Any]) -> tuple[dict[Any, float], Any]:
    raw = {"data": data, "model": model, "optimizer": {"name": "adamw", "lr": 1e-2},
           "train": {"epochs": 2, "log_every": 3, "seed": 3}}
    sink = NullSink()
    outcome = train(resolve_run(raw), sink=sink)
    assert outcome.status == "ok", outcome.error
    return {(r.key, r.step): r.value for r in sink.records if r.key in CURVES}, outcome


@pytest.mark.parametrize("kind", ["classification", "lm-packed", "lm-padded"])
def test_memory_mapped_data_gives_the_in_memory_batches_and_curves(
        kind: str, tiny_hf: dict[str, str], sentiment_dir: str, tmp_path: Path) -> None:
    data, model = _data(kind, tiny_hf, sentiment_dir, tmp_path)
    mspec = resolve_component("model", model)
    held = load_dataset(resolve_component("data", {**data, "in_memory": True}), mspec)
    mapped = load_dataset(resolve_component("data", {**data, "in_memory": False}), mspec)
    assert isinstance(held.train, Split) and isinstance(mapped.train, ItemSplit)
    assert mapped.info == held.info.__class__(**{**held.info.__dict__,
                                                 "notes": mapped.info.notes})
    for name in ("train", "valid", "test"):
        a, b = getattr(held, name), getattr(mapped, name)
        assert isinstance(a, Split) and isinstance(b, ItemSplit) and len(a) == len(b)
        x, y = b.take(range(len(b)))  # the whole split, in order
        assert x.dtype == a.inputs.dtype and y.dtype == a.targets.dtype
        assert torch.equal(x, a.inputs) and torch.equal(y, a.targets)
    idx = torch.randperm(len(held.train), generator=torch.Generator().manual_seed(0))[:7]
    x, y = mapped.train.take(idx)
    assert torch.equal(x, held.train.inputs[idx]) and torch.equal(y, held.train.targets[idx])
    # A batch is one read, already collated: the dataset returns a Batch.
    assert isinstance(mapped.train.items.__getitems__(idx.tolist()), Batch)

    curves_held, out_held = _curves({**data, "in_memory": True}, model)
    curves_mapped, out_mapped = _curves({**data, "in_memory": False}, model)
    assert curves_held and curves_mapped == curves_held
    test_key = "test_accuracy" if kind == "classification" else "test_perplexity"
    assert out_mapped.summary[test_key] == out_held.summary[test_key]
    assert any("data.in_memory false" in n for n in out_mapped.summary["notes"])


def test_items_reopen_in_a_worker_and_index_like_a_sequence(
        tiny_hf: dict[str, str], sentiment_dir: str, tmp_path: Path) -> None:
    data, model = _data("lm-packed", tiny_hf, sentiment_dir, tmp_path)
    split = load_dataset(resolve_component("data", {**data, "in_memory": False}),
                         resolve_component("model", model)).train
    assert isinstance(split, ItemSplit)
    items = split.items
    copy = pickle.loads(pickle.dumps(items))  # what a spawned DataLoader worker gets
    assert len(pickle.dumps(items)) < 1000  # the path, never the pages
    x, y = copy[len(copy) - 1]
    assert torch.equal(x[1:], y[:-1]) and x.dtype == torch.long
    assert torch.equal(items[-1][0], x)
    with pytest.raises(IndexError):
        items.__getitems__([len(items)])
    loader = torch.utils.data.DataLoader(items, batch_size=4, num_workers=1)
    first = next(iter(loader))
    assert torch.equal(first[0], items.__getitems__([0, 1, 2, 3]).inputs)


def test_a_reader_lets_go_of_mapped_pages_of_a_large_file(
        tiny_hf: dict[str, str], sentiment_dir: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data, model = _data("lm-packed", tiny_hf, sentiment_dir, tmp_path)
    split = load_dataset(resolve_component("data", {**data, "in_memory": False}),
                         resolve_component("model", model)).train
    assert isinstance(split, ItemSplit)
    small = split.items
    assert small._release_every == 0  # a file under the cap stays mapped
    monkeypatch.setattr(arrow_data, "_RESIDENT_CAP", 1024)
    monkeypatch.setattr(arrow_data, "_FAULT_BYTES", 256)
    items = arrow_data.ArrowPairs(small.path, window=small.window)
    assert items._release_every == 3  # 1024 // (13 tokens x 4 bytes + 256)
    released: list[int] = []
    monkeypatch.setattr(items, "_map", _Spy(items._map, released))
    for start in range(0, len(items) - 2, 2):
        batch = items.__getitems__([start, start + 1])
        assert torch.equal(batch.inputs, small.__getitems__([start, start + 1]).inputs)
    assert len(released) == (len(items) - 2) // 2 // 2


class _Spy:
    def __init__(self, inner: Any, calls: list[int]) -> None:
        self.inner, self.calls = inner, calls

    def madvise(self, option: int) -> None:
        self.calls.append(option)
        self.inner.madvise(option)


def test_tokenized_files_are_reused(tiny_hf: dict[str, str], sentiment_dir: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"name": "hf", "path": sentiment_dir, "max_length": 8, "in_memory": False}
    model = resolve_component("model", {"name": "hf", "path": tiny_hf["bert"]})
    first = load_dataset(resolve_component("data", data), model)
    monkeypatch.setattr(datasets_module, "_CACHE", {})
    calls: list[int] = []
    encode = arrow_data._encode_labelled
    monkeypatch.setattr(arrow_data, "_encode_labelled",
                        lambda *a, **k: calls.append(1) or encode(*a, **k))
    again = load_dataset(resolve_component("data", data), model)
    assert not calls  # read back from datasets' cache file, not tokenized again
    assert again.train.items.path == first.train.items.path  # type: ignore[union-attr]
    longer = load_dataset(resolve_component("data", {**data, "max_length": 9}), model)
    assert calls and longer.train.take([0])[0].shape == (1, 9)


def test_auto_holds_small_data_in_memory_and_maps_it_over_the_budget(
        tiny_hf: dict[str, str], sentiment_dir: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    data, model = _data("classification", tiny_hf, sentiment_dir, tmp_path)
    mspec = resolve_component("model", model)
    small = load_dataset(resolve_component("data", data), mspec)
    assert isinstance(small.train, Split)
    assert "held in memory" in small.info.notes[0]
    monkeypatch.setattr(datasets_module, "_CACHE", {})
    monkeypatch.setattr(arrow_data, "memory_budget", lambda: 1000)  # bytes
    big = load_dataset(resolve_component("data", data), mspec)
    assert isinstance(big.train, ItemSplit)
    assert "over the memory budget" in big.info.notes[0] and "Arrow files in" in \
        big.info.notes[0]
    # The choice reaches the run's summary, and `auto` keeps the run id of configs without it.
    _, outcome = _curves(data, model)
    assert any("over the memory budget" in n for n in outcome.summary["notes"])
    raw = {"data": data, "model": model}
    assert resolve_run(raw).run_id == resolve_run(
        {**raw, "data": {**data, "in_memory": "auto"}}).run_id
    assert resolve_run(raw).run_id != resolve_run(
        {**raw, "data": {**data, "in_memory": False}}).run_id


def test_estimate_and_budget_are_plausible(sentiment_dir: str) -> None:
    part = datasets.load_from_disk(sentiment_dir)["train"]
    per_token = arrow_data.BYTES_PER_TOKEN
    assert arrow_data.in_memory_bytes([part], "sentence", "classification", True, 8) == \
        len(part) * 8 * per_token
    packed = arrow_data.in_memory_bytes([part.select(range(100))], "sentence", "lm", True, 8)
    assert 100 * 3 * per_token < packed < 100 * 30 * per_token  # "the movie was good"
    assert 0 < arrow_data.memory_budget() < arrow_data.available_memory()


def test_bad_in_memory_values_name_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"`data.in_memory` must be true or false or 'auto'; "
                                          r"got 'sometimes'"):
        resolve_component("data", {"name": "hf", "path": "x", "in_memory": "sometimes"})


def test_images_refuse_in_memory_false(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((4, 4), i, dtype=np.uint8)) for i in range(20)]
    datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(20)]}
                               ).save_to_disk(str(tmp_path / "img"))
    with pytest.raises(ConfigError, match=r"`data\.in_memory`: false"):
        load_dataset(resolve_component("data", {"name": "hf", "path": str(tmp_path / "img"),
                                                "in_memory": False}))


# --- peak memory does not grow with the data -------------------------------------------------

_PEAK = textwrap.dedent("""
    import ctypes, gc, json, sys
    import torch
    from trainlab.components import arrow_data, load_dataset
    from trainlab.components import datasets as datasets_module
    from trainlab.components.datasets import Split
    from trainlab.config.schema import resolve_component

    torch.set_num_threads(1)
    # Both files over the cap on mapped pages, so both are read as a large file is read.
    arrow_data._RESIDENT_CAP = 1 << 20
    tokenizer, in_memory, paths = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]

    def peak():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmHWM"))

    def build(path, **extra):
        return load_dataset(resolve_component("data", {
            "name": "hf", "path": path, "max_length": 64, "tokenizer": tokenizer,
            "in_memory": in_memory, **extra})).train

    build(paths[0], limit=100, eval_limit=100)  # imports, the tokenizer: before any peak
    out = []
    for path in paths:
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)  # the last dataset's freed heap, back to the system
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # a new high-water mark from here (VmHWM)
        base = peak()
        split = build(path)
        # A whole epoch of random batches, as training reads them.
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
        batches = order.split(32)
        if isinstance(split, Split):
            total = sum(int(split.inputs[i].sum()) for i in batches)
        else:
            total = sum(int(x.sum()) for x, _ in split.batches(batches, torch.device("cpu")))
        out.append({"peak": peak(), "base": base, "rows": len(split), "total": total})
        del split
        datasets_module._CACHE.clear()
    print(json.dumps(out))
""")


def _saved(root: Path, n: int) -> str:
    rows = sentiment_rows(n, seed=n)
    ds = datasets.Dataset.from_dict(rows)
    split = ds.train_test_split(test_size=0.1, seed=0)
    datasets.DatasetDict({"train": split["train"], "validation": split["test"],
                          "test": split["test"]}).save_to_disk(str(root / str(n)))
    return str(root / str(n))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="VmHWM: Linux")
def test_peak_memory_does_not_grow_with_memory_mapped_data(
        tiny_hf: dict[str, str], tmp_path: Path) -> None:
    # Same tokenizer, datasets of n and 4n examples, an epoch read: tokenizing 4n x 64 tokens
    # in memory peaks hundreds of MB over n, so the in-memory peaks show that the measurement
    # sees growth; the memory-mapped peaks stay put.  One process per mode builds n, then 4n,
    # the high-water mark reset before each.
    n = 10_000
    paths = [_saved(tmp_path, m) for m in (n, 4 * n)]
    tokenizer = tiny_hf["bert"]
    procs = {mode: subprocess.Popen([sys.executable, "-c", _PEAK, tokenizer, mode, *paths],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mode in ("0", "1")}  # two processes at once: CI machines have two cores
    peaks: dict[tuple[int, bool], int] = {}
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        small, large = json.loads(out.strip().splitlines()[-1])
        assert small["rows"] == 9 * n // 10 and large["rows"] == 36 * n // 10
        peaks[n, mode == "1"], peaks[4 * n, mode == "1"] = small["peak"], large["peak"]
    mib = {k: round(v / 2**20) for k, v in peaks.items()}
    print(f"peak RSS MiB (examples, in_memory): {mib}")
    assert peaks[4 * n, False] < 1.10 * peaks[n, False], mib
    assert peaks[4 * n, True] > 1.25 * peaks[n, True], mib  # the check can fail
