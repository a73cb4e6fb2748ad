"""``data: {name: hf, streaming: true}``: a Hugging Face dataset read as a stream, from local
files in the hub's formats (parquet, json) with the tiny tokenizers of ``tiny_hf``: nothing
needs the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import datasets

from tests.conftest import sentiment_rows
from tests.helpers import StopAt, recorded
from trainlab.components import load_dataset
from trainlab.components.datasets import Split
from trainlab.components.streams import StreamSplit
from trainlab.config.schema import resolve_component, resolve_run
from trainlab.engine import interrupt, train
from trainlab.errors import ConfigError
from trainlab.records import NullSink


def _parquet(tmp_path: Path) -> dict[str, Any]:
    """Train in two parquet shards (DataLoader workers split them), validation in one."""
    files = {"train": str(tmp_path / "train-*.parquet"),
             "validation": str(tmp_path / "valid.parquet")}
    for i in range(2):
        path = tmp_path / f"train-{i}.parquet"
        datasets.Dataset.from_dict(sentiment_rows(120, seed=i)).to_parquet(str(path))
    datasets.Dataset.from_dict(sentiment_rows(40, seed=9)).to_parquet(files["validation"])
    return files


def _json(tmp_path: Path) -> dict[str, Any]:
    """The same rows as json lines (datasets' parquet reader pauses 5 s as a pass ends)."""
    files = {"train": str(tmp_path / "train-*.json"), "validation": str(tmp_path / "v.json")}
    for name, n, seed in (("train-0", 120, 0), ("train-1", 120, 1), ("v", 40, 9)):
        rows = sentiment_rows(n, seed=seed)
        (tmp_path / f"{name}.json").write_text("\n".join(
            json.dumps({"sentence": s, "label": y}) for s, y in zip(rows["sentence"],
                                                                    rows["label"])))
    return files


def _raw(tmp_path: Path, tiny_hf: dict[str, str], files: str = "parquet",
         **train_: Any) -> dict[str, Any]:
    data_files = _parquet(tmp_path) if files == "parquet" else _json(tmp_path)
    return {"data": {"name": "hf", "path": files, "data_files": data_files,
                     "streaming": True, "shuffle_buffer": 64, "max_length": 8,
                     "batch_size": 16},
            "model": {"name": "hf", "path": tiny_hf["bert"]},
            "optimizer": {"name": "adamw", "lr": 1e-2},
            "train": {"epochs": 2, "log_every": 2, "seed": 3, "threads": 1,
                      "steps_per_epoch": 5, **train_}}


def _losses(raw: dict[str, Any], **kw: Any) -> tuple[Any, list[float]]:
    sink = NullSink()
    outcome = train(resolve_run(raw), sink=sink, **kw)
    assert outcome.status == "ok", outcome.error
    return outcome, recorded(sink, "train/step_loss")


@pytest.mark.slow  # tiny BERT runs; datasets pauses 5 s as a parquet pass ends
def test_a_stream_trains_its_steps_and_its_order_follows_the_seed(
        tiny_hf: dict[str, str], tmp_path: Path) -> None:
    raw = _raw(tmp_path, tiny_hf)
    config = resolve_run(raw)
    data = load_dataset(config.data, config.model, steps_per_epoch=5)
    assert isinstance(data.train, StreamSplit) and len(data.train) == 80
    assert isinstance(data.valid, Split) and len(data.valid) == 40 and len(data.test) == 0
    assert data.info.num_outputs == 2
    outcome, losses = _losses(raw)
    assert outcome.summary["steps"] == 10 and len(losses) == 6  # 2, 4, 5 (epoch end), ...
    assert _losses(raw)[1] == losses  # the same batches on a rerun
    raw["train"]["seed"] = 4
    assert _losses(raw)[1] != losses


@pytest.mark.slow  # tiny BERT runs; datasets pauses 5 s as a parquet pass ends
def test_a_stop_mid_epoch_resumes_to_the_uninterrupted_run(
        tiny_hf: dict[str, str], tmp_path: Path) -> None:
    config = resolve_run(_raw(tmp_path, tiny_hf, "json", log_every=1))
    whole = NullSink()
    assert train(config, run_dir=tmp_path / "whole", sink=whole).status == "ok"
    cut = NullSink()
    assert train(config, run_dir=tmp_path / "cut", sink=cut,
                 callbacks=[StopAt(7)]).status == "interrupted"
    interrupt.clear()
    assert train(config, run_dir=tmp_path / "cut", sink=cut).status == "ok"
    assert recorded(cut, "train/step_loss") == recorded(whole, "train/step_loss")


@pytest.mark.slow  # tiny BERT runs; datasets pauses 5 s as a parquet pass ends
def test_workers_split_the_shards_and_a_packed_lm_streams(
        tiny_hf: dict[str, str], tmp_path: Path) -> None:
    raw = _raw(tmp_path, tiny_hf, epochs=1)
    raw["data"]["loader"] = {"workers": 2}
    _losses(raw)
    texts = [f"the movie was {w} and the end" + " very" * (i % 5)
             for i, w in enumerate(["good", "bad", "nice", "sad"] * 10)]
    path = tmp_path / "lm.json"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    lm = {"data": {"name": "hf", "path": "json", "data_files": str(path), "label": None,
                   "streaming": True, "max_length": 12, "batch_size": 8},
          "model": {"name": "hf", "path": tiny_hf["gpt2"]},
          "optimizer": {"name": "adamw", "lr": 1e-2},
          "train": {"epochs": 1, "steps_per_epoch": 30, "threads": 1}}
    outcome, _ = _losses(lm)  # ~30 windows a pass: the stream is restarted, and said
    assert outcome.summary["steps"] == 30
    assert any("restarted" in n for n in outcome.summary["notes"])
    config = resolve_run(lm)
    x, y = load_dataset(config.data, config.model, steps_per_epoch=30).train.take([0, 1])
    assert x.shape == (2, 12) and torch.equal(x[0, 1:], y[0, :-1])  # next-token targets


@pytest.mark.parametrize(("extra", "train_", "field"), [
    ({}, {"steps_per_epoch": None}, "train.steps_per_epoch"),
    ({"in_memory": False}, {}, "data.in_memory"),
    ({"limit": 10}, {}, "data.limit"),
    ({"valid_split": "dev"}, {}, "data.valid_split"),
])
def test_bad_streaming_input_names_the_field(tiny_hf: dict[str, str], tmp_path: Path,
                                             extra: dict[str, Any], train_: dict[str, Any],
                                             field: str) -> None:
    raw = _raw(tmp_path, tiny_hf, "json", **train_)
    raw["data"].update(extra)
    raw["train"] = {k: v for k, v in raw["train"].items() if v is not None}
    config = resolve_run(raw)
    with pytest.raises(ConfigError) as info:
        load_dataset(config.data, config.model,
                     steps_per_epoch=config.train.steps_per_epoch)
    assert field in str(info.value)


def test_streaming_fields_left_out_keep_run_ids() -> None:
    spec = resolve_component("data", {"name": "hf", "path": "x"})
    assert "streaming" in type(spec).model_fields
    base = resolve_run({"data": {"name": "hf", "path": "x"}, "model": {"name": "mlp"}}).run_id
    same = resolve_run({"data": {"name": "hf", "path": "x", "streaming": None},
                        "model": {"name": "mlp"}}).run_id
    assert same == base


def test_a_reader_of_one_parquet_shard_skips_the_pause_as_a_pass_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets sleeps 5 s as a parquet pass ends when it interleaves shards into the shuffle
    buffer; a reader of one shard (one file, or one of a worker's share) does not interleave."""
    import time

    from trainlab.components import hf_stream

    files = _parquet(tmp_path)
    one = datasets.load_dataset("parquet", data_files=str(tmp_path / "train-0.parquet"),
                                streaming=True)["train"]
    two = datasets.load_dataset("parquet", data_files=files["train"], streaming=True)["train"]
    assert hf_stream._one_shard(one) == {"max_buffer_input_shards": 1}
    assert hf_stream._one_shard(two) == {}  # interleaved: the buffer mixes the two files
    t = time.perf_counter()
    rows = list(one.shuffle(seed=3, buffer_size=64, **hf_stream._one_shard(one)))
    assert len(rows) == 120 and time.perf_counter() - t < 2.5  # a whole pass, no 5 s pause
    assert rows != list(one)  # still shuffled
    worker = type("Info", (), {"num_workers": 2, "id": 1})()
    monkeypatch.setattr(hf_stream, "get_worker_info", lambda: worker)
    assert hf_stream._one_shard(two) == {"max_buffer_input_shards": 1}  # 1 of the 2 files


def test_a_one_file_parquet_stream_restarts_without_waiting(tiny_hf: dict[str, str],
                                                            tmp_path: Path) -> None:
    raw = _raw(tmp_path, tiny_hf, epochs=1, steps_per_epoch=10)  # 7 batches a pass
    raw["data"]["data_files"]["train"] = str(tmp_path / "train-0.parquet")
    sink = NullSink()
    outcome = train(resolve_run(raw), sink=sink)
    assert outcome.status == "ok", outcome.error
    assert any("restarted" in n for n in outcome.summary["notes"])
    assert recorded(sink, "time/data_wait")[0] < 2.5
