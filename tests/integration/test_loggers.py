"""--log wandb|mlflow|tensorboard: each tracker writes real output offline, read back here and
compared with the store, which stays the source of truth."""

from __future__ import annotations

import builtins
import glob
import importlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.store import open_store

runner = CliRunner()
SWEEP: dict[str, Any] = {
    "name": "tracked",
    "data": {"name": "synthetic", "n_samples": 256, "shape": [8], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 16},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "log_every": 3, "threads": 1},
    "grid": {"model.hidden_dim": [8, 16]},
}


def _sweep(tmp_path: Path, *extra: str) -> tuple[Path, Any]:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(config), "--store", str(store), "-q", *extra])
    assert result.exit_code == 0, result.output
    return store, open_store(store)


def _store_rows(st: Any, run_id: str) -> dict[tuple[str, int], float]:
    m = st.metrics([run_id])
    return {(k, int(s)): v for k, s, v in zip(m["key"], m["step"], m["value"])}


def test_tensorboard_event_files_hold_every_record(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="pip install 'trainlab[tensorboard]' (CI does)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Through the worker pool: records reach the trackers in the parent whoever trains.
    store, st = _sweep(tmp_path, "--log", "tensorboard", "--jobs", "2")
    runs = st.runs("tracked")
    assert list(runs["status"]) == ["ok", "ok"]
    for run in runs.to_dict(orient="records"):
        (logdir,) = glob.glob(str(store / "tensorboard" / "tracked" / f"*-{run['run_id']}"))
        events = EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        mirrored = {(tag, e.step): e.value for tag in events.Tags()["scalars"]
                    for e in events.Scalars(tag)}
        stored = _store_rows(st, run["run_id"])
        assert set(stored) <= set(mirrored)
        for key, value in stored.items():
            assert mirrored[key] == pytest.approx(value, rel=1e-6), key  # float32 in TB
        assert mirrored[("summary/test_accuracy", run["summary"]["steps"])] == pytest.approx(
            run["summary"]["test_accuracy"])
        texts = events.Tags()["tensors"]
        assert {"config/text_summary", "env/text_summary", "summary/text_summary"} <= set(texts)


def test_mlflow_sqlite_tracking_uri_holds_every_record(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="pip install 'trainlab[mlflow]' (CI does)")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    _, st = _sweep(tmp_path, "--log", "mlflow")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    for run in st.runs("tracked").to_dict(orient="records"):
        (found,) = client.search_runs([experiment.experiment_id],
                                      f"tags.`trainlab.run_id` = '{run['run_id']}'")
        assert found.info.status == "FINISHED"
        assert found.data.params["model.hidden_dim"] == str(run["config"]["model"]["hidden_dim"])
        assert found.data.tags["trainlab.status"] == "ok"
        assert found.data.tags["env.torch"] == run["env"]["torch"]
        stored = _store_rows(st, run["run_id"])
        for key in {k for k, _ in stored}:
            history = {m.step: m.value for m in client.get_metric_history(found.info.run_id,
                                                                          key)}
            assert history == {s: v for (k, s), v in stored.items() if k == key}, key
        assert found.data.metrics["summary/test_accuracy"] == pytest.approx(
            run["summary"]["test_accuracy"])


def _wandb_records(path: str) -> Iterator[bytes]:
    """The records of a W&B transaction log (LevelDB's log format behind a W&B header)."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, partial = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            partial = chunk
        elif kind == 3:  # middle
            partial += chunk
        elif kind == 4:  # last
            yield partial + chunk


def _key(item: Any) -> str:
    return str(item.key) or "/".join(item.nested_key)  # "a/b" keys arrive split


def test_wandb_offline_run_holds_every_record(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="pip install 'trainlab[wandb]' (CI does)")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    store, st = _sweep(tmp_path, "--log", "wandb")
    for run in st.runs("tracked").to_dict(orient="records"):
        (path,) = glob.glob(str(store / "wandb" / f"offline-run-*-{run['run_id']}" / "*.wandb"))
        history: dict[tuple[str, int], float] = {}
        summary: dict[str, Any] = {}
        config: dict[str, Any] = {}
        for raw in _wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {_key(i): json.loads(i.value_json) for i in record.history.item}
                history.update({(k, row["_step"]): v for k, v in row.items()
                                if not k.startswith("_") and k != "epoch"})
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json)
                                for i in record.summary.update})
            elif kind == "run":
                assert record.run.run_id == run["run_id"]
                assert record.run.run_group == "tracked"
                config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
        assert history == pytest.approx(_store_rows(st, run["run_id"]))
        assert summary["status"] == "ok"
        assert summary["summary/test_accuracy"] == pytest.approx(run["summary"]["test_accuracy"])
        assert config["model"]["hidden_dim"] == run["config"]["model"]["hidden_dim"]
        assert config["env"]["torch"] == run["env"]["torch"]


def test_wandb_console_lines_stay_out_of_the_progress_display(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's own lines ("Tracking run ...", its history, "You can sync ...") came between the
    runs' progress lines; now W&B is quiet and one line says where the runs went, after the
    last run's line."""
    pytest.importorskip("wandb", reason="pip install 'trainlab[wandb]' (CI does)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_SILENT", "WANDB_CONSOLE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**SWEEP, "train": {**SWEEP["train"], "epochs": 1}}))
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(config), "--store", str(store), "--no-estimate",
                                 "--log", "wandb"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    ran = [i for i, line in enumerate(lines) if " ok run " in f" {line.strip()} "]
    said = [i for i, line in enumerate(lines) if line.lstrip().startswith("wandb:")]
    assert len(ran) == 2, result.output
    assert len(said) == 1 and said[0] > ran[-1], result.output
    assert f"wandb: 2 runs saved offline in {store / 'wandb'}" in " ".join(result.output.split())
    assert "wandb sync" in lines[said[0]]


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "tensorboard"])
def test_a_missing_tracker_package_says_how_to_install_it(
        tracker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == tracker or name.startswith(f"{tracker}."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    real_import_module = importlib.import_module

    def refuse_module(name: str, package: str | None = None) -> Any:
        if name == tracker or name.startswith(f"{tracker}."):
            raise ImportError(f"No module named {name!r}")
        return real_import_module(name, package)

    monkeypatch.setattr(builtins, "__import__", refuse)
    monkeypatch.setattr("importlib.import_module", refuse_module)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                 "--log", tracker])
    assert result.exit_code == 2, result.output
    assert f'pip install "trainlab[{tracker}]"' in result.output
    assert open_store(tmp_path / "s").runs().empty


def test_an_unknown_tracker_is_bad_input(tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                 "--log", "tensorbord"])
    assert result.exit_code == 2 and "did you mean 'tensorboard'" in result.output
