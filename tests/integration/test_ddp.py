"""train.nproc / --nproc: one run trained by several DDP processes through torchrun (gloo on
CPU here; NCCL is exercised by the gpu-marked test).  The done-means test: a 2-process run
matches a single-process run on the same global batch."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config.schema import resolve_run
from trainlab.engine import train
from trainlab.records import NullSink
from trainlab.store import open_store

runner = CliRunner()
SWEEP: dict[str, Any] = {
    "name": "ddp",
    # 210 training examples in batches of 16: the last batch (2) splits 1 + 1 over two ranks,
    # so the loss scaling for uneven shards is exercised too.
    "data": {"name": "synthetic", "n_samples": 300, "shape": [10], "n_classes": 4,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 32},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 3, "seed": 7, "log_every": 5, "threads": 1},
}


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _by_epoch(metrics: Any, key: str) -> list[float]:
    rows = metrics[metrics["key"] == key].sort_values("step")
    return list(rows["value"])


# A Dataset of the user's own, read item by item through one DataLoader worker per rank: each
# rank loads its slice of every global batch.
ITEMS = """
import torch
from torch.utils.data import Dataset


class Items(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(300, 10, generator=g)
        self.y = self.x[:, :4].argmax(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def items():
    return {"train": Items()}
"""
OWN_DATA = {"name": "python", "target": "ddpdata.py:items", "task": "classification",
            "num_classes": 4, "batch_size": 16, "loader": {"workers": 1}}


@pytest.mark.parametrize("data", [None, OWN_DATA], ids=["tensors", "dataset-with-workers"])
def test_two_gloo_ranks_match_one_process_on_the_same_global_batch(
        tmp_path: Path, data: dict[str, Any] | None) -> None:
    doc = copy.deepcopy(SWEEP)
    if data is not None:
        (tmp_path / "ddpdata.py").write_text(ITEMS)
        doc["data"] = data
    config = _write(tmp_path, doc)
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(config), "--store", str(store), "--nproc", "2"])
    assert result.exit_code == 0, result.output
    st = open_store(store)
    run = st.runs("ddp").iloc[0]
    assert run["status"] == "ok", run["error"]
    assert run["config"]["train"]["nproc"] == 2 and run["env"]["nproc"] == 2
    ddp = st.metrics([run["run_id"]])
    # The single-process run: same config but one process, trained here.
    raw = copy.deepcopy(doc)
    del raw["name"]
    sink = NullSink()
    single_dir = tmp_path / "single"
    outcome = train(resolve_run(raw, root=str(tmp_path)), run_dir=single_dir, sink=sink)
    assert outcome.status == "ok"
    single = {(r.key, r.step): r.value for r in sink.records}
    # The same rows (DDP adds each rank's peak memory), no duplicates.
    ddp_keys = {(k, s) for k, s in zip(ddp["key"], ddp["step"])}
    per_rank = {(k, s) for k, s in ddp_keys if "/rank" in k}
    assert ddp_keys - per_rank == set(single)
    assert {k for k, _ in per_rank} == {"memory/peak_bytes/rank0", "memory/peak_bytes/rank1"}
    assert not ddp.duplicated(["key", "step"]).any()
    for key in ("train/loss", "valid/loss", "valid/accuracy", "test/loss", "test/accuracy",
                "train/step_loss", "grad_norm"):
        mine = _by_epoch(ddp, key)
        theirs = [v for (k, _), v in sorted(single.items(), key=lambda kv: kv[0][1])
                  if k == key]
        assert len(mine) == len(theirs) > 0, key
        assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6), key
    # Final weights agree to float rounding (two half-batch gradients summed vs one batch).
    w_ddp = torch.load(store / "runs" / run["run_id"] / "last.pt", weights_only=False)["model"]
    w_one = torch.load(single_dir / "last.pt", weights_only=False)["model"]
    for name in w_one:
        torch.testing.assert_close(w_ddp[name], w_one[name], rtol=1e-5, atol=1e-5)
    # Throughput counts the group's samples, not one rank's.
    assert run["summary"]["steps"] == 3 * 14
    assert (store / "runs" / run["run_id"] / "torchrun.log").is_file()  # the ranks' output


def test_nproc_over_the_cores_is_bad_input(tmp_path: Path) -> None:
    config = _write(tmp_path, SWEEP)
    too_many = (os.cpu_count() or 1) + 1
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                 "--nproc", str(too_many), "--set", "train.device=cpu"])
    assert result.exit_code == 2, result.output
    assert "`train.nproc`" in result.output and "core" in result.output
    assert "Traceback" not in result.output


def test_nproc_that_cannot_split_the_batch_is_bad_input(tmp_path: Path) -> None:
    doc = copy.deepcopy(SWEEP)
    doc["data"]["batch_size"] = 1
    result = runner.invoke(app, ["run", str(_write(tmp_path, doc)), "--store",
                                 str(tmp_path / "s"), "--nproc", "2"])
    assert result.exit_code == 2, result.output
    assert "`data.batch_size`" in result.output
    zero = runner.invoke(app, ["run", str(_write(tmp_path, SWEEP)), "--store",
                               str(tmp_path / "s"), "--nproc", "0"])
    assert zero.exit_code == 2 and "train.nproc" in zero.output


def test_ctrl_c_stops_every_rank_and_the_run_resumes(tmp_path: Path) -> None:
    doc = copy.deepcopy(SWEEP)
    doc["data"]["n_samples"] = 4000
    # Epochs enough that the run is still training when its first epoch's records (written
    # at most a second late) are seen.
    doc["train"] = {**doc["train"], "epochs": 12, "log_every": 10}
    config = _write(tmp_path, doc)
    store = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "trainlab.cli", "run", str(config), "--store", str(store),
           "-q", "--nproc", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (store / "trainlab.db").is_file():
            metrics = open_store(store).metrics(keys=["valid/loss"])
            if len(metrics) >= 1:
                break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    run = open_store(store).runs("ddp").iloc[0]
    assert run["status"] == "interrupted"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    st = open_store(store)
    run = st.runs("ddp").iloc[0]
    assert run["status"] == "ok" and run["summary"]["epochs"] == 12
    metrics = st.metrics([run["run_id"]])
    assert not metrics.duplicated(["key", "step"]).any()
    assert sorted(metrics[metrics["key"] == "valid/loss"]["epoch"]) == list(range(1, 13))
    # Resumed where it stopped (mid-epoch, data order and RNG included): the curve is the one
    # a single uninterrupted process draws.
    raw = copy.deepcopy(doc)
    del raw["name"]
    sink = NullSink()
    assert train(resolve_run(raw), sink=sink).status == "ok"
    for key in ("valid/loss", "train/loss"):
        single = [r.value for r in sorted(sink.records, key=lambda r: r.step) if r.key == key]
        assert _by_epoch(metrics, key) == pytest.approx(single, rel=1e-5), key


@pytest.mark.gpu
def test_nccl_ranks_on_gpus_match_one_gpu(tmp_path: Path) -> None:
    """python -m pytest -m gpu tests/integration/test_ddp.py (needs 2 GPUs)"""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs at least 2 GPUs")
    doc = copy.deepcopy(SWEEP)
    doc["train"] = {**doc["train"], "device": "cuda"}
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(_write(tmp_path, doc)), "--store", str(store),
                                 "--nproc", "2"])
    assert result.exit_code == 0, result.output
    run = open_store(store).runs("ddp").iloc[0]
    assert run["status"] == "ok" and run["summary"]["device"].startswith("cuda")
    metrics = open_store(store).metrics([run["run_id"]])
    assert {"memory/peak_bytes/rank0", "memory/peak_bytes/rank1"} <= set(metrics["key"])
    raw = copy.deepcopy(doc)
    del raw["name"]
    sink = NullSink()
    assert train(resolve_run(raw), sink=sink).status == "ok"
    single = [r.value for r in sink.records if r.key == "valid/loss"]
    assert _by_epoch(metrics, "valid/loss") == pytest.approx(single, rel=1e-4)


@pytest.mark.gpu
def test_nproc_over_the_gpus_is_bad_input(tmp_path: Path) -> None:
    """python -m pytest -m gpu tests/integration/test_ddp.py"""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    doc = copy.deepcopy(SWEEP)
    doc["train"] = {**doc["train"], "device": "cuda"}
    result = runner.invoke(app, ["run", str(_write(tmp_path, doc)), "--store",
                                 str(tmp_path / "s"), "--nproc",
                                 str(torch.cuda.device_count() + 1)])
    assert result.exit_code == 2 and "GPU" in result.output
