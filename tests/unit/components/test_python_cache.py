"""``data.cache`` of ``data: {name: python}``: a Dataset's items read once into tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from trainlab.components import load_dataset
from trainlab.components.datasets import Split
from trainlab.components.items import ItemSplit
from trainlab.config import expand, load_sweep
from trainlab.config.schema import RunConfig
from trainlab.engine import train
from trainlab.errors import ConfigError
from trainlab.records import NullSink

USER = '''
import torch
from torch.utils.data import Dataset


def _xy(n, width, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # three classes


class Items(Dataset):
    def __init__(self, x, y, noise=0.0, odd=None):
        self.x, self.y, self.noise, self.odd = x, y, noise, odd

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] + self.noise * torch.randn(self.x.shape[1])
        if i == self.odd:
            x = torch.cat([x, x[:1]])  # one item a feature wider
        return x, int(self.y[i])


def pairs(n=120, width=6):
    return {"train": _xy(n, width, 0), "test": _xy(40, width, 1)}


def items(n=120, width=6, noise=0.0, odd=None):
    return {"train": Items(*_xy(n, width, 0), noise=noise, odd=odd),
            "test": Items(*_xy(40, width, 1))}
'''


def _config(tmp_path: Path, data: dict[str, Any]) -> RunConfig:
    (tmp_path / "mine.py").write_text(USER)
    doc = {"name": "cache",
           "data": {"name": "python", "task": "classification", "batch_size": 16, **data},
           "model": {"name": "mlp", "hidden_dim": 16, "dropout": 0.2},
           "optimizer": {"name": "adam", "lr": 0.01},
           "train": {"epochs": 3, "log_every": 2, "seed": 4}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    (run,) = expand(load_sweep(path))
    return run.config


def _curves(config: RunConfig) -> dict[tuple[str, int], float]:
    sink = NullSink()
    outcome = train(config, sink=sink)
    assert outcome.status == "ok", outcome.error
    keep = ("train/loss", "valid/loss", "valid/accuracy", "test/accuracy", "test/loss")
    return {(r.key, r.step): r.value for r in sink.records if r.key in keep}


def test_a_cached_dataset_trains_as_the_same_tensors_do(tmp_path: Path) -> None:
    tensors = _config(tmp_path, {"target": "mine.py:pairs"})
    cached = _config(tmp_path, {"target": "mine.py:items", "cache": True})
    data = load_dataset(cached.data, cached.model)
    assert all(isinstance(s, Split) for s in (data.train, data.valid, data.test))
    reference = load_dataset(tensors.data, tensors.model)
    for name in ("train", "valid", "test"):
        a, b = getattr(reference, name), getattr(data, name)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    # Everything but the names (the data's name and the splits' sources name its target).
    assert data.info == reference.info.__class__(**{**reference.info.__dict__,
                                                    "name": data.info.name,
                                                    "sources": data.info.sources})
    assert [s.replace("items", "pairs") for s in data.info.sources] == list(
        reference.info.sources)
    curves = _curves(tensors)
    assert curves and _curves(cached) == curves


def test_cache_is_never_automatic_and_freezes_augmentation_when_asked(tmp_path: Path) -> None:
    lazy = _config(tmp_path, {"target": "mine.py:items", "args": {"noise": 0.1}})
    split = load_dataset(lazy.data, lazy.model).train
    assert isinstance(split, ItemSplit)
    assert not torch.equal(split.take([0])[0], split.take([0])[0])  # drawn anew
    frozen = _config(tmp_path, {"target": "mine.py:items", "args": {"noise": 0.1},
                                "cache": True})
    held = load_dataset(frozen.data, frozen.model).train
    assert isinstance(held, Split)
    # The run id changes only where cache is set.
    assert lazy.run_id == _config(tmp_path, {"target": "mine.py:items",
                                             "args": {"noise": 0.1}, "cache": None}).run_id
    assert frozen.run_id != lazy.run_id


def test_items_of_another_shape_are_a_config_error_naming_data_cache(tmp_path: Path) -> None:
    # Item 7: not among the items checked when the data is built (1, n/2, n-1), so only
    # caching, which reads every item, finds it before training.
    config = _config(tmp_path, {"target": "mine.py:items", "args": {"odd": 7},
                                "cache": True, "valid_fraction": 0.0})
    with pytest.raises(ConfigError) as info:
        load_dataset(config.data, config.model)
    assert info.value.field == "data.cache"
    text = str(info.value)
    assert "`data.cache`" in text and "item 7 has (input, target) shapes [7], []" in text
    assert "has [6], []" in text
