"""The user's own code everywhere the built-in components work: --jobs workers (fork and
spawn), torchrun ranks, lr-find and optimizer.lr: auto, estimate, report, and the own-code
example copied out and run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.execute import pool
from trainlab.store import open_store

runner = CliRunner()

NETS = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


def loss(out, y):
    return nn.functional.cross_entropy(out, y, label_smoothing=0.05)
'''

SWEEP: dict[str, Any] = {
    "name": "own",
    "data": {"name": "synthetic", "n_samples": 400, "shape": [16], "n_classes": 4,
             "batch_size": 16},
    "model": {"name": "python", "target": "code/nets.py:Net"},
    "optimizer": {"name": "python", "target": "torch.optim:SGD", "lr": 0.05,
                  "args": {"momentum": 0.9}},
    "train": {"epochs": 2, "log_every": 4, "threads": 1, "loss": "code/nets.py:loss"},
    "grid": {"model.args.hidden": [8, 16]},
}


def _project(tmp_path: Path, **changes: Any) -> Path:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "nets.py").write_text(NETS)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


def _metrics(store: Path) -> list[tuple[Any, ...]]:
    st = open_store(store)
    rows = st.metrics(list(st.runs()["run_id"]))
    rows = rows[rows["key"].str.match(r"^(train|valid|test)/|^lr$")]
    return sorted(map(tuple, rows[["run_id", "key", "step", "value"]].values.tolist()))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_jobs_workers_train_own_code_as_one_process_does(
        tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _project(tmp_path)
    one = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "one"), "-q",
                              "--no-estimate"])
    assert one.exit_code == 0, one.output
    monkeypatch.setattr(pool, "start_method", lambda threads, gpus: method)
    two = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "two"), "-q",
                              "--jobs", "2", "--no-estimate"])
    assert two.exit_code == 0, two.output
    assert _metrics(tmp_path / "one") == _metrics(tmp_path / "two")


def test_torchrun_ranks_load_own_code(tmp_path: Path) -> None:
    config = _project(tmp_path, grid={})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "trainlab.cli", "run", str(config), "--store",
         str(tmp_path / "s"), "-q", "--nproc", "2", "--no-estimate"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = open_store(tmp_path / "s").runs()
    assert list(runs["status"]) == ["ok"] and runs.iloc[0]["env"]["nproc"] == 2


def test_lr_find_and_lr_auto_and_estimate_on_own_code(tmp_path: Path) -> None:
    config = _project(tmp_path, grid={}, lr_find={"steps": 20, "end": 1.0})
    found = runner.invoke(app, ["lr-find", str(config), "--store", str(tmp_path / "s"),
                                "--json"])
    assert found.exit_code in (0, 1), found.output
    assert json.loads(found.output)["tests"][0]["suggestions"], found.output
    estimated = runner.invoke(app, ["estimate", str(config), "--json", "--no-calibrate"])
    assert estimated.exit_code == 0, estimated.output
    assert json.loads(estimated.output)["runs"][0]["params_total"] > 0
    auto = _project(tmp_path, grid={}, lr_find={"steps": 20, "end": 1.0},
                    optimizer={**SWEEP["optimizer"], "lr": "auto"})
    ran = runner.invoke(app, ["run", str(auto), "--store", str(tmp_path / "s"), "-q",
                              "--no-estimate"])
    assert ran.exit_code == 0, ran.output
    summary = open_store(tmp_path / "s").runs().iloc[-1]["summary"]
    assert summary["lr_chosen"] and summary["lr_chosen"] > 0


def test_the_own_code_example_copies_out_and_runs(tmp_path: Path) -> None:
    copied = runner.invoke(app, ["examples", "own-code", "--copy", str(tmp_path / "mine")])
    assert copied.exit_code == 0, copied.output
    assert (tmp_path / "mine" / "own_code" / "nets.py").is_file()
    again = runner.invoke(app, ["examples", "own-code", "--copy", str(tmp_path / "mine")])
    assert again.exit_code == 2 and "nothing was written" in again.output
    result = runner.invoke(app, [
        "run", str(tmp_path / "mine" / "own-code.yaml"), "--store", str(tmp_path / "s"), "-q",
        "--no-estimate", "--set", "data.limit=64", "--set", "train.epochs=1",
        "--set", "data.args.seq_len=8"])
    assert result.exit_code == 0, result.output
    runs = open_store(tmp_path / "s").runs()
    assert sorted(runs["status"]) == ["ok", "ok"]
    report = runner.invoke(app, ["report", "--store", str(tmp_path / "s"), "--out",
                                 str(tmp_path / "report"), "--format", "png"])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "report" / "report.html").read_text()
    assert "own_code/nets.py:TiedLSTM" in html and "own_code/nets.py:MiniGPT" in html


def test_ray_ships_own_code_and_a_worker_finds_it_in_its_working_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    from trainlab.config import load_sweep
    from trainlab.execute.ray import _code_here, code_runtime_env
    from trainlab.plan import make_plan

    config = _project(tmp_path / "proj" if (tmp_path / "proj").mkdir() is None else tmp_path,
                      grid={})
    planned = make_plan(load_sweep(config), None).runs[0]
    env = code_runtime_env([planned], tmp_path / "proj" / "trainlab-runs")
    assert env is not None and env["working_dir"] == str((tmp_path / "proj").resolve())
    assert "trainlab-runs" in env["excludes"]
    # A worker on another node: the driver's folder is not there, Ray unpacked it as the cwd.
    (tmp_path / "proj").rename(tmp_path / "unpacked")
    monkeypatch.chdir(tmp_path / "unpacked")
    here = _code_here(planned)
    assert here.run_id == planned.run_id
    assert here.run.config.root == str((tmp_path / "unpacked").resolve())
    # The code that arrived differs from the driver's: the task refuses to train it.
    (tmp_path / "unpacked" / "code" / "nets.py").write_text(NETS + "\n# edited\n")
    with pytest.raises(RuntimeError, match="differs from the driver's"):
        _code_here(planned)
    # Built-in components only: nothing to ship.
    builtin = make_plan(load_sweep(_project(tmp_path / "unpacked", grid={},
                                            model={"name": "mlp"}, train={"epochs": 1})),
                        None).runs[0]
    assert code_runtime_env([builtin], tmp_path) is None
