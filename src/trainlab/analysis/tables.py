"""Tables: the summary table (quality at the best epoch, time, memory) and the system table.

A :class:`Table` holds typed columns, raw values, the sort order, groups and the marks
("best" in bold, or "tie" where the best's lead is within the noise); ``render.py`` writes it
as Markdown, LaTeX, HTML and CSV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from trainlab.analysis.fmt import (
    format_count,
    format_indices,
    format_int,
    format_mib,
    format_number,
    format_percent,
    format_rate,
    format_seconds,
    format_signed,
    format_value,
    is_finite,
)
from trainlab.analysis.frames import METRICS, SEED_KEY, SweepFrames, aggregate
from trainlab.errors import ConfigError, closest
from trainlab.mfu import UNRELIABLE_NOTE, UNRELIABLE_TEXT

Kind = Literal["run", "text", "int", "metric", "number", "seconds", "bytes", "rate", "count",
               "percent", "signed"]
Mark = Literal["best", "tie"] | None

TIE_SYMBOL = "≈"
# Marks the time and throughput cells of a run whose timing other work on the machine
# disturbed (perf/disturbed, engine/contention.py); the legend is the table's note.
DISTURBED_SYMBOL = "†"
TIMED_KEYS = frozenset({"time_to_best", "train_time", "wall_time", "samples_per_s",
                        "tokens_per_s", "epoch_time", "eval_time", "time_error_pct",
                        "data_wait_pct", "total_time", "run_error_pct"})


@dataclass(frozen=True)
class Column:
    key: str  # the frame column
    header: str  # short header (abbreviations explained in the caption)
    kind: Kind
    explain: str = ""  # the caption's sentence for this header ("" for self-explanatory ones)


@dataclass
class Table:
    """A rendered-agnostic table: columns, rows of raw values and marks."""

    name: str  # file stem (summary, system) and the report section's anchor
    title: str  # the report section's heading
    columns: list[Column]
    rows: list[dict[str, Any]]  # raw values by column key (+ "<key>_std", "n", "run_ids")
    marks: list[Mark]
    groups: list[str]  # the group label of each row (a rule is drawn between groups)
    caption: str
    seeded: bool = False
    notes: list[str] = field(default_factory=list)

    def cell(self, row: int, col: Column) -> str:
        """The cell's text (no markup): numbers formatted, mean ± std with seeds."""
        values = self.rows[row]
        value = values.get(col.key)
        if col.kind == "run" and values.get("indices") is not None:
            return format_indices(values["indices"])
        if value == UNRELIABLE_TEXT:  # an MFU against a peak measured low: no number
            return UNRELIABLE_TEXT
        if col.key in ("time_error_pct", "run_error_pct") and values.get("time_error_withheld"):
            return DISTURBED_SYMBOL  # a disturbed prediction or measurement: no error
        text = format_cell(value, col.kind)
        std = values.get(f"{col.key}_std")
        if self.seeded and col.kind in ("metric", "number", "seconds", "rate", "bytes") \
                and is_finite(std):
            text = f"{text} ± {format_cell(std, col.kind)}"
        if text != "-" and ((col.key in TIMED_KEYS and self.disturbed(row)) or (
                col.key in ("predicted_epoch_time", "predicted_run_time")
                and values.get("estimate_disturbed"))):
            text = f"{text} {DISTURBED_SYMBOL}"
        return text

    def disturbed(self, row: int) -> bool:
        """Whether the row's timing was disturbed in some epoch (with seeds: in some seed)."""
        count = self.rows[row].get("disturbed_epochs")
        return is_finite(count) and float(count) > 0  # type: ignore[arg-type]

    def sort_value(self, row: int, col: Column) -> Any:
        value = self.rows[row].get(col.key)
        if col.kind == "run":
            return min(self.rows[row].get("indices") or [value or 0])
        return value


