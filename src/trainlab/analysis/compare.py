"""``trainlab compare RUN...``: the config keys that differ and the key results, side by side."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trainlab.analysis.fmt import (
    format_count,
    format_int,
    format_mib,
    format_number,
    format_rate,
    format_value,
)
from trainlab.analysis.frames import METRICS, flatten
from trainlab.errors import ConfigError

# (summary key, label, kind): kind picks the format and which way is better.
_RESULTS = [
    ("best_epoch", "best epoch", "int"),
    ("train_time", "train time (s)", "seconds-low"),
    ("samples_per_s", "throughput (ex/s)", "rate-high"),
    ("peak_memory_bytes", "peak memory (MiB)", "bytes-low"),
    ("params_total", "params", "count"),
    ("params_trainable", "trainable params", "count"),
    ("epochs", "epochs", "int"),
]


@dataclass
class Comparison:
    columns: list[str]  # one header per run
    differences: list[tuple[str, list[str]]]  # config keys whose values differ
    results: list[tuple[str, list[str], int | None]]  # label, cells, index of the best cell
    identical: int = 0  # config keys equal across the runs
    run_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.run_ids, "columns": self.columns,
                "differences": {k: v for k, v in self.differences},
                "results": {k: v for k, v, _ in self.results}, "identical_keys": self.identical}


def compare_runs(store: Any, prefixes: list[str]) -> Comparison:
    """Resolve each id prefix (``store.find_run``) and line the runs up."""
    if len(prefixes) < 2:
        raise ConfigError("`RUN`: give at least two runs to compare (ids or unique prefixes; "
                          "`trainlab ls` lists them)", field="RUN")
    ids = list(dict.fromkeys(store.find_run(p) for p in prefixes))
    if len(ids) < 2:
        raise ConfigError(f"`RUN`: {', '.join(prefixes)} all name the same run {ids[0]}; give "
                          "at least two different runs", field="RUN")
    runs = store.runs()
    rows = []
    for run_id in ids:
        part = runs[runs["run_id"] == run_id]
        first = part.iloc[0]
        where = ", ".join(f"{s} #{int(i)}" for s, i in zip(part["sweep"], part["index"])
                          if isinstance(s, str) and not _nan(i))
        rows.append({"run_id": run_id, "where": where, "status": first["status"],
                     "config": flatten(first["config"]), "summary": first["summary"] or {}})
    columns = [f"{r['run_id'][:8]}" + (f" ({r['where']})" if r["where"] else "") for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r["config"]))
    differences, identical = [], 0
    for key in keys:
        values = [r["config"].get(key) for r in rows]
        if len({repr(v) for v in values}) > 1:
            differences.append((key, [format_value(v) for v in values]))
        else:
            identical += 1
    results: list[tuple[str, list[str], int | None]] = [
        ("status", [str(r["status"]) for r in rows], None)]
    for name, metric in METRICS.items():
        for prefix, label in (("best_valid_", "valid"), ("test_", "test")):
            values = [_num(r["summary"].get(f"{prefix}{name}")) for r in rows]
            if any(math.isfinite(v) for v in values):
                results.append((f"{label} {name}", [_format_result(v) for v in values],
                                _best(values, metric.higher_is_better)))
    for key, label, kind in _RESULTS:
        values = [_num(r["summary"].get(key)) for r in rows]
        if not any(math.isfinite(v) for v in values):
            continue
        best = (_best(values, kind.endswith("high")) if kind.endswith(("low", "high"))
                else None)
        results.append((label, [_format_result(v, kind) for v in values], best))
    return Comparison(columns, differences, results, identical, ids)


def _best(values: list[float], higher: bool) -> int | None:
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    if len(finite) < 2:
        return None
    best = max(finite) if higher else min(finite)
    ties = [i for v, i in finite if v == best[0]]
    return best[1] if len(ties) == 1 else None


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _format_result(value: float, kind: str = "metric") -> str:
    """A result cell by its ``_RESULTS`` kind (the ``-low``/``-high`` suffix only says which
    way is better); ``-`` when not recorded."""
    if not math.isfinite(value):
        return "-"
    if kind.startswith("bytes"):
        return format_mib(value)
    if kind == "int":
        return format_int(value)
    if kind == "count":
        return format_count(value)
    if kind.startswith("rate"):
        return format_rate(value)
    if kind.startswith("seconds"):
        return f"{value:.1f}"  # whole runs: tenths of a second are enough
    return format_number(value)


__all__ = ["Comparison", "compare_runs"]
