"""Run ids and flat views are computed once per section object (issue 22, item 8): they must
equal the plain computation over the whole resolved config, for every run of a grid."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trainlab.config import expand
from trainlab.config.schema import SECTIONS, RunConfig, SweepConfig, _run_id_rules, flatten


def _plain_id(config: RunConfig) -> str:
    tree = config.to_dict()
    tree.pop("root", None)
    for section in SECTIONS:
        spec = type(getattr(config, section))
        hidden, when_set, aliases = _run_id_rules(spec)
        tree[section] = {k: aliases[k].get(v, v) if k in aliases and isinstance(v, str) else v
                         for k, v in tree[section].items()
                         if k not in hidden and not (k in when_set and (
                             v is None or v == spec.model_fields[k].default))}
    return hashlib.sha256(json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()[:12]


def test_cached_ids_and_flat_views_equal_the_plain_computation() -> None:
    raw: dict[str, Any] = {
        "name": "ids", "data": {"name": "synthetic", "n_samples": 100, "shape": [4]},
        "model": {"name": "mlp", "hidden_dim": 8},
        "optimizer": {"name": "adam", "lr": 1e-3}, "train": {"epochs": 1, "threads": "auto"},
        "grid": {"model.hidden_dim": [8, 16], "optimizer.lr": [1e-3, "auto"],
                 "optimizer.weight_decay": [0.0, 0.1]},
        "runs": [{"model.name": "mlp", "train.checkpoint_every_s": 3}], "seeds": [0, 1]}
    runs = expand(SweepConfig.model_validate(raw))
    # The explicit run differs from the base only where the id does not look (how often it
    # checkpoints): it is the first grid point's run, kept once.
    assert len(runs) == 16 == len({r.run_id for r in runs})
    for run in runs:
        assert run.run_id == _plain_id(run.config)
        assert run.config.flat() == flatten(run.config.to_dict())
        assert list(run.config.flat()) == list(flatten(run.config.to_dict()))