def format_cell(value: Any, kind: Kind) -> str:
    """A cell's text by its column kind (see :mod:`trainlab.analysis.fmt`); ``-`` for a
    numeric cell whose value is not a finite number (text included)."""
    if kind in ("text", "run"):
        return format_value(value) if not isinstance(value, list) else format_indices(value)
    if not is_finite(value):
        return "-"
    if kind == "bytes":  # whole MiB, three significant digits under 100 MiB
        return format_mib(value, significant=3)
    return _FORMATS.get(kind, format_number)(float(value))


_FORMATS = {"int": format_int, "count": format_count, "rate": format_rate,
            "seconds": format_seconds, "percent": format_percent, "signed": format_signed}


# --- marking the best ---------------------------------------------------------------------------


def mark_best(means: Sequence[float], stds: Sequence[float], higher_is_better: bool,
              eligible: Sequence[bool] | None = None) -> list[Mark]:
    """Bold the best row where its lead exceeds the noise; otherwise mark the tie.

    The rule: the best is the best mean among eligible rows.  Another row ties with it when
    the gap between the two means is at most the larger of their two standard deviations
    (without a std, n = 1, only an exactly equal value ties).  A best without ties is
    ``"best"``; a best with ties is ``"tie"``, and so is every row tied with it.
    """
    ok = list(eligible) if eligible is not None else [True] * len(means)
    candidates = [i for i, m in enumerate(means) if ok[i] and is_finite(m)]
    marks: list[Mark] = [None] * len(means)
    if not candidates:
        return marks
    sign = 1.0 if higher_is_better else -1.0
    best = max(candidates, key=lambda i: (sign * means[i], -i))
    tied = [i for i in candidates if i != best
            and abs(means[best] - means[i]) <= _noise(stds[best], stds[i], means[best])]
    if not tied:
        marks[best] = "best"
    else:
        for i in (best, *tied):
            marks[i] = "tie"
    return marks


def _noise(a: float, b: float, scale: float) -> float:
    spread = max(a if is_finite(a) else 0.0, b if is_finite(b) else 0.0)
    return max(spread, 1e-12 * max(abs(scale), 1.0))


# --- sorting and grouping -----------------------------------------------------------------------


def sort_frame(frame: pd.DataFrame, keys: Sequence[str], order_from: pd.DataFrame | None = None,
               descending: Sequence[bool] | None = None) -> pd.DataFrame:
    """Rows sorted by ``keys`` in turn: numbers ascending, text in the order it first appears
    in the sweep (``order_from``, by run number; as the grid lists it), missing values last."""
    if frame.empty or not keys:
        return frame.reset_index(drop=True)
    source = order_from if order_from is not None else frame
    source = source.sort_values("index") if "index" in source.columns else source
    desc = list(descending) if descending is not None else [False] * len(keys)

    def ranker(key: str) -> Any:
        first = list(dict.fromkeys(format_value(v) for v in source[key]))

        def value(v: Any) -> tuple[int, float, str]:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return (2, 0.0, "")
            if isinstance(v, bool) or not isinstance(v, int | float):
                text = format_value(v)
                return (1, float(first.index(text)) if text in first else math.inf, text)
            return (0, float(v), "")
        return value

    out = frame.copy()
    sort_cols = []
    for i, key in enumerate(keys):
        col = f"__sort{i}"
        if key in source.columns:
            rank = ranker(key)
            values = [rank(v) for v in out[key]]
        else:
            values = [(0, float(v), "") if is_finite(v) else (2, 0.0, "") for v in out[key]]
        if desc[i]:
            values = [(g, -x, s) for g, x, s in values]
        out[col] = values
        sort_cols.append(col)
    out = out.sort_values(sort_cols, kind="stable").drop(columns=sort_cols)
    return out.reset_index(drop=True)


