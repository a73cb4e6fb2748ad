"""``optimizer.lr: {from_range_test: true}``: a search's LR range from the LR range test.

The test is the one ``trainlab lr-find`` and ``optimizer.lr: auto`` run (same range id, same
``lr_ranges`` table, run once and reused): one per range group among the studies' base
configs (a grid over ``optimizer.name`` gives one test per optimizer; a grid over the schedule
shares one).  The searched range is the test's candidate range, from where the loss starts
falling fast to where it bottoms out (:func:`trainlab.lr.suggest.candidates`' two ends, the
range ``lr-find`` prints); over several tests, the span of their ranges.  Below that range
the LR barely trains within the ramp's steps; above it the loss is about to blow up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from trainlab.config.grid import ExpandedRun
from trainlab.config.schema import LRFindSpec, RunConfig
from trainlab.errors import ConfigError
from trainlab.search.spec import SearchSpec
from trainlab.store import Store


def bound_lr_ranges(spec: SearchSpec, configs: Sequence[tuple[dict[str, Any], RunConfig]],
                    store: Store | None, *, sweep: str, run: bool) -> SearchSpec:
    """``spec`` with its ``from_range_test`` ranges set from the range tests of ``configs``
    (each study's base config and its label).  ``run``: run the tests the store lacks (and
    link them to ``sweep``); otherwise only stored tests are read, and a range still unknown is
    stood in for by the ramp's own [start, end] (``plan`` runs nothing)."""
    if not any(p.from_range for p in spec.space):
        return spec
    from trainlab.lr.study import RangeGroup, range_id, run_group, stored_outcome

    groups: dict[str, RangeGroup] = {}
    for label, config in configs:
        settings = config.lr_find or LRFindSpec()
        rid = range_id(config, settings)
        groups.setdefault(rid, RangeGroup(rid, settings, [ExpandedRun(1, config)], label))
    lows, highs, ids = [], [], []
    for group in groups.values():
        # The test run_group would use: after a noisy default ramp, its longer retry.
        stored = stored_outcome(group, store) if store is not None and not run else None
        if stored is not None:
            result, used = stored.result, stored.group
        elif run:
            outcome = run_group(group, store, sweep=sweep)
            result, used = outcome.result, outcome.group
        else:
            first = next(iter(groups.values())).settings
            return _with(spec, first.start, first.end,
                         f"the ramp's range until the LR range test runs ({len(groups)} test(s))")
        candidates = result.suggestions.candidates
        if not candidates:
            raise ConfigError(
                f"`search.space.optimizer.lr`: {{from_range_test: true}} needs the LR range "
                f"test's candidate range, but test {used.range_id} ({used.describe()}) gives "
                f"none: {result.explain()} Give the range instead, e.g. "
                "{log: [1.0e-4, 1.0]}, or change the lr_find settings",
                field="search.space.optimizer.lr")
        lows.append(min(candidates))
        highs.append(max(candidates))
        ids.append(used.range_id)
    low, high = _round(min(lows)), _round(max(highs))
    if not low < high:  # a fall over one point of the ramp: a decade around it
        low, high = _round(low / 3.0), _round(high * 3.0)
    return _with(spec, low, high, f"from LR range test {', '.join(ids)}")


def _with(spec: SearchSpec, low: float, high: float, source: str) -> SearchSpec:
    space = tuple(dataclasses.replace(p, low=low, high=high, source=source) if p.from_range
                  else p for p in spec.space)
    return dataclasses.replace(spec, space=space)


def _round(lr: float) -> float:
    return float(f"{lr:.3g}")
