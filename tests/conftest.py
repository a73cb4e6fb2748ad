"""Shared fixtures: tiny sweeps that train in well under a second."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "synthetic", "n_samples": 256, "shape": [8], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 16},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "log_every": 3},
}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A fresh copy of a tiny sweep document (edit it freely)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a sweep document to a YAML file and return its path."""

    def write(doc: dict[str, Any] | str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


def store_content(store: Path) -> str:
    """A store's content as SQL (not its file bytes: SQLite may checkpoint its WAL on close).

    Read-only, so reading it never checkpoints the WAL itself.
    """
    conn = sqlite3.connect(f"file:{store / 'trainlab.db'}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()