def resolve_sort(frames: SweepFrames, spec: str | None, columns: Sequence[Column]
                 ) -> tuple[list[str], list[bool]]:
    """``--sort`` (comma-separated labels, ``-`` for descending) as frame columns."""
    if not spec:
        return list(frames.keys), [False] * len(frames.keys)
    by_header = {c.header: c.key for c in columns if c.kind != "text"}
    by_header.update({"run": "index", "#": "index"})
    keys, desc = [], []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        name = raw.lstrip("-")
        if name in by_header:
            keys.append(by_header[name])
        else:
            try:
                keys.append(frames.resolve_key(name, "--sort"))
            except ConfigError:
                choices = [frames.label(k) for k in frames.keys] + list(by_header)
                guess = closest(name, choices)
                hint = f" did you mean {guess!r}?" if guess else ""
                raise ConfigError(f"`--sort`: unknown column {name!r}.{hint} Valid: "
                                  f"{', '.join(choices)} (prefix - for descending).",
                                  field="--sort") from None
        desc.append(raw.startswith("-"))
    return keys, desc


def resolve_group(frames: SweepFrames, group: str | None) -> str | None:
    """The key whose values group rows for "best" (default: the first varied key when at least
    two vary, e.g. the architecture); ``none`` for the whole table."""
    if group is None:
        return frames.keys[0] if len(frames.keys) >= 2 else None
    if group.lower() in ("none", "all", ""):
        return None
    return frames.resolve_key(group, "--group")


# --- the tables ---------------------------------------------------------------------------------


def summary_table(frames: SweepFrames, *, sort: str | None = None,
                  group: str | None = None, metrics: Sequence[str] | None = None) -> Table:
    """One row per run (per configuration with seeds): quality at the best epoch and costs.

    ``metrics``: the quality metrics beside the ranking one (default: every one recorded:
    loss, and F1 and MCC for classification).
    """
    m = frames.metric
    lm = "tokens_per_s" in frames.runs.columns and frames.runs["tokens_per_s"].notna().any()
    both = frames.runs[["params_total", "params_trainable"]].dropna()
    split_params = bool((both["params_total"] != both["params_trainable"]).any())
    cols = [Column("index", "#", "run", "#: run number in the sweep (as `trainlab ls` shows)")]
    cols += [Column(k, frames.label(k), "text") for k in frames.keys]
    a = m.abbrev
    cols += [Column(f"train_{m.name}", f"train {a}", "metric"),
             Column(f"valid_{m.name}", f"valid {a}", "metric"),
             Column(f"test_{m.name}", f"test {a}", "metric")]
    # The other metrics the task records (loss beside accuracy, F1 and MCC where recorded):
    # validation and test, side by side; a column no run has is left out.
    shown = frames.table_metrics[1:] if metrics is None else [
        x for x in metrics if x != m.name]
    for name in shown:
        other = METRICS[name]
        cols += [Column(f"{split}_{name}", f"{split} {other.abbrev}", "metric")
                 for split in ("train", "valid", "test")  # train loss beside train accuracy
                 if f"{split}_{name}" in frames.runs.columns
                 and frames.runs[f"{split}_{name}"].notna().any()]
    cols += [
        Column("best_epoch", "ep*", "int", "ep*: the epoch with the best validation "
               "(by the run's train.monitor); train and valid columns are at that epoch"),
        Column("time_to_best", "t* (s)", "seconds", "t*: training seconds to reach ep*"),
        Column("train_time", "T (s)", "seconds", "T: total training seconds"),
        Column("tokens_per_s" if lm else "samples_per_s", "thr (tok/s)" if lm else "thr (ex/s)",
               "rate", "thr: training throughput, median over epochs, in "
               + ("tokens" if lm else "examples") + " per second"),
        *memory_columns(frames),
    ]
    if split_params:
        cols += [Column("params_total", "params", "count", "params: parameters in the model"),
                 Column("params_trainable", "trainable", "count",
                        "trainable: parameters the optimizer updates")]
    else:
        cols.append(Column("params_total", "params", "count",
                           "params: parameters in the model (all trainable)"))
    return _build(frames, "summary", "Summary", cols, sort=sort, group=group,
                  lead=_summary_lead(frames))


