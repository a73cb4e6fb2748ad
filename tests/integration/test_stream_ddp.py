"""A user's IterableDataset under ``--nproc 2`` (gloo on CPU): with ``set_rank(rank, world)``
each rank reads only its own share of the stream; without it, each rank reads the whole stream
(keeping every other item), and the run's notes say so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.store import open_store

runner = CliRunner()

# Items 0..63 in an order drawn from set_epoch.  Each pass is logged: a line "pass RANK world
# epoch" (RANK: torchrun's, of the reading process), then a line per item read.
DATA = '''
import os
import random

import torch
from torch.utils.data import IterableDataset


class Logged(IterableDataset):
    def __init__(self, log, ranked):
        self.log, self.epoch, self.rank, self.world = log, 0, 0, 1
        if ranked:
            self.set_rank = self._set_rank

    def set_epoch(self, n):
        self.epoch = n

    def _set_rank(self, rank, world):
        self.rank, self.world = rank, world

    def __iter__(self):
        order = list(range(64))
        random.Random(self.epoch).shuffle(order)
        path = os.path.join(self.log, f"{os.getpid()}.txt")
        with open(path, "a") as out:
            out.write(f"pass {os.environ.get('RANK', '-')} {self.world} {self.epoch}\\n")
            out.flush()
        for i in order[self.rank::self.world]:
            with open(path, "a") as out:
                out.write(f"{i}\\n")
            yield torch.tensor([float(i % 7), float(i % 5)]), i % 2


def splits(log, ranked):
    return {"train": Logged(log, ranked)}
'''


def _passes(log: Path) -> list[tuple[str, int, int, list[int]]]:
    """Every pass logged: (rank, world, epoch, the items it read)."""
    out: list[tuple[str, int, int, list[int]]] = []
    for path in log.glob("*.txt"):
        for line in path.read_text().splitlines():
            if line.startswith("pass "):
                _, rank, world, epoch = line.split()
                out.append((rank, int(world), int(epoch), []))
            else:
                out[-1][3].append(int(line))
    return out


@pytest.mark.parametrize("ranked", [True, False], ids=["set_rank", "whole-stream"])
def test_each_rank_reads_only_its_share_with_set_rank(tmp_path: Path, ranked: bool) -> None:
    (tmp_path / "streamdata.py").write_text(DATA)
    log = tmp_path / "log"
    log.mkdir()
    doc: dict[str, Any] = {
        "name": "sddp",
        "data": {"name": "python", "target": "streamdata.py:splits", "task": "classification",
                 "num_classes": 2, "batch_size": 16,
                 "args": {"log": str(log), "ranked": ranked}},
        "model": {"name": "mlp", "hidden_dim": 8},
        "optimizer": {"name": "sgd", "lr": 0.1},
        # 2 steps of 16 (8 a rank) an epoch: 16 items of each rank's pass
        "train": {"epochs": 1, "seed": 3, "threads": 1, "steps_per_epoch": 2},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(tmp_path / "s.yaml"), "--store", str(store),
                                 "--nproc", "2"])
    assert result.exit_code == 0, result.output
    run = open_store(store).runs("sddp").iloc[0]
    assert run["status"] == "ok", run["error"]
    notes = run["summary"]["notes"]
    assert any("set_rank" in n and "whole stream" in n for n in notes) != ranked, notes
    # The training passes (a pass seed, not the 0 of the checks made as the data loads).
    training = sorted(p for p in _passes(log) if p[2] != 0)
    assert [p[0] for p in training] == ["0", "1"], training
    if ranked:  # each rank read 16 items of its own share: none read by both
        assert all(world == 2 and len(read) == 16 for _, world, _, read in training)
        assert not set(training[0][3]) & set(training[1][3])
        assert training[0][2] == training[1][2]  # the same pass (its order), split
    else:  # each read the stream from its start, keeping every other item: twice as many
        assert all(world == 1 and len(read) >= 31 for _, world, _, read in training)
