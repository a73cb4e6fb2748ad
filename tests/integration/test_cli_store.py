"""Every command closes the store it opened, on success and on bad input alike (the SQLite
connection is closed explicitly, not left to the garbage collector)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import trainlab.store
from trainlab.cli import app

runner = CliRunner()
SWEEP: dict[str, Any] = {
    "name": "closing",
    "data": {"name": "synthetic", "n_samples": 64, "shape": [4], "n_classes": 2,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 4},
    "train": {"epochs": 1, "threads": 1},
}


def _is_closed(store: Any) -> bool:
    try:
        store.conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_each_command_closes_its_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []
    real = trainlab.store.open_store

    def recording(*args: Any, **kwargs: Any) -> Any:
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(trainlab.store, "open_store", recording)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    where = ["--store", str(tmp_path / "s")]
    commands = [(["run", str(config), *where, "-q"], 0),
                (["run", str(config), *where, "--jobs", "0"], 2),
                (["plan", str(config), *where], 0),
                (["ls", *where], 0),
                (["ls", *where, "--status", "nonsense"], 2)]
    for args, code in commands:
        opened.clear()
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert len(opened) == 1 and _is_closed(opened[0]), args
    run_id = real(tmp_path / "s").runs()["run_id"].iloc[0]
    opened.clear()
    assert runner.invoke(app, ["show", run_id[:6], *where]).exit_code == 0
    assert len(opened) == 1 and _is_closed(opened[0])