def system_table(frames: SweepFrames, *, sort: str | None = None,
                 order: Sequence[str] | None = None) -> Table:
    """Per run: peak memory, throughput, time per epoch, evaluation time, utilization.

    ``order`` (configuration labels, e.g. the summary table's) fixes the row order instead.
    """
    runs = frames.runs
    lm = runs["tokens_per_s"].notna().any()
    cols = [Column("index", "#", "run", "#: run number in the sweep")]
    cols += [Column(k, frames.label(k), "text") for k in frames.keys]
    cols.append(Column("device", "device", "text", "device: where the run trained"))
    cols += [*memory_columns(frames),
             Column("samples_per_s", "thr (ex/s)", "rate",
                    "thr: training examples per second, median over epochs")]
    if lm:
        cols.append(Column("tokens_per_s", "thr (tok/s)", "rate",
                           "thr (tok/s): training tokens per second, median over epochs"))
    cols += [Column("epoch_time", "t/ep (s)", "seconds",
                    "t/ep: training seconds per epoch (median; evaluation excluded)"),
             Column("eval_time", "eval (s)", "seconds",
                    "eval: seconds per validation pass (median)")]
    if _shows_data_wait(runs):
        cols.append(Column("data_wait_pct", "wait (%)", "percent",
                           "wait: share of the training time the loop waited for its next "
                           "batch (time/data_wait_frac, median over epochs)"))
    if runs["utilization"].notna().any():
        cols.append(Column("utilization", "util (%)", "percent",
                           "util: GPU utilization sampled through NVML, median over epochs"))
    if runs["mfu"].notna().any() or _mfu_flags(runs).any():
        cols.append(Column("mfu_pct", "MFU (%)", "percent",
                           "MFU: model FLOPs utilization, achieved FLOP/s against the matmul "
                           "peak measured on the same device, median over epochs ("
                           f"{UNRELIABLE_TEXT}: {UNRELIABLE_NOTE})"))
    if runs["speed"].notna().any():
        cols.append(Column("speed", "speed", "text", "speed: speed options that were on "
                           "(fused optimizer kernels, reduced precision, compile, channels-last"
                           "; foreach: multi-tensor optimizer kernels)"))
    cols.append(Column("params_total", "params", "count", "params: parameters in the model"))
    if (runs["trainable_pct"].dropna() < 100).any():
        cols.append(Column("trainable_pct", "train. (%)", "percent",
                           "train.: share of the parameters that are trained"))
    if runs["grad_norm"].notna().any():
        cols.append(Column("grad_norm", "|g|", "number",
                           "|g|: gradient L2 norm, median over the logged steps"))
    lead = ("System costs of each run, measured by trainlab during training.")
    return _build(frames, "system", "Memory and throughput", cols, sort=sort, group=None,
                  lead=lead, extra_text=["device"], order=order)


def estimate_table(frames: SweepFrames, order: Sequence[str] | None = None) -> Table | None:
    """Predicted against measured peak memory and time per epoch, with errors (None if no run
    was predicted)."""
    runs = frames.runs
    if not runs["predicted_peak_bytes"].notna().any():
        return None
    cols = [Column("index", "#", "run", "#: run number in the sweep")]
    cols += [Column(k, frames.label(k), "text") for k in frames.keys]
    cols += [
        Column("predicted_mem_bytes", "mem pred.", "bytes",
               "mem: peak MiB of the run's own tensors (memory/tensor_peak_bytes: weights, "
               "gradients, optimizer state, activations, data, batches) predicted before the "
               "run, and measured"),
        Column("measured_mem_bytes", "mem meas.", "bytes"),
        Column("mem_error_pct", "err (%)", "signed",
               "err: (predicted - measured) / measured"),
        Column("predicted_epoch_time", "t/ep pred.", "seconds",
               "t/ep: training seconds per epoch predicted, and measured (median)"),
        Column("epoch_time", "t/ep meas.", "seconds"),
        Column("time_error_pct", "err (%) ", "signed"),
        Column("predicted_run_time", "T pred.", "seconds",
               "T: the whole run's seconds predicted (every epoch's training and validation, "
               "and the test pass), and measured (wall clock from the end of the run's set-up "
               "to its last record: the same, with checkpoints; loading the data and building "
               "the model before it are not predicted, so not counted)"),
        Column("total_time", "T meas.", "seconds"),
        Column("run_error_pct", "err (%)  ", "signed"),
    ]
    methods = sorted({str(m) for m in runs["estimate_method"].dropna()})
    lead = (f"Predicted against measured, per run (prediction method: {', '.join(methods)}; "
            f"see trainlab estimate). Whole sweep: predicted "
            f"{_total(runs['predicted_run_time'])} s, measured "
            f"{_total(runs.get('total_time', runs['wall_time']))} s (training and evaluation).")
    table = _build(frames, "estimates", "Predicted and measured", cols,
                   sort=None, group=None, lead=lead, order=order)
    _withhold_disturbed_time_errors(frames, table)
    _note_process_memory(frames, table)
    return table


