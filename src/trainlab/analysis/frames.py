"""Tidy frames from the store: one row per run, one row per (run, epoch), seeds aggregated.

Analysis only reads the store.  Everything downstream (tables, figures, answers) works on the
:class:`SweepFrames` built here, so it can be tested on hand-made frames or hand-made stores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainlab.analysis.fmt import format_indices, format_value, is_finite, is_missing
from trainlab.errors import ConfigError, closest
from trainlab.mfu import MFU_KEY, UNRELIABLE_KEY, trusted_summary

SEED_KEY = "train.seed"
# Keys recorded every log interval; everything else with epoch > 0 is an epoch-level value.
_STEP_KEYS = ("train/step_loss", "lr", "grad_norm", "time/step")


@dataclass(frozen=True)
class Metric:
    """A quality metric: how to name it, which way is better, how to draw it."""

    name: str
    abbrev: str
    higher_is_better: bool
    log_scale: bool
    description: str

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def best_of(self, values: Iterable[float]) -> float:
        finite = [v for v in values if is_finite(v)]
        if not finite:
            return math.nan
        return max(finite) if self.higher_is_better else min(finite)


METRICS: dict[str, Metric] = {
    "perplexity": Metric("perplexity", "PPL", False, True, "perplexity (exp of the mean "
                         "per-token cross-entropy; lower is better)"),
    "accuracy": Metric("accuracy", "Acc", True, False, "accuracy (share of correct "
                       "predictions; higher is better)"),
    "rmse": Metric("rmse", "RMSE", False, False, "root mean squared error (lower is better)"),
    "loss": Metric("loss", "Loss", False, False, "loss (the training objective; lower is "
                   "better)"),
    # Recorded for classification besides accuracy (from the confusion matrix).
    "f1": Metric("f1", "F1", True, False, "F1 score (of class 1 for two classes, macro "
                 "average for more; higher is better)"),
    "mcc": Metric("mcc", "MCC", True, False, "Matthews correlation coefficient (-1 to 1, 0 "
                  "is chance; higher is better)"),
}


@dataclass
class SweepFrames:
    """One sweep, read from the store and shaped for reporting."""

    name: str
    varied: list[str]  # the sweep's varied keys in config order (train.seed included)
    keys: list[str]  # the varied keys that define a configuration (train.seed excluded)
    labels: dict[str, str]  # column label of each varied key
    runs: pd.DataFrame  # one row per reported run (see _run_rows)
    epochs: pd.DataFrame  # one row per (run_id, epoch): a column per epoch-level metric key
    metric: Metric  # the quality metric the tables and answers rank by
    metrics: list[str]  # quality metrics recorded for train and valid, task metric first
    # Every quality metric recorded on validation, the ranking one first (the summary table's
    # columns): metrics also recorded on validation alone (F1, MCC) are here, not in metrics.
    table_metrics: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # runs without metrics
    config: dict[str, Any] = field(default_factory=dict)  # the sweep file as stored

    @property
    def seeded(self) -> bool:
        """True when some configuration ran with more than one seed."""
        return bool(len(self.runs)) and int(self.runs.groupby("group").size().max()) > 1

    def label(self, key: str) -> str:
        return self.labels.get(key, key)

    def resolve_key(self, name: str, option: str) -> str:
        """A varied key given by its label or dotted name; ConfigError naming the choices."""
        by_label = {v: k for k, v in self.labels.items() if k in self.keys}
        if name in self.keys:
            return name
        if name in by_label:
            return by_label[name]
        choices = [self.labels[k] for k in self.keys]
        guess = closest(name, choices + self.keys)
        hint = f" did you mean {guess!r}?" if guess else ""
        valid = ", ".join(choices) if choices else "none (nothing varies in this sweep)"
        raise ConfigError(f"`{option}`: {name!r} is not a varied key of sweep {self.name}.{hint}"
                          f" Valid: {valid}.", field=option)

    def describe(self, row: pd.Series | dict[str, Any], keys: Sequence[str] | None = None,
                 sep: str = ", ") -> str:
        """``model=lstm, layers=1, optimizer=adam`` for a run or group row.

        Keys a run does not set (an explicit ``runs:`` entry leaving a varied key at its
        default) are left out rather than shown as a blank.
        """
        return sep.join(f"{self.label(k)}={format_value(row[k])}"
                        for k in (self.keys if keys is None else keys) if not is_missing(row[k]))

    def run_numbers(self, row: pd.Series | dict[str, Any]) -> str:
        """"3" for a run, "1-3" or "1, 4, 7" for a seed group."""
        return format_indices(row["indices"]) if "indices" in row else str(row["index"])


def load_sweep(store: Any, sweep: str | None, metric: str | None = None) -> SweepFrames:
    """Read one sweep from ``store`` (the most recently updated one when ``sweep`` is None)."""
    name = pick_sweep(store, sweep)
    info = store.sweep_info(name)
    runs = store.runs(name)
    if runs.empty:
        raise ConfigError(f"`--sweep`: sweep {name!r} has no runs in {store.root}",
                          field="--sweep")
    long = store.metrics(list(runs["run_id"]))
    return build_frames(name, list(info["varied"]), runs, long, metric=metric,
                        config=info["config"])


def pick_sweep(store: Any, sweep: str | None) -> str:
    sweeps = store.sweeps()
    names = list(sweeps["sweep"])
    if not names:
        raise ConfigError(f"the store at {store.root} holds no sweeps; run one first "
                          "(`trainlab run --example quickstart`)", field="--store")
    if sweep is None:
        return str(names[-1])  # ordered by last update
    if sweep not in names:
        guess = closest(sweep, names)
        hint = f" did you mean {guess!r}?" if guess else ""
        raise ConfigError(f"`--sweep`: no sweep {sweep!r} in {store.root}.{hint} Sweeps: "
                          f"{', '.join(names)}.", field="--sweep")
    return sweep


def build_frames(name: str, varied: list[str], runs: pd.DataFrame, long: pd.DataFrame, *,
                 metric: str | None = None, config: dict[str, Any] | None = None) -> SweepFrames:
    """The frames of one sweep from ``store.runs(name)`` and ``store.metrics(...)`` frames."""
    from trainlab.config.keys import short_names

    keys = [k for k in varied if k != SEED_KEY]
    labels = short_names(varied)
    epochs = epoch_frame(long)
    has_epochs = set(epochs["run_id"]) if not epochs.empty else set()
    skipped = [{"index": _int(r["index"]), "run_id": r["run_id"], "status": r["status"],
                "error": _last_line(r["error"])}
               for _, r in runs.iterrows() if r["run_id"] not in has_epochs]
    runs = runs[runs["run_id"].isin(has_epochs)].reset_index(drop=True)
    if runs.empty:
        states = ", ".join(sorted({str(s["status"]) for s in skipped})) or "none"
        raise ConfigError(f"`--sweep`: sweep {name!r} has no run with recorded epochs yet "
                          f"(run statuses: {states}); run it with `trainlab run` first",
                          field="--sweep")
    recorded = [m for m in METRICS if f"valid/{m}" in epochs.columns]
    chosen = _choose_metric(recorded, metric, name)
    every = [chosen.name] + [m for m in recorded if m != chosen.name]
    # The curves: metrics recorded on both splits (F1 and MCC are validation-only) and the
    # ranking metric whichever it is.
    ordered = [m for m in every if m == chosen.name or f"train/{m}" in epochs.columns]
    rows = _run_rows(runs, epochs, varied, every)
    # A run still training has no summary yet: its parameter counts are recorded at epoch 0.
    # The run's wall time from the end of its set-up (its step-0 records: data loaded, model
    # built, peak measured) to its last record: every epoch's training and validation, the
    # checkpoints and the test pass, what the estimate's run_s predicts.
    empty = pd.Series(dtype=float)
    last = long.groupby("run_id")["time"].max() if not long.empty else empty
    start = (long[long["epoch"] == 0].groupby("run_id")["time"].min() if not long.empty
             else empty)
    rows["total_time"] = [_num(last.get(r, math.nan)) - _num(start.get(r, 0.0))
                          for r in rows["run_id"]]
    for col, key in (("params_total", "params/total"), ("params_trainable", "params/trainable")):
        counts = long[long["key"] == key].groupby("run_id")["value"].last()
        rows[col] = [v if is_finite(v) else _num(counts.get(r, math.nan))
                     for v, r in zip(rows[col], rows["run_id"])]
    return SweepFrames(name=name, varied=varied, keys=keys, labels=labels, runs=rows,
                       epochs=epochs, metric=chosen, metrics=ordered, skipped=skipped,
                       config=config or {}, table_metrics=every)


def epoch_frame(long: pd.DataFrame) -> pd.DataFrame:
    """Wide per-epoch values: the last value of each epoch-level key in each epoch.

    ``wall`` is the run's wall-clock seconds at that epoch's end (evaluation included);
    ``time/train`` the cumulative training seconds (evaluation and I/O excluded).
    """
    if long.empty:
        return pd.DataFrame(columns=["run_id", "epoch", "wall"])
    per_epoch = long[(long["epoch"] > 0) & ~long["key"].isin(_STEP_KEYS)
                     & ~long["key"].str.startswith("lr/") & ~long["key"].str.startswith("test/")]
    if per_epoch.empty:
        return pd.DataFrame(columns=["run_id", "epoch", "wall"])
    per_epoch = per_epoch.sort_values(["run_id", "step", "time"])
    wide = per_epoch.pivot_table(index=["run_id", "epoch"], columns="key", values="value",
                                 aggfunc="last")
    wall = per_epoch.groupby(["run_id", "epoch"])["time"].max().rename("wall")
    wide = wide.join(wall).reset_index()
    wide.columns.name = None
    # An epoch without a training record (interrupted mid-epoch) is not a finished epoch.
    if "time/train" in wide.columns:
        wide = wide[wide["time/train"].notna()]
    return wide.reset_index(drop=True)


def _choose_metric(recorded: list[str], metric: str | None, sweep: str) -> Metric:
    if metric is None:
        return METRICS[next((m for m in recorded if m != "loss"), "loss")]
    if metric not in recorded:
        guess = closest(metric, recorded)
        hint = f" did you mean {guess!r}?" if guess else ""
        raise ConfigError(f"`--metric`: {metric!r} was not recorded for sweep {sweep}.{hint} "
                          f"Recorded: {', '.join(recorded) or 'none'}.", field="--metric")
    return METRICS[metric]


def _run_rows(runs: pd.DataFrame, epochs: pd.DataFrame, varied: list[str],
              metrics: list[str]) -> pd.DataFrame:
    keys = [k for k in varied if k != SEED_KEY]
    rows = []
    for _, run in runs.iterrows():
        flat = flatten(run["config"])
        # As shown: an older run's MFU above 1 becomes None with the reason (trainlab.mfu).
        summary: dict[str, Any] = trusted_summary(run["summary"] or {})
        ep = epochs[epochs["run_id"] == run["run_id"]].set_index("epoch").sort_index()
        monitor = str(flat.get("train.monitor") or "valid/loss")
        best_epoch = _int(summary.get("best_epoch")) or _best_epoch(ep, monitor)
        at_best = ep.loc[best_epoch] if best_epoch in ep.index else None
        row: dict[str, Any] = {
            "run_id": run["run_id"], "index": _int(run["index"]), "status": run["status"],
            "error": _last_line(run["error"]), "config": run["config"], "env": run["env"],
            "summary": summary, "monitor": monitor, "best_epoch": best_epoch,
            "epochs_done": int(ep.index.max()) if len(ep) else 0,
            "time_to_best": _get(at_best, "time/train"),
            "train_time": _col_last(ep, "time/train"),
            "wall_time": _col_last(ep, "wall"),
            "samples_per_s": _median(ep, "throughput/samples_per_s"),
            "tokens_per_s": _median(ep, "throughput/tokens_per_s"),
            "epoch_time": _median(ep, "time/epoch_train"),
            # The share of training time the loop waited for its next batch (median over
            # epochs); whether the run loaded a Dataset's items through a DataLoader.
            "data_wait_frac": _median(ep, "time/data_wait_frac"),
            "loader": _loader_text(summary.get("speed")),
            # Epochs whose timing other work on the machine disturbed (engine/contention.py);
            # NaN for runs recorded before the flag existed.
            "disturbed_epochs": _col_sum(ep, "perf/disturbed"),
            "eval_time": _median(ep, "time/eval"),
            "peak_memory_bytes": _col_max(ep, "memory/peak_bytes"),
            # The run's own tensors at their peak, and what the process held around them
            # (RSS on CPU, the CUDA allocator's reserved bytes): see _memory_columns.
            **_memory_columns(ep, summary, run["env"]),
            # GPU utilization sampled through NVML (the mean of each epoch's samples).
            "utilization": _median(ep, "gpu/utilization_mean"),
            "mfu": _median(ep, MFU_KEY),
            "mfu_unreliable": _mfu_unreliable(ep),
            "speed": speed_text(summary.get("speed")),
            "grad_norm": _num(summary.get("grad_norm_median")),
            "params_total": _num(summary.get("params_total")),
            "params_trainable": _num(summary.get("params_trainable")),
            # How many runs shared this run's stack (train.stack): its times are the stack's.
            "stacked": _num(summary.get("stacked")),
        }
        if row["mfu_unreliable"]:  # no MFU rather than one against a peak measured low
            row["mfu"] = math.nan
        total, trainable = row["params_total"], row["params_trainable"]
        row["trainable_pct"] = (100 * trainable / total
                                if is_finite(total) and is_finite(trainable) and total
                                else math.nan)
        raw_estimate = run.get("estimate")
        estimate: dict[str, Any] = raw_estimate if isinstance(raw_estimate, dict) else {}
        row["predicted_peak_bytes"] = _num(estimate.get("peak_bytes"))
        row["predicted_tensor_peak_bytes"] = _num(estimate.get("tensor_peak_bytes"))
        row["predicted_epoch_time"] = _num(estimate.get("epoch_train_s"))
        row["predicted_run_time"] = _num(estimate.get("run_s"))
        row["estimate_method"] = estimate.get("method")
        # The calibration probe behind the prediction was disturbed (estimate/probe.py).
        row["estimate_disturbed"] = estimate.get("disturbed") is True
        for key in varied:
            row[key] = flat.get(key)
        for m in metrics:
            best_valid = _num(summary.get(f"best_valid_{m}"))
            row[f"valid_{m}"] = (best_valid if is_finite(best_valid)
                                 else _get(at_best, f"valid/{m}"))
            row[f"train_{m}"] = _get(at_best, f"train/{m}")
            row[f"test_{m}"] = _num(summary.get(f"test_{m}"))
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["group"] = [group_label(r, keys) for _, r in frame.iterrows()]
    return frame


def _loader_text(speed: Any) -> str | None:
    """``data.loader`` as run (``2 workers, pinned``), or None where no DataLoader was used."""
    loader = speed.get("loader") if isinstance(speed, dict) else None
    if not isinstance(loader, dict):
        return None
    workers = int(loader.get("workers") or 0)
    text = f"{workers} worker{'s' * (workers != 1)}" if workers else "in-process"
    return text


def speed_text(speed: Any) -> str | None:
    """The speed options a run had on, short (``fused bf16 compile``), or None if unknown."""
    if not isinstance(speed, dict):
        return None
    on = [name for name in ("fused", "compile", "channels_last") if speed.get(name)]
    if speed.get("precision") not in (None, "fp32"):
        on.insert(0, str(speed["precision"]))
    if speed.get("foreach") and not speed.get("fused"):
        on.append("foreach")
    if speed.get("stacked"):  # train.stack: its times are the stack's (engine/stack.py)
        on.append(f"stacked x{speed['stacked']}")
    return " ".join(on) or "none"


def group_label(row: pd.Series | dict[str, Any], keys: Sequence[str]) -> str:
    """A stable label of a run's configuration (its varied values other than the seed)."""
    return "|".join(format_value(row[k]) for k in keys) or "all"


