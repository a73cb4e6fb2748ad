"""Search over a space of config keys with Optuna (``search:`` in a sweep file).

- :mod:`.spec`: the ``search`` section, validated (no Optuna).
- :mod:`.optuna_glue`: samplers, pruners, studies rebuilt from stored trials (imports Optuna).
- :mod:`.prune`: the per-run pruning callback (decides in the process that trains the run).
- :mod:`.driver`: the ask-train-tell loop over the executors.
- :mod:`.cli`: what ``trainlab run`` and ``trainlab plan`` print for a search.

Optuna is an optional extra: ``pip install 'trainlab[search]'``.
"""

from __future__ import annotations

from trainlab.search.spec import PruneSpec, SearchSpec, parse_search

__all__ = ["PruneSpec", "SearchSpec", "parse_search"]