def _note_process_memory(frames: SweepFrames, table: Table) -> None:
    """Name the rows whose memory columns compare the process's peak instead of the tensors'
    (the run or its prediction is older than memory/tensor_peak_bytes)."""
    runs = _with_compared_memory(frames.runs)
    process = set(runs.loc[~runs["mem_tensors"], "run_id"])
    rows = [frames.run_numbers(r) for r in table.rows
            if process & set(r.get("run_ids") or [r.get("run_id")])]
    if rows:
        table.notes.append(
            f"mem for run {'; '.join(rows)}: the process's peak (memory/peak_bytes: resident "
            "set size on CPU, Python and torch included) against its prediction, as the run "
            "or its prediction was made before trainlab measured the run's own tensors.")


def _with_compared_memory(runs: pd.DataFrame) -> pd.DataFrame:
    """``predicted_mem_bytes`` / ``measured_mem_bytes`` / ``mem_error_pct``: the run's own
    tensors predicted and measured where both are known (``mem_tensors``), else the process's
    peak (memory/peak_bytes) and its prediction, the same kind on each side."""
    runs = runs.copy()
    nan = pd.Series(math.nan, index=runs.index)
    predicted = pd.to_numeric(runs.get("predicted_tensor_peak_bytes", nan), errors="coerce")
    measured = pd.to_numeric(runs.get("tensor_peak_bytes", nan), errors="coerce")
    tensors = predicted.notna() & measured.notna()
    runs["mem_tensors"] = tensors
    runs["predicted_mem_bytes"] = predicted.where(tensors, runs["predicted_peak_bytes"])
    runs["measured_mem_bytes"] = measured.where(tensors, runs["peak_memory_bytes"])
    runs["mem_error_pct"] = 100 * (runs["predicted_mem_bytes"] / runs["measured_mem_bytes"] - 1)
    return runs


def _withhold_disturbed_time_errors(frames: SweepFrames, table: Table) -> None:
    """No time error for a row holding a run whose prediction (the calibration probe) or whose
    measured epochs other work on the machine disturbed: the error would be the machine's, not
    the estimate's (a 1,000 % error on a busy machine).  With seeds, the whole configuration's
    row, as a mean over the others would hide it.  Memory errors stay."""
    runs = frames.runs
    counts = pd.to_numeric(runs["disturbed_epochs"], errors="coerce")
    measured = (counts.notna() & (counts > 0)) | runs["summary"].map(
        lambda s: isinstance(s, dict) and s.get("timing_trusted") is False)
    predicted = runs["estimate_disturbed"].fillna(False).astype(bool)
    flagged = set(runs.loc[measured | predicted, "run_id"])
    from_probe = set(runs.loc[predicted, "run_id"])
    withheld = []
    for r in table.rows:
        ids = set(r.get("run_ids") or [r.get("run_id")])
        r["estimate_disturbed"] = bool(from_probe & ids)
        if flagged & ids:
            r.update(time_error_pct=math.nan, time_error_pct_std=math.nan,
                     run_error_pct=math.nan, run_error_pct_std=math.nan,
                     time_error_withheld=True)
            withheld.append(frames.run_numbers(r))
    if withheld:
        table.notes.append(
            f"{DISTURBED_SYMBOL} in err for run {'; '.join(withheld)}: no time error, because "
            "other work on the machine disturbed its prediction (the calibration probe; its "
            f"t/ep pred. is marked {DISTURBED_SYMBOL}) or its measured epochs, so the "
            "difference would be the machine's, not the estimate's. Memory errors are shown.")


