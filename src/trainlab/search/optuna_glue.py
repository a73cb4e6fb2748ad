"""What trainlab asks of Optuna: samplers, pruners, distributions, and studies rebuilt from
trials that are already in the store (Optuna is imported here, and only when a search runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainlab.errors import ConfigError
from trainlab.search.spec import Param, PruneSpec, SearchSpec

INSTALL = "pip install 'trainlab[search]'"


def import_optuna() -> Any:
    """Optuna, quiet; a ConfigError saying how to install it when it is missing."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"`search:` needs Optuna, which is not installed; install it with: "
                          f"{INSTALL}", field="search") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(spec: SearchSpec) -> dict[str, Any]:
    optuna = import_optuna()
    dist = optuna.distributions
    out: dict[str, Any] = {}
    for p in spec.space:
        if p.kind == "choice":
            out[p.key] = dist.CategoricalDistribution(list(p.values))
        elif p.kind == "int":
            out[p.key] = dist.IntDistribution(int(p.low or 0), int(p.high or 0),
                                              step=int(p.step or 1))
        else:
            out[p.key] = dist.FloatDistribution(float(p.low or 0.0), float(p.high or 0.0),
                                                log=p.kind == "log", step=p.step)
    return out


def grid_values(p: Param) -> list[Any]:
    """Every value of ``p`` that method grid visits."""
    if p.kind == "choice":
        return list(p.values)
    assert p.low is not None and p.high is not None and p.step is not None
    n = math.floor((p.high - p.low) / p.step + 1e-9) + 1
    values = [p.low + i * p.step for i in range(n)]
    return [int(v) for v in values] if p.kind == "int" else values


def make_sampler(spec: SearchSpec, seed: int) -> Any:
    optuna = import_optuna()
    samplers = optuna.samplers
    if spec.method == "random":
        return samplers.RandomSampler(seed=seed)
    if spec.method == "cmaes":
        # CMA-ES handles numbers; a choice goes to its independent (random) sampler.
        return samplers.CmaEsSampler(seed=seed)
    if spec.method == "grid":
        return _grid_sampler(samplers.GridSampler)(
            {p.key: grid_values(p) for p in spec.space}, seed=seed)
    # A few random trials first (at most a quarter of the budget), then TPE's model.
    startup = max(2, min(10, spec.trials // 4))
    # constant_liar: trials still training count as bad ones, so parallel trials (asked while
    # others run) spread out instead of landing next to each other.
    return samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                               constant_liar=True)


def grid_size(spec: SearchSpec) -> int:
    """How many distinct trials method grid has."""
    return math.prod(len(grid_values(p)) for p in spec.space)


def _grid_sampler(base: Any) -> Any:
    class _Grid(base):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is covered (that
        call is for ``study.optimize``; ask-and-tell raises there): the driver stops asking
        at the grid's size itself."""

        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            return None

    return _Grid


def make_pruner(prune: PruneSpec, epochs: int, trials: int) -> Any:
    optuna = import_optuna()
    pruners = optuna.pruners
    if prune.method == "median":
        return pruners.MedianPruner(n_startup_trials=max(1, min(5, trials // 5)),
                                    # steps count evaluations from 1: none before min_epochs
                                    n_warmup_steps=prune.min_epochs)
    if prune.method == "asha":
        return pruners.SuccessiveHalvingPruner(min_resource=prune.min_epochs, reduction_factor=3)
    if prune.method == "hyperband":
        return pruners.HyperbandPruner(min_resource=prune.min_epochs,
                                       max_resource=max(epochs, prune.min_epochs),
                                       reduction_factor=3)
    return pruners.NopPruner()


@dataclass(frozen=True)
class PeerTrial:
    """A trial as the pruner sees it: its per-evaluation values and how it ended."""

    state: str  # complete | pruned | failed | running
    values: tuple[float, ...]


def best_of(values: Sequence[float], direction: str) -> float:
    return min(values) if direction == "minimize" else max(values)


def prune_decision(prune: PruneSpec, direction: str, epochs: int, trials: int,
                   peers: Sequence[PeerTrial], history: Sequence[float]) -> bool:
    """Whether the pruner stops a trial whose values so far are ``history``, given the other
    trials of its study.  The peers are replayed through the pruner in order (each report
    followed by the pruner's check, as when they trained), so a pruner that keeps state on
    its trials (the rungs of successive halving and hyperband) sees what it would have kept."""
    if prune.method == "none" or not history:
        return False
    optuna = import_optuna()
    study = optuna.create_study(direction=direction,
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=make_pruner(prune, epochs, trials),
                                study_name="trainlab-prune")
    state_of = optuna.trial.TrialState
    for peer in peers:
        trial = study.ask()
        for step, value in enumerate(peer.values, 1):
            trial.report(value, step)
            trial.should_prune()
        if peer.state == "complete" and peer.values:
            study.tell(trial, best_of(peer.values, direction))
        elif peer.state == "pruned":
            study.tell(trial, state=state_of.PRUNED)
        elif peer.state == "failed":
            study.tell(trial, state=state_of.FAIL)
    me = study.ask()
    decision = False
    for step, value in enumerate(history, 1):
        me.report(value, step)
        decision = bool(me.should_prune())
    return decision


def study_for(spec: SearchSpec, seed: int, direction: str) -> Any:
    """A fresh in-memory study; the caller adds the stored trials with :func:`add_trial`.

    Its sampler's seed is ``seed`` mixed with how many trials it already holds, so a rerun
    that rebuilt the study does not replay the first session's proposals."""
    optuna = import_optuna()
    return optuna.create_study(direction=direction, sampler=make_sampler(spec, seed))


def add_trial(study: Any, spec: SearchSpec, params: dict[str, Any], state: str,
              value: float | None, intermediate: Sequence[float]) -> bool:
    """Add a stored trial to a rebuilt study; False when its params lie outside the current
    space (the space changed since it ran: it stays in the store, out of this study)."""
    optuna = import_optuna()
    dists = distributions(spec)
    try:
        if set(params) != set(dists) or not all(
                dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in params.items()):
            return False
    except (ValueError, TypeError):  # a choice that is no longer offered
        return False
    states = {"complete": optuna.trial.TrialState.COMPLETE,
              "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
    trial = optuna.trial.create_trial(
        state=states[state], value=value if state == "complete" else None, params=params,
        distributions=dists,
        intermediate_values={i: v for i, v in enumerate(intermediate, 1) if math.isfinite(v)})
    study.add_trial(trial)
    return True
