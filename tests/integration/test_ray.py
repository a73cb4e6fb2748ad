"""--executor ray: a local Ray runs the sweep as tasks whose records stream back through the
relay actor into the driver's store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.store import open_store

runner = CliRunner()
SWEEP: dict[str, Any] = {
    "name": "rayed",
    "data": {"name": "synthetic", "n_samples": 400, "shape": [16], "n_classes": 4,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 16, "dropout": 0.1},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "log_every": 4, "threads": 1},
    "grid": {"model.hidden_dim": [8, 16], "optimizer.lr": [0.01, 0.003]},
}
EXACT = ("train/", "valid/", "test/", "lr", "grad_norm", "params/")


def _rows(store: Path) -> pd.DataFrame:
    st = open_store(store)
    metrics = st.metrics(list(st.runs("rayed")["run_id"]))
    return metrics[metrics["key"].str.startswith(EXACT)].sort_values(
        ["run_id", "key", "step"]).reset_index(drop=True)[["run_id", "key", "step", "value"]]


def test_a_local_ray_sweep_ends_complete_in_the_store(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="CI installs the ray extra; pip install 'trainlab[ray]'")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    # --jobs 2: a local Ray of 2 CPUs (it starts a worker process per CPU), cheap on any host.
    rayed = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "ray"),
                                "--executor", "ray", "--cpus-per-run", "1", "--jobs", "2"])
    assert rayed.exit_code == 0, rayed.output
    for index in (1, 2, 3, 4):
        assert f"run {index} " in rayed.output
    runs = open_store(tmp_path / "ray").runs("rayed")
    assert list(runs["status"]) == ["ok"] * 4
    assert all(r["summary"]["test_accuracy"] > 0 for r in runs.to_dict(orient="records"))
    # The same rows and values as the sequential sweep: nothing lost or duplicated on the way.
    local = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "local"), "-q"])
    assert local.exit_code == 0
    pd.testing.assert_frame_equal(_rows(tmp_path / "local"), _rows(tmp_path / "ray"))
    # A rerun on Ray trains nothing: the driver's store knows every run is done.
    again = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "ray"),
                                "--executor", "ray"])
    assert again.exit_code == 0 and "0 to train, 4 already done" in again.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


def test_an_unreachable_ray_address_is_bad_input(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="CI installs the ray extra; pip install 'trainlab[ray]'")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    address = f"127.0.0.1:{_closed_port()}"
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                 "--ray-address", address])
    assert result.exit_code == 2, result.output
    assert f"nothing answers at {address}" in result.output
    assert "Traceback" not in result.output
    assert open_store(tmp_path / "s").runs().empty  # nothing registered
    bad = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                              "--ray-address", "no-port-here"])
    assert bad.exit_code == 2 and "expected HOST:PORT" in bad.output


def test_a_missing_ray_package_says_how_to_install_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    result = runner.invoke(app, ["run", str(config), "--store", str(tmp_path / "s"),
                                 "--executor", "ray"])
    assert result.exit_code == 2
    assert 'pip install "trainlab[ray]"' in result.output


def test_a_local_ray_gets_the_cpus_its_jobs_need() -> None:
    pytest.importorskip("ray", reason="CI installs the ray extra; pip install 'trainlab[ray]'")
    from trainlab.api import load
    from trainlab.execute.pool import usable_cores
    from trainlab.execute.ray import RayExecutor
    from trainlab.plan import make_plan

    plan = make_plan(load({**SWEEP, "train": {**SWEEP["train"], "device": "cpu"}}), None)
    assert RayExecutor()._local_cpus(plan) == usable_cores()
    assert RayExecutor(jobs=2, cpus_per_run=1.5)._local_cpus(plan) == 3
    ddp = make_plan(load({**SWEEP, "train": {**SWEEP["train"], "device": "cpu", "nproc": 2}}),
                    None)
    assert RayExecutor(jobs=1)._local_cpus(ddp) == 2  # one DDP run needs 2 CPUs at once


NETS = '''
from torch import nn


def net(input_shape, num_classes, hidden=8):
    return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
'''


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head started apart with `ray start --head`, as users run one.  A token in
    ~/.ray/auth_token (what a local ray.init() of Ray >= 2.59 leaves behind) makes the head
    enforce token authentication, which a client connecting by address does not pick up by
    itself: the case users met."""
    pytest.importorskip("ray", reason="CI installs the ray extra; pip install 'trainlab[ray]'")
    ray_cli = Path(sys.executable).with_name("ray")
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path / "home")  # its own ~/.ray: the token this head writes
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
    token = subprocess.run([str(ray_cli), "get-auth-token", "--generate"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert token.returncode == 0, token.stdout + token.stderr
    started = subprocess.run(
        [str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        capture_output=True, text=True, env=env, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, env=env,
                       timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_cluster_started_apart_runs_own_code_with_its_token(
        tmp_path: Path, ray_cluster: tuple[str, dict[str, str]]) -> None:
    address, env = ray_cluster
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "nets.py").write_text(NETS)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        **SWEEP, "name": "cluster", "grid": {"model.args.hidden": [4, 8]},
        "model": {"name": "python", "target": "code/nets.py:net"}}))
    # A client without RAY_AUTH_MODE, as the user's shell has it: the token is picked up.
    result = subprocess.run(
        [sys.executable, "-m", "trainlab.cli", "run", str(config), "--store",
         str(tmp_path / "s"), "--ray-address", address, "-q", "--no-estimate"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = open_store(tmp_path / "s").runs("cluster")
    assert list(runs["status"]) == ["ok", "ok"]
    # A wrong token is refused, and the message says what to set.
    wrong = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}
    refused = subprocess.run(
        [sys.executable, "-m", "trainlab.cli", "run", str(config), "--store",
         str(tmp_path / "s2"), "--ray-address", address, "-q", "--no-estimate"],
        capture_output=True, text=True, env=wrong, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "RAY_AUTH_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