def _total(values: pd.Series) -> str:
    return format_number(float(values.dropna().sum())) if values.notna().any() else "-"


def _build(frames: SweepFrames, name: str, title: str, cols: list[Column], *,
           sort: str | None, group: str | None, lead: str,
           extra_text: Sequence[str] = (), order: Sequence[str] | None = None) -> Table:
    runs = _with_compared_memory(frames.runs)
    runs["device"] = [str(s.get("device") or _env_device(e)) for s, e in
                      zip(runs["summary"], runs["env"])]
    runs["mfu_pct"] = runs["mfu"] * 100
    runs["data_wait_pct"] = runs["data_wait_frac"] * 100
    runs["time_error_pct"] = 100 * (runs["predicted_epoch_time"] / runs["epoch_time"] - 1)
    if "total_time" not in runs.columns:  # frames made before the column existed
        runs["total_time"] = math.nan
    runs["run_error_pct"] = 100 * (runs["predicted_run_time"] / runs["total_time"] - 1)
    numeric = [c.key for c in cols if c.kind not in ("text", "run")]
    seeded = frames.seeded
    frame = (aggregate(runs, [*frames.keys, *extra_text], [*numeric, "disturbed_epochs"])
             if seeded else runs)
    if order is not None:
        rank = {g: i for i, g in enumerate(order)}
        frame = frame.sort_values("group", key=lambda col: col.map(
            lambda g: rank.get(g, len(rank))), kind="stable").reset_index(drop=True)
    else:
        keys, desc = resolve_sort(frames, sort, cols)
        frame = sort_frame(frame, keys, order_from=frames.runs, descending=desc)
    group_key = resolve_group(frames, group) if name == "summary" else None
    groups = ([format_value(v) for v in frame[group_key]] if group_key
              else ["all"] * len(frame))
    singles = bool(group_key) and len(set(groups)) == len(groups) > 1
    if singles and group is None:
        # Every group holds one row: bold per group would mark every row, singling out
        # nothing.  By default the best is then the best over the table.
        group_key, groups, singles = None, ["all"] * len(frame), False
    marks: list[Mark] = [None] * len(frame)
    if name == "summary":
        metric_col = f"valid_{frames.metric.name}"
        for g in dict.fromkeys(groups):
            idx = [i for i, x in enumerate(groups) if x == g]
            sub = mark_best([frame[metric_col].iloc[i] for i in idx],
                            [frame[f"{metric_col}_std"].iloc[i] if seeded else math.nan
                             for i in idx], frames.metric.higher_is_better,
                            [frame["status"].iloc[i] == "ok" for i in idx])
            for i, mk in zip(idx, sub):
                marks[i] = mk
    if seeded:
        cols = [*cols, Column("n", "n", "int", "n: seeds (runs) averaged")]
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()}
                                  for r in frame.to_dict(orient="records")]
    _mark_unreliable_mfu(frames, cols, rows)
    table = Table(name, title, cols, rows, marks, groups if group_key else [], "",
                  seeded=seeded)
    table.caption = _caption(frames, table, lead, group_key, sort)
    if singles and group_key:
        table.caption += (f" Every {frames.label(group_key)} holds one row, so every row is "
                          "bold; `--group none` marks the best over the table.")
    if any(r.get("status") not in ("ok", None) for r in rows):
        bad = [f"{frames.run_numbers(r)} ({r['status']})" for r in rows if r["status"] != "ok"]
        table.notes.append("Not finished normally: " + "; ".join(bad) + ".")
    if any(c.key in TIMED_KEYS for c in cols) and any(
            table.disturbed(i) for i in range(len(rows))):
        table.notes.append(_disturbed_note())
    flagged = [frames.run_numbers(r) for r in rows if r.get("mfu_pct") == UNRELIABLE_TEXT]
    if flagged:
        table.notes.append(f"MFU {UNRELIABLE_TEXT} for run {'; '.join(flagged)}: {UNRELIABLE_NOTE} "
                           "(an epoch ran faster than that peak), so no MFU is given.")
    return table