def _best_epoch(ep: pd.DataFrame, monitor: str) -> int | None:
    if monitor not in ep.columns or ep[monitor].dropna().empty:
        return None
    values = ep[monitor].dropna()
    best = values.idxmax() if monitor.endswith("accuracy") else values.idxmin()
    return int(best)  # type: ignore[call-overload]


def aggregate(runs: pd.DataFrame, keys: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """One row per configuration: mean, ``<col>_std`` (sample std; NaN for n=1) and ``n``.

    ``indices`` and ``run_ids`` list the runs of each group, in sweep order.
    """
    out = []
    for _, part in runs.groupby("group", sort=False):
        first = part.iloc[0]
        row: dict[str, Any] = {k: first[k] for k in keys}
        row.update(group=first["group"], n=len(part), indices=list(part["index"]),
                   run_ids=list(part["run_id"]), status=_group_status(part["status"]),
                   index=first["index"])
        for col in columns:
            values = pd.to_numeric(part[col], errors="coerce").to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            row[col] = float(finite.mean()) if len(finite) else math.nan
            row[f"{col}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def _group_status(statuses: pd.Series) -> str:
    values = sorted(set(statuses))
    return values[0] if len(values) == 1 else "/".join(values)


def curves(frames: SweepFrames, run_ids: Sequence[str], key: str,
           x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(x, mean, std, n) of ``key`` over ``x`` (``epoch`` or a time column) across runs.

    Seeds are averaged epoch by epoch over the runs that reached that epoch; the x of a time
    axis is the mean time at which they reached it.
    """
    ep = frames.epochs
    part = ep[ep["run_id"].isin(run_ids)]
    if key not in part.columns or part[key].dropna().empty:
        return np.array([]), np.array([]), np.array([]), 0
    part = part[["run_id", "epoch", key] + ([x] if x != "epoch" else [])].dropna(subset=[key])
    grouped = part.groupby("epoch")
    xs = (np.asarray(grouped.size().index, dtype=float) if x == "epoch"
          else grouped[x].mean().to_numpy(dtype=float))
    mean = grouped[key].mean().to_numpy(dtype=float)
    std = grouped[key].std(ddof=1).fillna(0.0).to_numpy(dtype=float)
    return xs, mean, std, int(part["run_id"].nunique())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (``model.hidden_dim``)."""
    out: dict[str, Any] = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return int(value)


def _get(row: pd.Series | None, key: str) -> float:
    if row is None or key not in row.index:
        return math.nan
    return _num(row[key])


def _col_last(ep: pd.DataFrame, key: str) -> float:
    if key not in ep.columns or ep[key].dropna().empty:
        return math.nan
    return float(ep[key].dropna().iloc[-1])


def _col_sum(ep: pd.DataFrame, key: str) -> float:
    if key not in ep.columns or ep[key].dropna().empty:
        return math.nan
    return float(ep[key].dropna().sum())


def _memory_columns(ep: pd.DataFrame, summary: dict[str, Any], env: Any) -> dict[str, float]:
    """``tensor_peak_bytes``: memory/tensor_peak_bytes (engine/measure.py); on a GPU run
    recorded before it existed, memory/peak_bytes, the allocator's peak, which is the same
    measurement; NaN for older CPU runs, whose only number is the process's.
    ``rss_reserved_bytes``: the process's peak RSS on CPU, the CUDA allocator's peak reserved
    bytes on a GPU."""
    device = str(summary.get("device") or (env.get("device") if isinstance(env, dict) else "")
                 or "")
    cuda = device.startswith("cuda")
    tensor = _col_max(ep, "memory/tensor_peak_bytes")
    if cuda and not is_finite(tensor):
        tensor = _col_max(ep, "memory/peak_bytes")
    second = _col_max(ep, "memory/reserved_bytes" if cuda else "memory/peak_bytes")
    return {"tensor_peak_bytes": tensor, "rss_reserved_bytes": second}


def _col_max(ep: pd.DataFrame, key: str) -> float:
    if key not in ep.columns or ep[key].dropna().empty:
        return math.nan
    return float(ep[key].max())


def _mfu_unreliable(ep: pd.DataFrame) -> bool:
    """Whether an epoch found the run's measured peak too low: it recorded
    ``perf/mfu_unreliable``, or (an older run) a ``perf/mfu`` above 1."""
    flagged = UNRELIABLE_KEY in ep.columns and bool(ep[UNRELIABLE_KEY].notna().any())
    return flagged or (MFU_KEY in ep.columns and bool((ep[MFU_KEY] > 1).any()))


def _median(ep: pd.DataFrame, key: str) -> float:
    # The median over epochs: the first epoch carries warm-up (allocator, caches).
    if key not in ep.columns or ep[key].dropna().empty:
        return math.nan
    return float(ep[key].median())


def _last_line(error: Any) -> str | None:
    if not error or not isinstance(error, str):
        return None
    return error.strip().splitlines()[-1][:300]


__all__ = ["METRICS", "SEED_KEY", "Metric", "SweepFrames", "aggregate", "build_frames",
           "curves", "epoch_frame", "flatten", "format_indices", "format_value", "group_label",
           "load_sweep", "pick_sweep"]
