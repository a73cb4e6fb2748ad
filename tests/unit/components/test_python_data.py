"""``data: {name: python}``: the user's own data, from a function named in the config.

Tensor pairs take the in-memory path; a torch Dataset is read item by item for every batch
(never frozen), in the engine's (seed, epoch) order, so resume sees the batches an
uninterrupted run sees.  Bad input is exit 2 naming ``data.target`` (or the field at fault).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.helpers import StopAt
from trainlab.cli import app
from trainlab.components import load_dataset
from trainlab.components.datasets import Split
from trainlab.components.items import ItemSplit
from trainlab.config import expand, load_sweep
from trainlab.config.schema import LRFindSpec, RunConfig
from trainlab.engine import interrupt, train
from trainlab.engine.loop import epoch_permutation
from trainlab.lr.range_test import lr_find
from trainlab.records import NullSink
from trainlab.store import open_store
from trainlab.usercode import load_target

runner = CliRunner()

USER = '''
import torch
from torch.utils.data import Dataset

CALLS = []  # (tag, index) of every item read


def _xy(n, width, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # three classes


class Noisy(Dataset):
    """Items with fresh noise on every access (augmentation), counted in CALLS."""

    def __init__(self, n, width, tag, seed):
        self.x, self.y = _xy(n, width, seed)
        self.tag = tag

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        CALLS.append((self.tag, int(i)))
        return self.x[i] + 0.05 * torch.randn(self.x.shape[1]), int(self.y[i])


def pairs(n=120, width=6):
    return {"train": _xy(n, width, 0)}


def noisy(n=64, width=6, evals=True):
    out = {"train": Noisy(n, width, "train", 0)}
    if evals:
        out["valid"] = Noisy(24, width, "valid", 1)
        out["test"] = Noisy(16, width, "test", 2)
    return out


def train_only(n=100, width=6):
    return {"train": Noisy(n, width, "train", 0)}


def with_valid(n=100, width=6):
    return {"train": _xy(n, width, 0), "valid": _xy(30, width, 1)}


def tokens(seq_len=8, n=48, vocab=17, items=False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, seq_len + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    if items:
        return {"train": torch.utils.data.StackDataset(x, y)}
    return {"train": (x, y)}
'''


def _write(tmp_path: Path, data: dict[str, Any], **extra: Any) -> Path:
    (tmp_path / "mydata.py").write_text(USER)
    doc: dict[str, Any] = {
        "name": "own-data",
        "data": {"name": "python", "batch_size": 16, **data},
        "model": {"name": "mlp", "hidden_dim": 16, "dropout": 0.2},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "log_every": 3, "seed": 5},
    }
    for key, value in extra.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _configs(path: Path) -> list[RunConfig]:
    return [run.config for run in expand(load_sweep(path))]


def _calls(tmp_path: Path) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = load_target("mydata.py:CALLS", tmp_path, "test").obj
    return calls


CLASSIFY = {"target": "mydata.py:noisy", "task": "classification"}


def test_tensor_pairs_train_in_memory_with_carved_splits(tmp_path: Path) -> None:
    (config,) = _configs(_write(tmp_path, {"target": "mydata.py:pairs",
                                           "task": "classification"}))
    assert config.data.source is not None  # the file's hash, part of the run id
    data = load_dataset(config.data, config.model)
    assert all(isinstance(s, Split) for s in (data.train, data.valid, data.test))
    # 15 % + 15 % of 120 carved by split_seed; classes from the labels (0, 1, 2).
    assert (data.info.n_train, data.info.n_valid, data.info.n_test) == (84, 18, 18)
    assert data.info.num_outputs == 3 and data.info.input_shape == (6,)
    assert data.train.targets.dtype == torch.long
    sink = NullSink()
    outcome = train(config, sink=sink)
    assert outcome.status == "ok", outcome.error
    keys = {r.key for r in sink.records}
    assert {"valid/accuracy", "test/accuracy", "valid/f1"} <= keys


def test_a_dataset_is_read_anew_every_epoch_not_materialised(tmp_path: Path) -> None:
    (config,) = _configs(_write(tmp_path, {**CLASSIFY, "num_classes": 3},
                                train={"eval_every": 3}))
    data = load_dataset(config.data, config.model)
    assert isinstance(data.train, ItemSplit) and data.info.num_outputs == 3
    # Augmentation: the same item differs from one read to the next (nothing was frozen).
    assert not torch.equal(data.train.take([0])[0], data.train.take([0])[0])
    calls = _calls(tmp_path)
    calls.clear()
    sink = NullSink()
    outcome = train(config, sink=sink)
    assert outcome.status == "ok", outcome.error
    read = [i for tag, i in calls if tag == "train"]
    assert sorted(read) == sorted(list(range(64)) * 2)  # every item, once per epoch
    assert read[:64] != read[64:]  # each epoch in its own order
    assert len([c for c in calls if c[0] == "test"]) == 16  # the test split, once
    assert len([c for c in calls if c[0] == "valid"]) >= 2 * 24
    assert {"valid/accuracy", "valid/f1", "test/accuracy"} <= {r.key for r in sink.records}


def test_the_loader_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    split = ItemSplit(torch.utils.data.TensorDataset(torch.arange(10.0)[:, None],
                                                     torch.arange(10)), 10, "classification")
    before = torch.get_rng_state()
    xs = [x for x, _ in split.batches([torch.tensor([3, 1]), torch.tensor([7])],
                                      torch.device("cpu"))]
    assert torch.equal(torch.get_rng_state(), before)
    assert [x.flatten().tolist() for x in xs] == [[3.0, 1.0], [7.0]]


def test_missing_splits_are_carved_from_train(tmp_path: Path) -> None:
    (config,) = _configs(_write(tmp_path, {"target": "mydata.py:train_only", "num_classes": 3,
                                           "task": "classification", "valid_fraction": 0.2,
                                           "test_fraction": 0.1, "split_seed": 4}))
    data = load_dataset(config.data, config.model)
    splits = (data.train, data.valid, data.test)
    assert all(isinstance(s, ItemSplit) for s in splits)
    assert [len(s) for s in splits] == [70, 20, 10]
    picked = [i for s in splits for i in s.items.indices]  # type: ignore[union-attr]
    assert sorted(picked) == list(range(100))  # disjoint, covering train
    # A given valid split is kept; only test is carved (test_fraction of train).
    (config,) = _configs(_write(tmp_path, {"target": "mydata.py:with_valid",
                                           "task": "regression"}))
    data = load_dataset(config.data, config.model)
    assert (len(data.train), len(data.valid), len(data.test)) == (85, 30, 15)
    assert data.info.num_outputs == 1 and data.train.targets.shape == (85, 1)  # type: ignore[union-attr]


def test_data_limit_caps_a_dataset(tmp_path: Path) -> None:
    (config,) = _configs(_write(tmp_path, {**CLASSIFY, "num_classes": 3, "limit": 20},
                                train={"epochs": 1}))
    data = load_dataset(config.data, config.model)
    assert data.info.n_train == 20 and len(data.train) == 20
    calls = _calls(tmp_path)
    calls.clear()
    assert train(config).status == "ok"
    assert sorted(i for tag, i in calls if tag == "train") == list(range(20))


@pytest.fixture
def _no_stop():
    interrupt.clear()
    yield
    interrupt.clear()


@pytest.mark.usefixtures("_no_stop")
def test_resume_mid_epoch_sees_the_same_batches(tmp_path: Path) -> None:
    (config,) = _configs(_write(tmp_path, {**CLASSIFY, "num_classes": 3}))
    load_dataset(config.data, config.model)
    calls = _calls(tmp_path)

    def trained(run_dir: Path, stop: int | None = None) -> list[int]:
        calls.clear()
        cbs = [StopAt(stop)] if stop else []
        first = train(config, run_dir=run_dir, callbacks=cbs)
        if stop:
            assert first.status == "interrupted"
            interrupt.clear()
            assert train(config, run_dir=run_dir).status == "ok"
        else:
            assert first.status == "ok"
        return [i for tag, i in calls if tag == "train"]

    whole = trained(tmp_path / "whole")
    cut = trained(tmp_path / "cut", stop=6)  # 4 steps an epoch: mid-epoch 2
    assert cut == whole
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # noise and dropout replayed exactly


@pytest.mark.parametrize("items", [False, True])
def test_lm_data_sweeps_its_args_and_trains_a_tiny_model(tmp_path: Path, items: bool) -> None:
    path = _write(tmp_path, {"target": "mydata.py:tokens", "task": "lm", "batch_size": 8,
                             "args": {"items": items}},
                  model={"name": "lstm", "layers": 1, "embed_dim": 8, "hidden_dim": 8},
                  train={"epochs": 1}, grid={"data.args.seq_len": [6, 10]})
    configs = _configs(path)
    assert [c.data.args["seq_len"] for c in configs] == [6, 10]  # type: ignore[attr-defined]
    for config, seq_len in zip(configs, (6, 10)):
        data = load_dataset(config.data, config.model)
        assert isinstance(data.train, ItemSplit if items else Split)
        assert data.info.input_shape == (seq_len,) and data.info.tokens_per_example == seq_len
        assert data.info.num_outputs == data.info.vocab_size == 17  # max token id + 1
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store"),
                                 "--no-estimate", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "ppl" in result.output


BAD = [
    ("return [1, 2]", "returned list; expected a mapping"),
    ("return {'valid': (torch.zeros(4, 2), torch.zeros(4))}", "returned no 'train' split"),
    ("return {'train': (torch.zeros(4, 2), torch.zeros(4)), 'validation': None}",
     "returned keys 'validation'"),
    ("return {'train': 'text'}", "'train' split is a str"),
    ("return {'train': (torch.zeros(4, 2), torch.zeros(4)), 'test': [1, 2, 3]}",
     "'test' split is a list of (int, int, int)"),
    ("return {'train': (torch.zeros(10, 2), torch.zeros(9))}", "one target per input"),
    ("return {'train': (torch.zeros(4, 2), torch.tensor([0.5, 1, 0, 1]))}",
     "must be integer class ids"),
    ("return {'train': torch.utils.data.TensorDataset(torch.zeros(4, 2))}",
     "item 0 is a tuple"),
    ("class It(torch.utils.data.IterableDataset):\n    def __iter__(self):\n"
     "        yield torch.zeros(2)\nreturn {'train': It()}", "its first item is a Tensor"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_data_is_exit_2_naming_the_field(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, {"target": "bad.py:make", "task": "classification"})
    (tmp_path / "bad.py").write_text("import torch\n\n\ndef make():\n"
                                     + textwrap.indent(body, "    ") + "\n")
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "data.target" in text and message in text, text
    assert not (tmp_path / "store" / "runs").exists() or not any(
        (tmp_path / "store" / "runs").iterdir())  # nothing trained


@pytest.mark.parametrize(("data", "field"), [
    ({"target": "mydata.py:pairs", "task": "classification", "args": {"widht": 3}},
     "data.args"),
    ({"target": "mydata.py:nothing", "task": "classification"}, "data.target"),
    ({"target": "mydata.py:pairs"}, "data.task"),
    ({"target": "mydata.py:pairs", "task": "classification", "num_classes": 2},
     "data.num_classes"),
])
def test_bad_config_is_exit_2_naming_the_field(tmp_path: Path, data: dict[str, Any],
                                                field: str) -> None:
    result = runner.invoke(app, ["run", str(_write(tmp_path, data)), "--store",
                                 str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    assert field in result.output


def test_lr_find_reads_a_dataset_in_the_loops_order(tmp_path: Path) -> None:
    (config,) = _configs(_write(tmp_path, {**CLASSIFY, "num_classes": 3}))
    load_dataset(config.data, config.model)
    calls = _calls(tmp_path)
    calls.clear()
    result = lr_find(config, LRFindSpec(steps=12, loss="valid", seed=9))
    assert len(result.lrs) == len(result.losses) > 0
    first = [i for tag, i in calls if tag == "train"][:16]
    assert first == epoch_permutation(64, 9, 1)[:16].tolist()  # the engine's batch order
    assert any(tag == "valid" for tag, _ in calls)  # loss: valid evaluates the Dataset


def test_lr_auto_runs_on_a_dataset(tmp_path: Path) -> None:
    path = _write(tmp_path, {**CLASSIFY, "num_classes": 3}, train={"epochs": 1},
                  lr_find={"steps": 20}, optimizer={"lr": "auto"})
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store"),
                                 "--no-estimate", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    (run,) = open_store(tmp_path / "store").runs().to_dict("records")
    assert run["status"] == "ok" and run["config"]["optimizer"]["lr"] == "auto"


def test_estimate_probes_a_dataset(tmp_path: Path) -> None:
    path = _write(tmp_path, {**CLASSIFY, "num_classes": 3})
    calls = _calls(tmp_path)
    calls.clear()
    result = runner.invoke(app, ["estimate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert any(tag == "train" for tag, _ in calls)  # the probe's steps read real items


@pytest.mark.slow
def test_two_ranks_shard_a_dataset(tmp_path: Path) -> None:
    path = _write(tmp_path, {**CLASSIFY, "num_classes": 3}, train={"threads": 1})
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store"),
                                 "--nproc", "2"])
    assert result.exit_code == 0, result.output


RAGGED = '''
import torch
from torch.utils.data import Dataset


class Ragged(Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        width = 6 if i < 20 else 7  # the second half is one feature wider
        return torch.zeros(width), 0


def ragged():
    return {"train": Ragged()}
'''


def test_items_of_different_shapes_are_exit_2_naming_the_item(tmp_path: Path) -> None:
    (tmp_path / "ragged.py").write_text(RAGGED)
    path = _write(tmp_path, {"target": "ragged.py:ragged", "task": "classification",
                             "num_classes": 2})
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    assert "data.target" in result.output and "item 20" in result.output
    assert "[7]" in result.output and "[6]" in result.output
    assert "Traceback" not in result.output