def _shows_data_wait(runs: pd.DataFrame) -> bool:
    """The wait-for-data column: where some run loaded a Dataset's items, or waited for
    batches noticeably (tensors in memory wait microseconds; the column would be noise)."""
    if "data_wait_frac" not in runs.columns:
        return False
    waits = pd.to_numeric(runs["data_wait_frac"], errors="coerce")
    return bool(runs["loader"].notna().any() or (waits > 0.05).any())


def _mfu_flags(runs: pd.DataFrame) -> pd.Series:
    """Per run: whether its MFU is unreliable (False where frames predate the flag)."""
    if "mfu_unreliable" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs["mfu_unreliable"].fillna(False).astype(bool)


def _mark_unreliable_mfu(frames: SweepFrames, cols: list[Column],
                         rows: list[dict[str, Any]]) -> None:
    """A row holding a run whose measured peak was too low shows "unreliable", not a number
    (with seeds, the whole configuration's row: a mean over the others would hide it)."""
    if not any(c.key == "mfu_pct" for c in cols):
        return
    runs = frames.runs
    flagged = set(runs.loc[_mfu_flags(runs), "run_id"])
    for r in rows:
        if flagged.intersection(r.get("run_ids") or [r.get("run_id")]):
            r.update(mfu_pct=UNRELIABLE_TEXT, mfu_pct_std=math.nan)


def _disturbed_note() -> str:
    from trainlab.engine.contention import CPU_SHARE_MIN, CPU_WAIT_MAX, STEAL_MAX

    return (f"{DISTURBED_SYMBOL}: timing disturbed by other work on the machine in at least one "
            f"epoch of that run (its threads waited for a core over {CPU_WAIT_MAX:.0%} of the "
            f"time, or the hypervisor stole over {STEAL_MAX:.0%} of the CPU; without scheduler "
            f"statistics: under {CPU_SHARE_MIN:.0%} of the CPU it asked for), so its times and "
            "throughputs are not the model's alone: rerun it on a quiet machine. `trainlab "
            "show RUN` lists the epochs.")


def _caption(frames: SweepFrames, table: Table, lead: str, group_key: str | None,
             sort: str | None) -> str:
    m = frames.metric
    parts = [lead]
    explained = [c.explain for c in table.columns if c.explain]
    if any(c.kind == "metric" for c in table.columns):
        others = [METRICS[x] for x in dict.fromkeys(
            c.key.split("_", 1)[1] for c in table.columns if c.kind == "metric")
            if x in METRICS and x != m.name]
        explained[:0] = [f"{o.abbrev}: {o.description}" for o in others]
        explained.insert(0, f"{m.abbrev}: {m.description}; train {m.abbrev} is the running "
                            "average over the training epoch in training mode (dropout "
                            "active), valid and test are measured after it (test: the "
                            "best-validation checkpoint)")
    parts.append("Columns: " + "; ".join(explained) + ".")
    keys = ", ".join(frames.label(k) for k in frames.keys)
    if table.name == "system":
        parts.append("Rows in the order of the summary table.")
    elif sort:
        parts.append(f"Sorted by {sort}.")
    elif keys:
        parts.append(f"Sorted by {keys}.")
    if table.name == "summary":
        where = f"for each {frames.label(group_key)}" if group_key else "over the table"
        rule = (f"Bold: the best validation {m.abbrev} {where} ("
                + ("highest" if m.higher_is_better else "lowest") + "; finished runs only)")
        if table.seeded:
            rule += (f", bold only where its lead over the runner-up exceeds the noise: the gap "
                     f"between two means must be larger than the larger of their two standard "
                     f"deviations; otherwise the best and every run within that gap are marked "
                     f"{TIE_SYMBOL} (tied)")
        else:
            rule += (f"; {TIE_SYMBOL} marks runs tied for best. One seed per configuration: no "
                     "noise estimate, so small leads may not be meaningful")
        parts.append(rule + ".")
    if table.seeded:
        parts.append("With seeds: mean ± sample standard deviation over n runs that differ only "
                     f"in {SEED_KEY}; # lists their run numbers.")
    parts.append("-: not recorded.")
    return " ".join(parts)


