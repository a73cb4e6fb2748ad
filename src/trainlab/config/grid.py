"""Grid expansion: the base config, times the cartesian grid, plus explicit runs, times seeds."""

from __future__ import annotations

import copy
import itertools
import math
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
from trainlab.errors import ConfigError, closest, combine


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
    error = key_error(key, where)
    if error is not None:
        raise error


def key_error(key: str, where: str) -> ConfigError | None:
    """Why ``key`` (dotted, e.g. ``model.hidden_dim``) names no config field, or None."""
    section, _, rest = key.partition(".")
    if section not in SECTIONS or not rest:
        guess = closest(section, SECTIONS)
        hint = f" did you mean `{guess}.…`?" if guess and guess != section else ""
        return ConfigError(
            f"{where} `{key}` is not a config field: keys look like section.field with section "
            f"one of {', '.join(SECTIONS)}.{hint}", field=key)
    name = rest.split(".")[0]
    valid = section_fields(section)
    if name not in valid:
        guess = closest(name, valid)
        hint = f" did you mean `{section}.{guess}`?" if guess else ""
        return ConfigError(f"{where} `{key}` is not a config field.{hint} Valid fields of "
                           f"`{section}`: {', '.join(sorted(valid))}.", field=key)
    return None


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


def points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The sweep's settings before seeds: the grid's points, then the explicit runs; or with
    ``cross: true``, each explicit run at each grid point (the run's own values win)."""
    keys = list(sweep.grid)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*sweep.grid.values())]
    extra = [_flatten_entry(entry) for entry in sweep.runs]
    if sweep.cross and extra:
        return [{**point, **entry} for point in grid for entry in extra]
    return grid + extra


def expansion(sweep: SweepConfig, n_runs: int | None = None) -> str:
    """What the sweep expands to, in words: ``2 grid points x 10 explicit runs (cross) x 3
    seeds = 60 runs``."""
    n_grid = math.prod(len(v) for v in sweep.grid.values())  # 1 without a grid: the base
    n_extra = len(sweep.runs)
    n_seeds = len(sweep.seeds) if sweep.seeds else 1
    grid_text = f"{n_grid} grid point(s)" if sweep.grid else "the base run"
    parts = []
    if sweep.cross and n_extra:
        parts.append(f"{n_grid} grid point(s) x {n_extra} explicit run(s) (cross: true)")
        total = n_grid * n_extra
    else:
        parts.append(grid_text + (f" + {n_extra} explicit run(s)" if n_extra else ""))
        total = n_grid + n_extra
    if sweep.seeds:
        parts[0] = f"({parts[0]})" if "+" in parts[0] else parts[0]
        parts.append(f"{n_seeds} seed(s)")
    total *= n_seeds
    text = " x ".join(parts) + f" = {total} runs"
    if n_runs is not None and n_runs != total:
        text += f" ({total - n_runs} identical to an earlier one, kept once)"
    return text


def expand(sweep: SweepConfig) -> list[ExpandedRun]:
    """Every run of the sweep, in order (see :func:`points`), each times seeds.

    Identical resolved runs are kept once (the first).  Every error of the file is raised at
    once: each bad key, each run that does not resolve.
    """
    found: list[tuple[ConfigError, int | None, str]] = []
    for key in sweep.grid:
        error = key_error(key, "grid key")
        if error is not None:
            found.append((error, None, ""))
    for i, entry in enumerate(sweep.runs, 1):
        for key in _flatten_entry(entry):
            error = key_error(key, f"runs[{i}] key")
            if error is not None:
                found.append((error, None, ""))
    if found:
        raise combine(found, f"in sweep {sweep.name}")
    base = {s: copy.deepcopy(getattr(sweep, s)) for s in SECTIONS}
    base["lr_find"] = copy.deepcopy(sweep.lr_find)  # used by runs with optimizer.lr: auto
    seeds: list[int | None] = list(sweep.seeds) if sweep.seeds else [None]
    runs: list[ExpandedRun] = []
    seen: set[str] = set()
    position = 0  # the run's number had every earlier run resolved
    cache: dict[str, Any] = {}  # resolved sections, shared by the runs (see resolve_run)
    for point in points(sweep):
        for seed in seeds:
            overrides = dict(point) if seed is None else {**point, "train.seed": seed}
            raw = _with_overrides(base, overrides)
            position += 1
            try:
                config = resolve_run(raw, root=sweep.root, cache=cache)
            except ConfigError as exc:
                found.append((exc, position, _describe(overrides)))
                continue
            if config.run_id in seen:
                position -= 1
                continue
            seen.add(config.run_id)
            runs.append(ExpandedRun(len(runs) + 1, config, overrides))
    if found:
        raise combine(found, f"in sweep {sweep.name}")
    return runs


def _with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the dotted ``overrides`` set, copying only the mappings on their paths:
    sections a run does not change stay ``base``'s objects (a deep copy per run cost a
    10,000-run grid seconds).  Resolving reads the raw config and never writes it."""
    raw = dict(base)
    copied: set[tuple[str, ...]] = set()
    for key, value in overrides.items():
        parts = key.split(".")
        node, path = raw, tuple[str, ...]()
        for part in parts[:-1]:
            path = (*path, part)
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            elif path not in copied:
                child = dict(child)
            copied.add(path)
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


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


__all__ = ["COMPONENT_SECTIONS", "ExpandedRun", "check_key", "expand", "expansion", "key_error",
           "points", "set_dotted",
           "values_of", "varied_keys"]
