"""The search's pieces that need no training: budgets and the pruners' decisions."""

from __future__ import annotations

from typing import Any

import pytest

from trainlab.config.schema import SweepConfig
from trainlab.search.spec import PruneSpec

pytest.importorskip("optuna")

from trainlab.search.driver import Search
from trainlab.search.optuna_glue import PeerTrial, prune_decision

BASE: dict[str, Any] = {"name": "s", "data": {"name": "digits"}, "model": {"name": "mlp"},
                        "train": {"epochs": 9}}


def test_method_grid_asks_at_most_the_grid_and_a_grid_key_makes_studies() -> None:
    sweep = SweepConfig.model_validate({**BASE, "grid": {"optimizer.name": ["sgd", "adam"]},
                                        "search": {"method": "grid", "trials": 50, "space": {
                                            "optimizer.lr": {"choice": [0.1, 0.01]},
                                            "model.hidden_dim": {"int": [8, 32], "step": 8}}}})
    search = Search(sweep, None)
    assert [s.point for s in search.studies] == [{"optimizer.name": "sgd"},
                                                 {"optimizer.name": "adam"}]
    assert [search.remaining(s) for s in search.studies] == [8, 8]
    batch = search.next_batch(3)
    assert [study.point["optimizer.name"] for study, _ in batch] == ["sgd", "adam", "sgd"]
    assert all(set(t.params) == {"optimizer.lr", "model.hidden_dim"} for _, t in batch)


PEERS = [PeerTrial("complete", (0.9, 0.95, 0.97)), PeerTrial("complete", (0.85, 0.9, 0.93)),
         PeerTrial("complete", (0.8, 0.88, 0.9)), PeerTrial("pruned", (0.3,)),
         PeerTrial("complete", (0.88, 0.9, 0.95)), PeerTrial("running", (0.9,))]


@pytest.mark.parametrize("method", ["median", "asha", "hyperband"])
def test_each_pruner_stops_a_clearly_worse_trial_and_keeps_a_good_one(method: str) -> None:
    prune = PruneSpec(method, 1)
    if method != "hyperband":  # hyperband's bracket (a hash of the trial) may judge it later
        assert prune_decision(prune, "maximize", 9, 10, PEERS, [0.1])
    assert not prune_decision(prune, "maximize", 9, 10, PEERS, [0.95])
    worse = [PeerTrial(p.state, tuple(1 - v for v in p.values)) for p in PEERS]
    assert not prune_decision(prune, "minimize", 9, 10, worse, [0.05])
    assert not prune_decision(PruneSpec("none"), "maximize", 9, 10, PEERS, [0.1])


def test_min_epochs_delays_the_median_pruner() -> None:
    assert not prune_decision(PruneSpec("median", 2), "maximize", 9, 10, PEERS, [0.1])
    assert prune_decision(PruneSpec("median", 2), "maximize", 9, 10, PEERS, [0.1, 0.1])


def test_a_proposal_the_study_already_has_is_never_trained_twice() -> None:
    sweep = SweepConfig.model_validate({**BASE, "search": {
        "method": "random", "trials": 5, "space": {"optimizer.lr": {"choice": [0.1, 0.01]}}}})
    search = Search(sweep, None)
    batch = search.next_batch(5)  # two distinct values: two trials, the rest repeats
    assert sorted(t.params["optimizer.lr"] for _, t in batch) == [0.01, 0.1]
    assert search.studies[0].repeats > 0