def _summary_lead(frames: SweepFrames) -> str:
    return (f"Results of sweep {frames.name} at each run's best validation epoch "
            f"({len(frames.runs)} runs).")


def memory_columns(frames: SweepFrames) -> list[Column]:
    """The memory columns of a run: the peak of its own tensors (memory/tensor_peak_bytes),
    then what the process held (RSS on CPU, the CUDA allocator's reserved bytes).  A sweep
    recorded before the tensors' peak was measured keeps its one column (the process's peak
    RSS on CPU, the allocator's peak on CUDA); in a sweep that mixes both, an older CPU run's
    tensors cell is blank."""
    runs = frames.runs
    if "tensor_peak_bytes" not in runs.columns or not runs["tensor_peak_bytes"].notna().any():
        return [Column("peak_memory_bytes", "mem (MiB)", "bytes", "mem: " + _memory_note(frames))]
    devices = {str((s or {}).get("device", "")) for s in runs["summary"]}
    cuda = {d.startswith("cuda") for d in devices}
    rss = ("peak resident set size of the training process in MiB (CPU; Python and torch "
           "included, a few hundred MiB)")
    reserved = ("peak MiB the CUDA caching allocator reserved (the tensors, and the blocks it "
                "keeps cached for reuse)")
    if cuda == {True}:
        second = Column("rss_reserved_bytes", "reserved (MiB)", "bytes", "reserved: " + reserved)
    elif cuda == {False}:
        second = Column("rss_reserved_bytes", "RSS (MiB)", "bytes", "RSS: " + rss)
    else:
        second = Column("rss_reserved_bytes", "RSS/res. (MiB)", "bytes",
                        f"RSS/res.: on CPU runs the {rss}; on GPU runs the {reserved}")
    return [Column("tensor_peak_bytes", "tensors (MiB)", "bytes",
                   "tensors: peak MiB of the run's own tensors (memory/tensor_peak_bytes: "
                   "weights, gradients, optimizer state, activations, data and batches; the "
                   "CUDA allocator's peak on a GPU, the first training step tracked tensor by "
                   "tensor on CPU)"), second]


def _memory_note(frames: SweepFrames) -> str:
    devices = {str((s or {}).get("device", "")) for s in frames.runs["summary"]}
    # What a GPU number covers (issue 25): validation, the data held on the device, rank 0.
    gpu_scope = ("; includes validation and a dataset held on the device; under DDP the "
                 "largest rank's")
    if devices and all(d.startswith("cuda") for d in devices):
        return "peak CUDA memory allocated by tensors (MiB)" + gpu_scope
    if any(d.startswith("cuda") for d in devices):
        return ("peak memory in MiB: CUDA allocator peak on GPU runs" + gpu_scope
                + "; peak resident set size of the process on CPU runs")
    return ("peak resident set size of the training process in MiB (CPU; includes Python and "
            "torch themselves, a few hundred MiB)")


def _env_device(env: Any) -> str:
    return str((env or {}).get("device", "")) if isinstance(env, dict) else ""


__all__ = ["DISTURBED_SYMBOL", "TIE_SYMBOL", "TIMED_KEYS", "Column", "Table", "estimate_table",
           "format_cell", "format_number",
           "mark_best", "memory_columns", "resolve_group", "resolve_sort", "sort_frame",
           "summary_table", "system_table"]
