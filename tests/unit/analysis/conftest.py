"""Fixtures: hand-made stores (see fakes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.unit.analysis.fakes import LM_VARIED, add_sweep, lm_runs
from trainlab.store import Store, open_store


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Store]:
    """``make_store(name, varied, runs, metric=...)`` -> an open store holding that sweep."""
    counter = iter(range(1000))

    def make(name: str, varied: list[str], runs: Sequence[dict[str, Any]],
             metric: str = "perplexity") -> Store:
        store = open_store(tmp_path / f"store{next(counter)}")
        add_sweep(store, name, varied, runs, metric)
        return store

    return make


@pytest.fixture
def lm_store(make_store: Callable[..., Store]) -> Store:
    return make_store("lm", LM_VARIED, lm_runs())
