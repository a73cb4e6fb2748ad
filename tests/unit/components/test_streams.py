"""Streaming data: a torch IterableDataset of the user's own (``data: {name: python}``) trains
in epochs of ``train.steps_per_epoch`` batches, in an order that is a function of (seed,
epoch); a stop at a step resumes to what an uninterrupted run records.  Hugging Face
streaming data is in test_hf_stream.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info
from typer.testing import CliRunner

from tests.helpers import StopAt, recorded
from trainlab.cli import app
from trainlab.components import load_dataset
from trainlab.components.datasets import LoaderSpec, Split
from trainlab.components.streams import StreamBatches, StreamSplit, UserStream
from trainlab.config import expand, load_sweep
from trainlab.config.schema import RunConfig
from trainlab.engine import interrupt, train
from trainlab.records import NullSink

runner = CliRunner()

USER = '''
import random

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info


def _item(rng):
    x = torch.tensor([rng.gauss(0, 1) for _ in range(6)])
    return x, int(x[0] > 0) + int(x[1] > 0)


class Stream(IterableDataset):
    """``n`` items a pass (endless with n=None), in an order drawn from set_epoch's number;
    split between DataLoader workers unless ``shard`` is false."""

    def __init__(self, n=None, shard=True, epochs=True):
        self.n, self.shard, self.seed = n, shard, 0
        if epochs:
            self.set_epoch = self._set_epoch

    def _set_epoch(self, n):
        self.seed = n

    def __iter__(self):
        rng = random.Random(self.seed)
        info = get_worker_info() if self.shard else None
        i = 0
        while self.n is None or i < self.n:
            item = _item(rng)
            if info is None or i % info.num_workers == info.id:
                yield item
            i += 1


class Fixed(IterableDataset):
    def __init__(self, n, seed):
        self.n, self.seed = n, seed

    def __iter__(self):
        rng = random.Random(self.seed)
        return (_item(rng) for _ in range(self.n))


def splits(n=None, shard=True, epochs=True):
    return {"train": Stream(n, shard, epochs), "valid": Fixed(40, 1), "test": Fixed(30, 2)}


def train_only():
    return {"train": Stream()}


class Ranked(Stream):
    """Splits itself between ranks (set_rank), then between workers."""

    def set_rank(self, rank, world):
        self.rank, self.world = rank, world


def ranked():
    return {"train": Ranked(), "valid": Fixed(40, 1)}
'''


def _write(tmp_path: Path, data: dict[str, Any] | None = None, **train: Any) -> Path:
    (tmp_path / "streams.py").write_text(USER)
    doc: dict[str, Any] = {
        "name": "streams",
        "data": {"name": "python", "target": "streams.py:splits", "task": "classification",
                 "batch_size": 8, **(data or {})},
        "model": {"name": "mlp", "hidden_dim": 16, "dropout": 0.2},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "log_every": 2, "seed": 5, "threads": 1,
                  "steps_per_epoch": 6, **train},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _config(path: Path) -> RunConfig:
    (run,) = expand(load_sweep(path))
    return run.config


def _losses(config: RunConfig, **kw: Any) -> tuple[Any, list[float]]:
    sink = NullSink()
    outcome = train(config, sink=sink, **kw)
    assert outcome.status == "ok", outcome.error
    return outcome, recorded(sink, "train/step_loss")


def test_an_iterable_trains_steps_per_epoch_and_reruns_alike(tmp_path: Path) -> None:
    config = _config(_write(tmp_path))
    data = load_dataset(config.data, config.model, steps_per_epoch=6)
    assert isinstance(data.train, StreamSplit) and len(data.train) == 48
    assert isinstance(data.valid, Split) and len(data.valid) == 40  # read whole, in memory
    assert len(data.test) == 30 and data.info.num_outputs == 3
    outcome, losses = _losses(config)
    assert outcome.summary["steps"] == 12 and outcome.summary["epochs"] == 2
    assert len(losses) == 6  # a log point every 2 steps
    _, again = _losses(config)
    assert again == losses  # the same batches, in the same order
    other = _config(_write(tmp_path / "other", seed=6)) if (
        tmp_path / "other").mkdir() is None else None
    assert other is not None
    _, seeded = _losses(other)
    assert seeded != losses


def test_a_stop_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    config = _config(_write(tmp_path))
    sink = NullSink()
    assert train(config, run_dir=tmp_path / "whole", sink=sink).status == "ok"
    whole = recorded(sink, "train/step_loss")
    cut = NullSink()
    stopped = train(config, run_dir=tmp_path / "cut", sink=cut, callbacks=[StopAt(9)])
    assert stopped.status == "interrupted"  # mid-epoch 2: 3 of its 6 batches consumed
    interrupt.clear()
    # The resumed process reads past the consumed batches and trains on the rest.
    resumed = train(config, run_dir=tmp_path / "cut", sink=cut)
    assert resumed.status == "ok" and resumed.summary["steps"] == 12
    assert recorded(cut, "train/step_loss") == whole
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_pass_that_ends_first_is_restarted_and_said(tmp_path: Path) -> None:
    config = _config(_write(tmp_path, {"args": {"n": 20}}))  # 2 full batches a pass
    outcome, _ = _losses(config)
    assert outcome.summary["steps"] == 12
    assert any("restarted" in n for n in outcome.summary["notes"]), outcome.summary["notes"]


def test_workers_split_a_sharding_iterable_and_catch_one_that_does_not(tmp_path: Path) -> None:
    config = _config(_write(tmp_path, {"loader": {"workers": 2}}, epochs=1))
    _losses(config)
    bad = _config(_write(tmp_path, {"loader": {"workers": 2}, "args": {"shard": False}},
                         epochs=1))
    outcome = train(bad)
    assert outcome.status == "failed"
    assert "get_worker_info" in (outcome.error or "")


def test_without_set_epoch_the_summary_says_every_epoch_reads_the_same(tmp_path: Path) -> None:
    config = _config(_write(tmp_path, {"args": {"epochs": False}}, epochs=1))
    outcome, _ = _losses(config)
    assert any("set_epoch" in n for n in outcome.summary["notes"])


@pytest.mark.parametrize(("data", "train_", "field", "words"), [
    ({}, {"steps_per_epoch": None}, "train.steps_per_epoch", "streams"),
    ({"target": "streams.py:train_only"}, {"steps_per_epoch": None}, "train.steps_per_epoch",
     "no length"),
    ({"limit": 10}, {}, "data.limit", "train.steps_per_epoch"),
    ({"target": "streams.py:Fixed", "args": {"n": 5, "seed": 0}}, {}, "data.target", "mapping"),
])
def test_bad_streaming_input_is_exit_2(tmp_path: Path, data: dict[str, Any],
                                        train_: dict[str, Any], field: str, words: str) -> None:
    path = _write(tmp_path, data, **train_)
    doc = yaml.safe_load(path.read_text())
    doc["train"] = {k: v for k, v in doc["train"].items() if v is not None}
    path.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert field in text and words in text, text
    assert "Traceback" not in result.output


def test_steps_per_epoch_on_data_with_a_length_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "digits", "data": {"name": "digits", "limit": 64},
        "model": {"name": "mlp", "hidden_dim": 8}, "optimizer": {"name": "sgd", "lr": 0.1},
        "train": {"epochs": 1, "steps_per_epoch": 3}}))
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "train.steps_per_epoch" in text and "leave train.steps_per_epoch unset" in text


def test_steps_per_epoch_left_out_keeps_run_ids() -> None:
    from trainlab.config.schema import resolve_run

    raw = {"data": {"name": "digits"}, "model": {"name": "mlp"},
           "optimizer": {"name": "sgd", "lr": 0.1}}
    base = resolve_run(raw).run_id
    assert resolve_run({**raw, "train": {"steps_per_epoch": None}}).run_id == base
    assert resolve_run({**raw, "train": {"steps_per_epoch": 5}}).run_id != base


class _Counted(IterableDataset[Any]):
    """Items 0..n-1 (a pass's order from set_epoch), each carrying the pid that read it and a
    draw of the reading process's torch RNG; split between workers; counts what it reads.
    With ``ranked``, it splits itself between ranks too (``set_rank``)."""

    def __init__(self, n: int, ranked: bool = False) -> None:
        self.n, self.epoch, self.rank, self.world, self.read = n, 0, 0, 1, 0
        if ranked:
            self.set_rank = self._set_rank

    def set_epoch(self, n: int) -> None:
        self.epoch = n

    def _set_rank(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def __iter__(self) -> Any:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch))
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for i in order[self.rank::self.world].tolist()[worker::workers]:
            self.read += 1
            yield torch.tensor([float(i), float(os.getpid()), float(torch.rand(()))]), i % 3


def _epochs(persistent: bool, n: int, epochs: int = 3) -> tuple[list[Tensor], set[int]]:
    """Batches of 8 of 4-step epochs of ``_Counted(n)`` read by 2 workers, and the pids that
    read them."""
    split = StreamSplit.of(UserStream(_Counted(n), "counted"), "classification").sized(4, 8)
    loader = StreamBatches(split, LoaderSpec(workers=2, persistent=persistent),
                           torch.device("cpu"))
    got: list[Tensor] = []
    try:
        for epoch in range(epochs):
            got += [x for x, _ in loader.batches([range(8)] * 4, seed=100 + epoch)]
    finally:
        loader.close()
    return got, {int(p) for x in got for p in x[:, 1]}


@pytest.mark.parametrize("n", [400, 24])  # 24: a pass of 2 batches, 2 passes an epoch
def test_persistent_workers_read_what_workers_started_each_pass_read(n: int) -> None:
    kept, kept_pids = _epochs(True, n)
    fresh, fresh_pids = _epochs(False, n)
    assert len(kept) == len(fresh) == 12
    for a, b in zip(kept, fresh):  # the same items, and the same draws of the workers' RNG
        assert torch.equal(a[:, [0, 2]], b[:, [0, 2]])
    passes = 3 * (2 if n == 24 else 1)
    assert len(kept_pids) == 2 and len(fresh_pids) == 2 * passes  # started once, not per pass


def test_persistent_workers_train_as_workers_started_each_pass(tmp_path: Path) -> None:
    data = {"loader": {"workers": 2}, "args": {"n": 40}}  # passes end inside epochs
    _, kept = _losses(_config(_write(tmp_path, data)))
    data["loader"]["persistent"] = False
    (tmp_path / "fresh").mkdir()
    _, fresh = _losses(_config(_write(tmp_path / "fresh", data)))
    assert kept == fresh


@pytest.mark.parametrize("ranked", [True, False])
def test_each_rank_reads_a_disjoint_share_and_all_ranks_the_whole(ranked: bool) -> None:
    shares = []
    for rank in range(2):
        iterable = _Counted(50, ranked)
        stream = UserStream(iterable, "counted")
        assert stream.ranked == ranked
        shares.append([int(x[0]) for x, _ in stream.items(7, rank, 2)])
        # set_rank: the rank reads its share only; without, the whole stream
        assert iterable.read == (25 if ranked else 50)
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(50))
    alone = UserStream(_Counted(50, ranked), "counted")
    assert [int(x[0]) for x, _ in alone.items(7, 0, 1)] != shares[0]  # world 1: everything
    assert sorted(int(x[0]) for x, _ in alone.items(7, 0, 1)) == list(range(50))


def test_under_nproc_an_iterable_without_set_rank_is_noted(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import trainlab.components.user_data as user_data

    monkeypatch.setattr(user_data, "rank_and_world", lambda: (0, 2))
    config = _config(_write(tmp_path))
    notes = load_dataset(config.data, config.model, steps_per_epoch=6).info.notes
    assert any("set_rank" in n and "whole stream" in n for n in notes), notes
    ranked = _config(_write(tmp_path, {"target": "streams.py:ranked"}))
    notes = load_dataset(ranked.data, ranked.model, steps_per_epoch=6).info.notes
    assert not any("set_rank" in n for n in notes), notes
