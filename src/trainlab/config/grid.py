"""Grid expansion: the base config, times the cartesian grid, plus explicit runs, times seeds."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from trainlab.config.schema import (
    COMPONENT_SECTIONS,
    SECTIONS,
    RunConfig,
    SweepConfig,
    resolve_run,
    section_fields,
)
from trainlab.errors import ConfigError, closest


@dataclass(frozen=True)
class ExpandedRun:
    """One run of a sweep: its position (1-based), id, resolved config and what was set."""

    index: int
    config: RunConfig
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.config.run_id


def check_key(key: str, where: str) -> None:
    """Raise unless ``key`` (dotted, e.g. ``model.hidden_dim``) names a config field."""
    section, _, rest = key.partition(".")
    if section not in SECTIONS or not rest:
        guess = closest(section, SECTIONS)
        hint = f" did you mean `{guess}.…`?" if guess and guess != section else ""
        raise ConfigError(
            f"{where} `{key}` is not a config field: keys look like section.field with section "
            f"one of {', '.join(SECTIONS)}.{hint}", field=key)
    name = rest.split(".")[0]
    valid = section_fields(section)
    if name not in valid:
        guess = closest(name, valid)
        hint = f" did you mean `{section}.{guess}`?" if guess else ""
        raise ConfigError(f"{where} `{key}` is not a config field.{hint} Valid fields of "
                          f"`{section}`: {', '.join(sorted(valid))}.", field=key)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _flatten_entry(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A runs entry with nested mappings or dotted keys, as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted.count(".") < 1:
            out.update(_flatten_entry(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def expand(sweep: SweepConfig) -> list[ExpandedRun]:
    """Every run of the sweep, in order: grid points, then explicit runs; each times seeds.

    Identical resolved runs are kept once (the first).
    """
    for key in sweep.grid:
        check_key(key, "grid key")
    extra = [_flatten_entry(entry) for entry in sweep.runs]
    for i, entry in enumerate(extra, 1):
        for key in entry:
            check_key(key, f"runs[{i}] key")
    base = {s: copy.deepcopy(getattr(sweep, s)) for s in SECTIONS}
    base["lr_find"] = copy.deepcopy(sweep.lr_find)  # used by runs with optimizer.lr: auto
    keys = list(sweep.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*sweep.grid.values())]
    points += extra
    seeds: list[int | None] = list(sweep.seeds) if sweep.seeds else [None]
    runs: list[ExpandedRun] = []
    seen: set[str] = set()
    for point in points:
        for seed in seeds:
            overrides = dict(point) if seed is None else {**point, "train.seed": seed}
            raw = copy.deepcopy(base)
            for key, value in overrides.items():
                set_dotted(raw, key, value)
            where = f"in sweep {sweep.name}, run {len(runs) + 1}" + (
                f": {_describe(overrides)}" if overrides else "")
            try:
                config = resolve_run(raw, root=sweep.root)
            except ConfigError as exc:
                raise exc.within(where) from None
            if config.run_id in seen:
                continue
            seen.add(config.run_id)
            runs.append(ExpandedRun(len(runs) + 1, config, overrides))
    return runs


def _describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def varied_keys(runs: list[ExpandedRun]) -> list[str]:
    """The dotted keys the sweep sets per run whose resolved values differ between runs.

    Grouped by section in the order sections first appear, then by first appearance within a
    section, so tables sort as a report would: architecture, then layers, then optimizer.
    """
    order: list[str] = []
    for run in runs:
        for key in run.overrides:
            if key not in order:
                order.append(key)
    flats = [run.config.flat() for run in runs]
    varied = [k for k in order if len({repr(f.get(k)) for f in flats}) > 1]
    sections = list(dict.fromkeys(k.split(".")[0] for k in order))
    return sorted(varied, key=lambda k: (sections.index(k.split(".")[0]), order.index(k)))


def values_of(run: ExpandedRun, keys: list[str]) -> dict[str, Any]:
    flat = run.config.flat()
    return {k: flat.get(k) for k in keys}


__all__ = ["COMPONENT_SECTIONS", "ExpandedRun", "check_key", "expand", "set_dotted",
           "values_of", "varied_keys"]
