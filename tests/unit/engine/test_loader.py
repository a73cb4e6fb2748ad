"""``data.loader``: a Dataset's items through DataLoader workers, measured.

Workers change where items are read, not what trains: the curves equal the in-process
loader's.  A worker that raises or dies fails its run with the worker's traceback; the loop's
wait for each batch is recorded as ``time/data_wait``; bad settings are exit 2 before training.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config import expand, load_sweep
from trainlab.config.schema import RunConfig
from trainlab.engine import train
from trainlab.records import NullSink

runner = CliRunner()

USER = textwrap.dedent('''
    import os
    import signal
    import time

    import torch
    from torch.utils.data import Dataset, get_worker_info


    class Items(Dataset):
        """Fixed items (no augmentation): any loader must train the same curve on them."""

        def __init__(self, n, seed, fail_at=None, die_at=None, sleep=0.0):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 6, generator=g)
            self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()
            self.fail_at, self.die_at, self.sleep = fail_at, die_at, sleep

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            if i == self.fail_at:
                raise ValueError(f"item {i} is corrupt")
            if i == self.die_at and get_worker_info() is not None:
                os.kill(os.getpid(), signal.SIGKILL)  # a worker killed (the OOM killer, say)
            if self.sleep:
                time.sleep(self.sleep)  # a read from a slow disk
            return self.x[i], int(self.y[i])


    def items(n=96, **kw):
        return {"train": Items(n, 0, **kw), "valid": Items(32, 1), "test": Items(16, 2)}
''')


def _sweep(tmp_path: Path, loader: dict[str, Any] | None, args: dict[str, Any] | None = None,
           **train: Any) -> Path:
    (tmp_path / "mydata.py").write_text(USER)
    data: dict[str, Any] = {"name": "python", "target": "mydata.py:items", "args": args or {},
                            "task": "classification", "num_classes": 3, "batch_size": 16}
    if loader is not None:
        data["loader"] = loader
    doc = {"name": "loaders", "data": data,
           "model": {"name": "mlp", "hidden_dim": 16, "dropout": 0.2},
           "optimizer": {"name": "adam", "lr": 0.01},
           "train": {"epochs": 3, "log_every": 2, "seed": 3, **train}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _config(path: Path) -> RunConfig:
    (run,) = expand(load_sweep(path))
    return run.config


def _curve(sink: NullSink, key: str) -> list[float]:
    return [r.value for r in sink.records if r.key == key]


@pytest.mark.parametrize("loader", [{"workers": 2}, {"workers": 1, "persistent": False,
                                                     "prefetch": 1}],
                         ids=["2-persistent", "1-per-epoch"])
def test_workers_train_the_curve_the_training_process_does(tmp_path: Path,
                                                           loader: dict[str, Any]) -> None:
    reference, loaded = NullSink(), NullSink()
    base = train(_config(_sweep(tmp_path, None)), sink=reference)
    assert base.status == "ok", base.error
    outcome = train(_config(_sweep(tmp_path, loader)), sink=loaded)
    assert outcome.status == "ok", outcome.error
    for key in ("train/step_loss", "valid/loss", "test/accuracy"):
        assert _curve(loaded, key) == _curve(reference, key), key
    assert outcome.summary["speed"]["loader"]["workers"] == loader["workers"]
    assert "loader" in base.summary["speed"]  # a Dataset was loaded, at the default settings
    waits = _curve(loaded, "time/data_wait")
    fracs = _curve(loaded, "time/data_wait_frac")
    assert len(waits) == len(fracs) == 3
    assert all(w >= 0 for w in waits) and all(0 <= f <= 1 for f in fracs)


def test_the_wait_for_batches_is_measured(tmp_path: Path) -> None:
    """Items that take 4 ms each to read (a slow disk): an epoch of a tiny MLP is then almost
    all waiting for data, and the record says so."""
    sink = NullSink()
    config = _config(_sweep(tmp_path, {"workers": 0}, {"n": 48, "sleep": 0.004}, epochs=1))
    outcome = train(config, sink=sink)
    assert outcome.status == "ok", outcome.error
    (wait,) = _curve(sink, "time/data_wait")
    (frac,) = _curve(sink, "time/data_wait_frac")
    assert wait >= 48 * 0.004 * 0.9  # the first batch is the warm-up step's: still waited for
    assert frac > 0.5


def test_a_worker_that_raises_fails_the_run_with_its_traceback(tmp_path: Path) -> None:
    config = _config(_sweep(tmp_path, {"workers": 2}, {"fail_at": 7}))
    outcome = train(config)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "item 7 is corrupt" in outcome.error
    assert "DataLoader worker process" in outcome.error  # where it was raised
    assert "mydata.py" in outcome.error  # the worker's own traceback


def test_a_worker_that_dies_fails_the_run(tmp_path: Path) -> None:
    config = _config(_sweep(tmp_path, {"workers": 1}, {"die_at": 5}))
    outcome = train(config)
    assert outcome.status == "failed"
    assert outcome.error is not None and "killed by signal" in outcome.error


def test_a_loader_on_tensors_in_memory_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump({
        "name": "digits", "data": {"name": "digits", "loader": {"workers": 2}},
        "model": {"name": "mlp", "hidden_dim": 8}, "train": {"epochs": 1}}))
    outcome = train(_config(path))
    assert outcome.status == "ok", outcome.error
    assert any("data.loader has no effect" in n for n in outcome.summary["notes"])
    assert "loader" not in outcome.summary["speed"]


def test_the_loader_is_part_of_the_run_id_only_when_set(tmp_path: Path) -> None:
    none = _config(_sweep(tmp_path, None))
    two = _config(_sweep(tmp_path, {"workers": 2}))
    four = _config(_sweep(tmp_path, {"workers": 4}))
    assert len({none.run_id, two.run_id, four.run_id}) == 3
    assert "loader" not in none.to_dict()["data"] or none.data.loader is None


def test_a_grid_sweeps_loader_fields(tmp_path: Path) -> None:
    path = _sweep(tmp_path, None)
    doc = yaml.safe_load(path.read_text())
    doc["grid"] = {"data.loader.workers": [0, 2], "data.loader.pin_memory": [False]}
    path.write_text(yaml.safe_dump(doc))
    runs = expand(load_sweep(path))
    assert [r.config.data.loader.workers for r in runs] == [0, 2]  # type: ignore[union-attr]


@pytest.mark.parametrize("loader, field, says", [
    ({"workers": 4096}, "data.loader.workers", "CPU"),
    ({"workers": -1}, "data.loader.workers", "greater than or equal to 0; got -1"),
    ({"pin_memory": "sometimes"}, "data.loader.pin_memory", "'auto' or true or false"),
    ({"prefetch_factor": 2}, "data.loader.prefetch_factor", "data.loader.prefetch"),
])
def test_bad_loader_settings_are_exit_2_before_training(tmp_path: Path, loader: dict[str, Any],
                                                        field: str, says: str) -> None:
    path = _sweep(tmp_path, loader)
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    assert field in result.output and says in result.output
    assert "Traceback" not in result.output
    runs = tmp_path / "store" / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # nothing trained
