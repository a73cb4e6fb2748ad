"""The ``search:`` section of a sweep file, validated into plain frozen data (no Optuna here).

```yaml
search:
  method: tpe            # random | tpe | cmaes | grid
  trials: 40             # per study (one study per grid point)
  metric: valid/accuracy # direction from the metric (loss, perplexity, rmse: min) unless given
  space:
    optimizer.lr: {log: [1.0e-4, 1.0]}
    model.hidden_dim: {int: [32, 512], step: 32}
    optimizer.name: {choice: [sgd, adam]}
  prune: {method: asha, min_epochs: 2}   # none | median | asha | hyperband
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trainlab.config.grid import key_error
from trainlab.config.schema import MONITORS, SweepConfig
from trainlab.errors import ConfigError, closest

METHODS = ("random", "tpe", "cmaes", "grid")
PRUNERS = ("none", "median", "asha", "hyperband")
# Metrics a run records once, at its end: a trial's value, never something to prune on.
FINAL_METRICS = tuple(m.replace("valid/", "test/") for m in MONITORS)
METRICS = MONITORS + FINAL_METRICS
LOWER_IS_BETTER = ("loss", "perplexity", "rmse")
FORMS = ("{log: [low, high]} (0 < low < high), {float: [low, high]} (optional step: S), "
         "{int: [low, high]} (optional step: S), {choice: [v1, v2, ...]}, and for "
         "optimizer.lr {from_range_test: true}")
_KINDS = ("log", "float", "int", "choice")
_FIELDS = ("method", "trials", "metric", "direction", "space", "prune", "seed")
_PRUNE_FIELDS = ("method", "min_epochs")


@dataclass(frozen=True)
class Param:
    """One searched key: a log or linear float range, an int range, or a choice."""

    key: str
    kind: str  # log | float | int | choice
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    values: tuple[Any, ...] = ()
    # ``{from_range_test: true}``: a log range set from the LR range test's candidates (see
    # :mod:`trainlab.search.ranges`); ``source`` says where the bounds came from.
    from_range: bool = False
    source: str = ""

    def describe(self) -> str:
        if self.from_range and self.low is None:
            return "log [from the LR range test]"
        if self.source:
            return f"log [{self.low:g}, {self.high:g}] ({self.source})"
        if self.kind == "choice":
            return "{" + ", ".join(map(str, self.values)) + "}"
        step = f" step {self.step:g}" if self.step is not None else ""
        scale = "log " if self.kind == "log" else "int " if self.kind == "int" else ""
        return f"{scale}[{self.low:g}, {self.high:g}]{step}"

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high

    def corners(self) -> list[Any]:
        """Values that bound what the search can set: checked before anything trains (none
        for a range the LR range test has still to set)."""
        if self.kind == "choice":
            return list(self.values)
        return [] if self.low is None else [self.low, self.high]


@dataclass(frozen=True)
class PruneSpec:
    method: str = "none"
    min_epochs: int = 1  # no trial is pruned before it has been validated this many times


@dataclass(frozen=True)
class SearchSpec:
    method: str
    trials: int
    metric: str
    direction: str  # minimize | maximize
    space: tuple[Param, ...]
    prune: PruneSpec = field(default_factory=PruneSpec)
    seed: int = 0  # the samplers' seed (default: the base config's train.seed)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.space]

    def describe(self) -> str:
        prune = "no pruning" if self.prune.method == "none" else (
            f"pruning {self.prune.method} after {self.prune.min_epochs} epoch(s)")
        return (f"{self.method} search, {self.trials} trial(s) per study, "
                f"{self.direction} {self.metric}, {prune}")


def _fail(field_: str, message: str) -> ConfigError:
    return ConfigError(f"`{field_}` {message}", field=field_)


def direction_of(metric: str) -> str:
    return "minimize" if metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "maximize"


def parse_search(sweep: SweepConfig) -> SearchSpec:
    """The sweep's ``search`` section as a :class:`SearchSpec`; ConfigError naming the field,
    the bad value and the valid forms otherwise."""
    raw = sweep.search
    if not isinstance(raw, dict):
        raise _fail("search", f"must be a mapping with method, trials, metric, space; got "
                    f"{raw!r}")
    for key in raw:
        if key not in _FIELDS:
            guess = closest(str(key), _FIELDS)
            hint = f" did you mean `search.{guess}`?" if guess else ""
            raise _fail(f"search.{key}", f"is not a search field.{hint} Valid fields: "
                        f"{', '.join(_FIELDS)}.")
    method = raw.get("method", "tpe")
    _one_of("search.method", method, METHODS, "a search method")
    trials = _at_least_one("search.trials", raw.get("trials", 20), " (trials per study)")
    metric = raw.get("metric", sweep.train.get("monitor", "valid/loss"))
    if metric not in METRICS:
        guess = closest(str(metric), METRICS)
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise _fail("search.metric", f"{metric!r} is not a metric a run records{hint} Valid: "
                    f"{', '.join(METRICS)}.")
    direction = raw.get("direction", direction_of(metric))
    if direction not in ("minimize", "maximize"):
        raise _fail("search.direction", f"must be minimize or maximize; got {direction!r}")
    seed = raw.get("seed", sweep.train.get("seed", 0))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail("search.seed", f"must be an integer; got {seed!r}")
    space = _space(raw.get("space"), sweep)
    prune = _prune(raw.get("prune"), metric, sweep)
    if method == "grid":
        for p in space:
            if p.kind in ("log", "float") and p.step is None:
                raise _fail(f"search.space.{p.key}", f"{p.describe()} is a continuous range, "
                            "which method grid cannot enumerate; give a choice, an int range, "
                            "a float range with a step, or use method random, tpe or cmaes")
    return SearchSpec(method, trials, metric, direction, space, prune, seed)


def _space(raw: Any, sweep: SweepConfig) -> tuple[Param, ...]:
    if not isinstance(raw, dict) or not raw:
        raise _fail("search.space", "must map at least one config key to a range or a choice, "
                    f"e.g. optimizer.lr: {{log: [1.0e-4, 1.0]}}; valid forms: {FORMS}; got "
                    f"{raw!r}")
    params = []
    for key, spec in raw.items():
        where = f"search.space.{key}"
        error = key_error(str(key), "`search.space` key")
        if error is not None:
            raise error
        if key in sweep.grid:
            raise _fail(where, "is also a grid key; a key is either searched or enumerated "
                        "(the grid makes one study per point)")
        if key == "train.seed" and sweep.seeds:
            raise _fail(where, "is also set by seeds:; search another key")
        params.append(_param(str(key), spec, where))
    return tuple(params)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise _fail(where, f"must be one of {FORMS}; got {spec!r}")
    kinds = [k for k in spec if k in _KINDS]
    extra = [k for k in spec if k not in (*_KINDS, "step")]
    if "from_range_test" in spec:
        if key != "optimizer.lr" or spec != {"from_range_test": True}:
            raise _fail(where, "{from_range_test: true} (alone) bounds optimizer.lr by the LR "
                        f"range test; got {spec!r} for {key}. Valid forms: {FORMS}")
        return Param(key, "log", from_range=True)
    if len(kinds) != 1 or extra:
        raise _fail(where, f"must be one of {FORMS}; got {spec!r}")
    kind = kinds[0]
    value = spec[kind]
    if kind == "choice":
        if "step" in spec:
            raise _fail(where, f"a choice takes no step; got {spec!r}")
        if not isinstance(value, list) or not value:
            raise _fail(where, f"a choice needs at least one value, e.g. {{choice: [sgd, adam]}};"
                        f" got {value!r}")
        return Param(key, "choice", values=tuple(value))
    if (not isinstance(value, list) or len(value) != 2
            or not all(_number(v) for v in value)):
        raise _fail(where, f"a {kind} range is [low, high] (two numbers); got {value!r}. "
                    f"Valid forms: {FORMS}")
    low, high = value
    if not low < high:
        what = "empty" if low == high else "inverted"
        raise _fail(where, f"the range [{low}, {high}] is {what}: low must be below high. "
                    f"Valid forms: {FORMS}")
    if kind == "log" and low <= 0:
        raise _fail(where, f"a log range needs bounds above 0; got [{low}, {high}]. Use "
                    "{float: [low, high]} for a range that includes 0 or negative values")
    step = spec.get("step")
    if kind == "log" and step is not None:
        raise _fail(where, f"a log range takes no step; got {spec!r}")
    if kind == "int":
        if not all(isinstance(v, int) for v in value):
            raise _fail(where, f"an int range takes integer bounds; got {value!r}")
        step = 1 if step is None else step
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise _fail(where, f"step must be a positive integer; got {step!r}")
    elif step is not None and (not _number(step) or step <= 0 or step > high - low):
        raise _fail(where, f"step must be a number in (0, high - low]; got {step!r}")
    return Param(key, kind, low, high, step)


def _prune(raw: Any, metric: str, sweep: SweepConfig) -> PruneSpec:
    if raw is None or raw == "none":
        return PruneSpec()
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict):
        raise _fail("search.prune", f"must be a method ({', '.join(PRUNERS)}) or "
                    f"{{method: asha, min_epochs: 2}}; got {raw!r}")
    for key in raw:
        if key not in _PRUNE_FIELDS:
            raise _fail(f"search.prune.{key}", f"is not a prune field. Valid fields: "
                        f"{', '.join(_PRUNE_FIELDS)}.")
    method = raw.get("method", "median")
    _one_of("search.prune.method", method, PRUNERS, "a pruner")
    min_epochs = _at_least_one("search.prune.min_epochs", raw.get("min_epochs", 1), "")
    if method != "none" and metric not in MONITORS:
        raise _fail("search.prune", f"prunes on search.metric {metric!r}, which a run records "
                    "once, at its end, not per epoch; prune on a per-epoch metric "
                    f"({', '.join(MONITORS)}) or use prune: none")
    return PruneSpec(method, min_epochs)


def _one_of(field: str, value: Any, valid: Sequence[str], what: str) -> None:
    """Exit 2 (naming ``field``, a close guess and every valid value) unless ``value`` is one
    of ``valid``."""
    if value not in valid:
        guess = closest(str(value), list(valid))
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise _fail(field, f"{value!r} is not {what}{hint} Valid: {', '.join(valid)}.")


def _at_least_one(field: str, value: Any, meaning: str) -> int:
    """``value`` when it is an integer of at least 1; otherwise exit 2 naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(field, f"must be an integer of at least 1{meaning}; got {value!r}")
    return value
