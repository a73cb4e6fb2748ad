"""Answers to the questions reports ask, each with the runs it names and the numbers behind it.

- wall-clock: the configuration that first reaches a target validation metric (by default
  within 10 % of the sweep's best; 1 point of accuracy), and the best one at an equal budget
  of training time;
- generalization: the smallest train/validation gap at the best epoch among configurations
  whose validation metric is within the same tolerance of the best;
- the Pareto fronts of quality against training time and against peak memory;
- overfitting: validation worsening for ``k`` epochs in a row while training improves;
- the input pipeline (where some run loaded a Dataset's items, or waited for its batches):
  which runs were input-bound and which setting removed the wait;
- divergence and failures.

Seed runs of one configuration are averaged first (curves epoch by epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from trainlab.analysis.fmt import format_number, mib
from trainlab.analysis.frames import Metric, SweepFrames, aggregate, curves
from trainlab.analysis.pareto import cost_noise, noise_text, noisy_front, pareto_front, value_noise
from trainlab.analysis.tables import sort_frame

RELATIVE_TOLERANCE = 0.10  # lower-is-better metrics: within 10 % of the best
# A run is input-bound when it waited for its next batch this share of its training time or
# more (time/data_wait_frac, median over epochs); below NO_WAIT the wait is negligible.  The
# engine applies the same rule per epoch (engine/contention.py INPUT_BOUND; analysis does not
# import the engine).
INPUT_BOUND = 0.2
NO_WAIT = 0.05
ACCURACY_TOLERANCE = 0.01  # accuracy: within one percentage point of the best


@dataclass
class Answer:
    key: str
    question: str
    answer: str  # the verdict, naming runs and numbers
    columns: list[str] = field(default_factory=list)  # evidence column order
    evidence: list[dict[str, Any]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # run numbers the verdict names
    figure: str | None = None  # name of the figure that shows it

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, numpy scalars plain numbers."""
        return {"key": self.key, "question": self.question, "answer": self.answer,
                "runs": self.runs, "columns": self.columns,
                "evidence": [{k: _plain(v) for k, v in row.items()} for row in self.evidence],
                "figure": self.figure}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def answer_all(frames: SweepFrames, *, target: float | None = None,
               overfit_epochs: int = 2) -> list[Answer]:
    configs = config_frame(frames)
    return [time_to_target(frames, configs, target), time_budget(frames, configs),
            generalization(frames, configs), pareto(frames, configs, "train_time"),
            pareto(frames, configs, "peak_memory_bytes"),
            overfitting(frames, configs, overfit_epochs), *input_pipeline(frames, configs),
            *best_lr_per_setting(frames, configs), divergence(frames)]


def config_frame(frames: SweepFrames) -> pd.DataFrame:
    """One row per configuration, seeds averaged, finished runs first in table order."""
    m = frames.metric.name
    cols = [f"valid_{m}", f"train_{m}", "valid_loss", "train_loss", "train_time",
            "peak_memory_bytes", "best_epoch", "time_to_best", "disturbed_epochs",
            "data_wait_frac", "samples_per_s", "tensor_peak_bytes", "stacked"]
    cols = [c for c in cols if c in frames.runs.columns]
    configs = aggregate(frames.runs, frames.keys, cols)
    return sort_frame(configs, frames.keys, order_from=frames.runs)


def tolerance_bound(metric: Metric, best: float) -> float:
    """The worst value still "within tolerance" of ``best``."""
    if metric.higher_is_better:
        return best - (ACCURACY_TOLERANCE if metric.name == "accuracy"
                       else RELATIVE_TOLERANCE * abs(best))
    return best + RELATIVE_TOLERANCE * abs(best)


def _tolerance_text(metric: Metric) -> str:
    if metric.higher_is_better and metric.name == "accuracy":
        return f"within {ACCURACY_TOLERANCE * 100:g} point of accuracy of the best"
    return f"within {RELATIVE_TOLERANCE:.0%} of the best"


def _reaches(metric: Metric, value: float, bound: float) -> bool:
    return value >= bound if metric.higher_is_better else value <= bound


def _who(frames: SweepFrames, row: pd.Series) -> str:
    what = frames.describe(row)
    runs = frames.run_numbers(row)
    label = f"run {runs}" if len(row["indices"]) == 1 else f"runs {runs}"
    return f"{label} ({what})" if what else label


def _ok(configs: pd.DataFrame) -> pd.DataFrame:
    return configs[configs["status"] == "ok"]


def _timing_trusted(frames: SweepFrames, configs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The configurations whose timing no other work on the machine disturbed (every seed), and
    a sentence naming those left out ("" when none): time answers rank the others only.  Runs
    trained in a stack (train.stack) share the stack's wall-clock: where some runs trained
    alone, those rank and the stacked ones are left out; never the two as if alike."""
    configs, stacked_why = _solo_or_stacked(frames, configs)
    configs, why = _undisturbed(frames, configs)
    return configs, " ".join(w for w in (why, stacked_why) if w)


def _solo_or_stacked(frames: SweepFrames, configs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if "stacked" not in configs.columns:
        return configs, ""
    stacked = pd.to_numeric(configs["stacked"], errors="coerce").fillna(0) > 1
    if not stacked.any():
        return configs, ""
    if stacked.all():
        return configs, ("Every run trained in a stack (train.stack): their times are their "
                         "stacks' shared wall-clock, comparable with stacked runs only.")
    names = ", ".join(frames.run_numbers(r) for _, r in configs[stacked].iterrows())
    return configs[~stacked], (
        f"Left out: run{'s' if stacked.sum() > 1 or ',' in names else ''} {names}, trained in "
        "a stack (train.stack): their times are the stack's, shared with its other runs, not "
        "comparable with runs trained alone.")


def _undisturbed(frames: SweepFrames, configs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if "disturbed_epochs" not in configs.columns:
        return configs, ""
    counts = pd.to_numeric(configs["disturbed_epochs"], errors="coerce")
    bad = counts.notna() & (counts > 0)
    if not bad.any():
        return configs, ""
    names = ", ".join(frames.run_numbers(r) for _, r in configs[bad].iterrows())
    why = (f"Left out: run{'s' if bad.sum() > 1 or ',' in names else ''} {names}, whose timing "
           "other work on the machine disturbed (perf/disturbed; see the table's †): their "
           "times are not the model's alone.")
    return configs[~bad], why


def _undecided(key: str, question: str, why: str) -> Answer:
    return Answer(key, question, "Could not decide: no finished run has timing to trust. "
                  + why + " Rerun them on a quiet machine (or with train.threads=1).")


def time_to_target(frames: SweepFrames, configs: pd.DataFrame,
                   target: float | None = None) -> Answer:
    m = frames.metric
    a = m.abbrev
    question = "Which configuration is best if wall-clock time matters most?"
    ok = _ok(configs)
    best = m.best_of(ok[f"valid_{m.name}"])
    if not math.isfinite(best):
        return Answer("wall_clock", question, "No finished run has a validation value.")
    ok, left_out = _timing_trusted(frames, ok)
    if ok.empty:
        return _undecided("wall_clock", question, left_out)
    bound = target if target is not None else tolerance_bound(m, best)
    why = ("the target you gave" if target is not None else
           f"{_tolerance_text(m)}, {format_number(best)}")
    rows: list[dict[str, Any]] = []
    for _, row in ok.iterrows():
        xs, ys, _, _ = curves(frames, row["run_ids"], f"valid/{m.name}", "time/train")
        epochs, _, _, _ = curves(frames, row["run_ids"], f"valid/{m.name}", "epoch")
        hit = next((i for i, y in enumerate(ys) if _reaches(m, y, bound)), None)
        rows.append({"run": frames.run_numbers(row), "config": frames.describe(row),
                     "epoch": int(epochs[hit]) if hit is not None else None,
                     "seconds": float(xs[hit]) if hit is not None else None,
                     f"best valid {a}": row[f"valid_{m.name}"], "_row": row})
    reached = sorted((r for r in rows if r["seconds"] is not None), key=lambda r: r["seconds"])
    cmp = "≥" if m.higher_is_better else "≤"
    evidence = [{k: v for k, v in r.items() if k != "_row"} for r in
                reached + [r for r in rows if r["seconds"] is None]]
    columns = ["run", "config", "epoch", "seconds", f"best valid {a}"]
    if not reached:
        return Answer("wall_clock", question, f"No run reaches valid {a} {cmp} "
                      f"{format_number(bound)} ({why}).{' ' + left_out if left_out else ''}",
                      columns, evidence)
    win = reached[0]
    tied = [r for r in reached[1:] if math.isclose(r["seconds"], win["seconds"], rel_tol=1e-9)]
    text = (f"{_who(frames, win['_row']).capitalize()}: it is the first to reach validation "
            f"{a} {cmp} {format_number(bound)} ({why}), after {win['seconds']:.1f} s of training"
            f" (epoch {win['epoch']})")
    if tied:
        text += ", tied with " + ", ".join(f"run {r['run']} (epoch {r['epoch']})" for r in tied)
    text += "."
    rest = reached[1 + len(tied):]
    if rest:
        nxt = rest[0]
        text += (f" Next: run {nxt['run']} at {nxt['seconds']:.1f} s (epoch {nxt['epoch']}).")
    missing = len(rows) - len(reached)
    if missing:
        text += f" {missing} of {len(rows)} configurations never reach it."
    text += (" Times are cumulative training seconds (evaluation excluded) at the end of the "
             "epoch where the target is first met, so they have epoch granularity.")
    if left_out:
        text += " " + left_out
    return Answer("wall_clock", question, text, columns, evidence,
                  [win["run"]] + [r["run"] for r in tied])


def time_budget(frames: SweepFrames, configs: pd.DataFrame) -> Answer:
    m = frames.metric
    a = m.abbrev
    question = "Which configuration gives the best result for an equal amount of training time?"
    ok, left_out = _timing_trusted(frames, _ok(configs))
    if ok.empty and left_out:
        return _undecided("time_budget", question, left_out)
    totals = [t for t in ok["train_time"] if math.isfinite(t)]
    if not totals:
        return Answer("time_budget", question, "No finished run recorded its training time.")
    budget = min(totals)
    rows: list[dict[str, Any]] = []
    for _, row in ok.iterrows():
        xs, ys, _, _ = curves(frames, row["run_ids"], f"valid/{m.name}", "time/train")
        inside = [y for x, y in zip(xs, ys) if x <= budget * (1 + 1e-9)]
        rows.append({"run": frames.run_numbers(row), "config": frames.describe(row),
                     f"best valid {a} within budget": m.best_of(inside) if inside else None,
                     "validations within budget": len(inside), "_row": row})
    scored = [r for r in rows if r[f"best valid {a} within budget"] is not None]
    scored.sort(key=lambda r: r[f"best valid {a} within budget"],
                reverse=m.higher_is_better)
    evidence = [{k: v for k, v in r.items() if k != "_row"} for r in
                scored + [r for r in rows if r not in scored]]
    columns = ["run", "config", f"best valid {a} within budget", "validations within budget"]
    win = scored[0]
    text = (f"With the same {budget:.1f} s of training for every configuration (the shortest "
            f"run's total), {_who(frames, win['_row'])} is best: validation {a} "
            f"{format_number(win[f'best valid {a} within budget'])}.")
    if len(scored) > 1:
        nxt = scored[1]
        text += (f" Runner-up: run {nxt['run']} with "
                 f"{format_number(nxt[f'best valid {a} within budget'])}.")
    if left_out:
        text += " " + left_out
    return Answer("time_budget", question, text, columns, evidence, [win["run"]])


def _gap(m: Metric, train: float, valid: float) -> float:
    if m.name == "perplexity":
        return valid / train if train > 0 else math.nan
    return train - valid if m.higher_is_better else valid - train


def _gap_size(m: Metric, gap: float) -> float:
    """How far apart train and validation are, whichever is ahead (a ratio's log for PPL)."""
    if not math.isfinite(gap) or (m.name == "perplexity" and gap <= 0):
        return math.inf
    return abs(math.log(gap)) if m.name == "perplexity" else abs(gap)


def generalization(frames: SweepFrames, configs: pd.DataFrame) -> Answer:
    m = frames.metric
    a = m.abbrev
    question = "Which configuration generalizes best?"
    ok = _ok(configs)
    best = m.best_of(ok[f"valid_{m.name}"])
    if not math.isfinite(best):
        return Answer("generalization", question, "No finished run has a validation value.")
    bound = tolerance_bound(m, best)
    gap_name = (f"gap (valid {a} / train {a})" if m.name == "perplexity"
                else f"gap (train {a} - valid {a})" if m.higher_is_better
                else f"gap (valid {a} - train {a})")
    rows: list[dict[str, Any]] = []
    for _, row in ok.iterrows():
        train, valid = row[f"train_{m.name}"], row[f"valid_{m.name}"]
        rows.append({"run": frames.run_numbers(row), "config": frames.describe(row),
                     f"train {a}": train, f"valid {a}": valid, gap_name: _gap(m, train, valid),
                     "within tolerance": bool(math.isfinite(valid) and _reaches(m, valid, bound)),
                     "_row": row})
    rows.sort(key=lambda r: (not r["within tolerance"], _gap_size(m, r[gap_name])))
    evidence = [{k: v for k, v in r.items() if k != "_row"} for r in rows]
    columns = ["run", "config", f"train {a}", f"valid {a}", gap_name, "within tolerance"]
    win = next((r for r in rows if r["within tolerance"] and math.isfinite(r[gap_name])), None)
    if win is None:
        return Answer("generalization", question, "No finished run has train and validation "
                      "values at its best epoch.", columns, evidence)
    gap_text = (f"{win[gap_name]:.2f}x" if m.name == "perplexity"
                else format_number(win[gap_name]))
    text = (f"{_who(frames, win['_row']).capitalize()}: the smallest train/validation gap "
            "in either direction "
            f"({gap_text}: train {a} {format_number(win[f'train {a}'])}, validation "
            f"{format_number(win[f'valid {a}'])} at its best epoch) among the configurations "
            f"whose validation {a} is {_tolerance_text(m)} ({format_number(best)}; bound "
            f"{format_number(bound)}).")
    close = [r for r in rows if r is not win and r["within tolerance"]
             and _gap_size(m, r[gap_name]) <= 1.05 * _gap_size(m, win[gap_name])]
    if close:
        many = len(close) > 1
        text += (f" Run{'s' if many else ''} {', '.join(r['run'] for r in close)} "
                 f"come{'' if many else 's'} within 5 % of that gap"
                 + (": with one seed, treat them as equal." if not frames.seeded else "."))
    smaller = [r for r in rows if not r["within tolerance"]
               and _gap_size(m, r[gap_name]) < _gap_size(m, win[gap_name])]
    if smaller:
        text += (f" Runs {', '.join(r['run'] for r in smaller)} have smaller gaps but much worse "
                 f"validation {a} (they underfit rather than generalize).")
    text += (f" Train {a} is the running average over the best epoch in training mode, so gaps "
             "compare runs rather than measure the true generalization error.")
    return Answer("generalization", question, text, columns, evidence, [win["run"]])


def pareto(frames: SweepFrames, configs: pd.DataFrame, cost: str) -> Answer:
    m = frames.metric
    a = m.abbrev
    what = "training time" if cost == "train_time" else "peak memory"
    unit = "s" if cost == "train_time" else "MiB"
    key = "pareto_time" if cost == "train_time" else "pareto_memory"
    question = f"Which configurations trade validation {a} against {what} best (Pareto front)?"
    ok, left_out = _ok(configs), ""
    if cost == "peak_memory_bytes":
        cost = memory_cost(configs)
    if cost == "train_time":  # memory is not disturbed by other processes; time is
        ok, left_out = _timing_trusted(frames, ok)
        if ok.empty and left_out:
            return _undecided(key, question, left_out)
    ok = ok.reset_index(drop=True)
    costs = [float(c) if cost == "train_time" else mib(float(c)) for c in ok[cost]]
    values = [float(v) for v in ok[f"valid_{m.name}"]]
    # Differences within the measurement's noise are ties, not a front (analysis/pareto.py).
    fronted = noisy_front(costs, values, m.higher_is_better, cost_noise(frames, ok, cost),
                          value_noise(ok, m.name))
    front, ties = fronted.front, fronted.ties
    evidence = [{"run": frames.run_numbers(r), "config": frames.describe(r),
                 f"{what} ({unit})": costs[i], f"best valid {a}": values[i],
                 "on front": i in front,
                 "tie with": frames.run_numbers(ok.iloc[ties[i]]) if i in ties else None}
                for i, r in ok.iterrows()]
    evidence.sort(key=lambda e: (not e["on front"], e[f"{what} ({unit})"]))
    columns = ["run", "config", f"{what} ({unit})", f"best valid {a}", "on front", "tie with"]
    if not front:
        return Answer(key, question, f"No finished run recorded its {what}.", columns, evidence)
    steps = "; ".join(f"run {frames.run_numbers(ok.iloc[i])} ({frames.describe(ok.iloc[i])}): "
                      f"{costs[i]:,.1f} {unit}, {a} {format_number(values[i])}" for i in front)
    text = (f"{len(front)} of {len(ok)} configurations are on the front (none of the others is "
            f"both cheaper in {what} and better in validation {a}), from cheapest to best: "
            f"{steps}.")
    if ties:
        tied = "; ".join(f"run {frames.run_numbers(ok.iloc[i])} with run "
                         f"{frames.run_numbers(ok.iloc[f])}" for i, f in ties.items())
        text += (f" Ties (marked tie in the figure, left off the front): {tied}; "
                 + noise_text(cost)
                 + ", and validation differences within the spread over seeds.")
    if cost != "train_time":
        text += " " + _memory_caveat(frames, cost)
    if left_out:
        text += " " + left_out
    return Answer(key, question, text, columns, evidence,
                  [frames.run_numbers(ok.iloc[i]) for i in front], figure=key)


def memory_cost(configs: pd.DataFrame) -> str:
    """The memory a Pareto front weighs: the peak of the run's own tensors
    (memory/tensor_peak_bytes) where every finished configuration recorded it, else the
    process peak (RSS on CPU, the allocator's peak on CUDA) of older runs."""
    ok = _ok(configs)
    if "tensor_peak_bytes" in ok.columns and len(ok) and pd.to_numeric(
            ok["tensor_peak_bytes"], errors="coerce").notna().all():
        return "tensor_peak_bytes"
    return "peak_memory_bytes"


def _memory_caveat(frames: SweepFrames, column: str = "peak_memory_bytes") -> str:
    if column == "tensor_peak_bytes":
        return ("Memory is the peak of the run's own tensors (weights, gradients, optimizer "
                "state, activations, batches: memory/tensor_peak_bytes), not the process's.")
    devices = {str((s or {}).get("device", "")) for s in frames.runs["summary"]}
    if any(d.startswith("cuda") for d in devices):
        return "Memory is the CUDA allocator's peak."
    return ("Memory is the process's peak resident set size on CPU, which includes Python and "
            "torch themselves, so differences between small models are small.")


def overfit_spans(train: Sequence[float], valid: Sequence[float], epochs: Sequence[int],
                  higher_is_better: bool, k: int) -> list[tuple[int, int]]:
    """(first, last) epochs of each stretch of at least ``k`` epochs in a row in which the
    validation metric got worse at every epoch while the training metric got better."""
    sign = 1.0 if higher_is_better else -1.0
    spans, start = [], None
    for i in range(1, len(valid)):
        worse = sign * (valid[i] - valid[i - 1]) < 0
        better = sign * (train[i] - train[i - 1]) > 0
        if worse and better:
            start = i - 1 if start is None else start
            if i == len(valid) - 1 and i - start >= k:
                spans.append((int(epochs[start]), int(epochs[i])))
        else:
            if start is not None and i - 1 - start >= k:
                spans.append((int(epochs[start]), int(epochs[i - 1])))
            start = None
    return spans


def collapse(valid: Sequence[float], epochs: Sequence[int], higher_is_better: bool
             ) -> tuple[int, int, float, float] | None:
    """(best epoch, epoch of the collapse, best value, worst value after it) when the validation
    metric, after improving, fell back to worse than its first epoch: the run lost everything
    it had learned (accuracy 0.93 -> 0.08 is a collapse to chance, not overfitting).  None
    otherwise."""
    finite = [(e, v) for e, v in zip(epochs, valid) if math.isfinite(v)]
    if len(finite) < 2:
        return None
    first = finite[0][1]
    pick = max if higher_is_better else min
    best_epoch, best = pick(finite, key=lambda ev: ev[1])
    if best == first:
        return None
    after = [(e, v) for e, v in finite if e > best_epoch]
    for e, v in after:
        if v < first if higher_is_better else v > first:
            worst = min(v for _, v in after) if higher_is_better else max(v for _, v in after)
            return best_epoch, e, best, worst
    return None


def collapsed_runs(frames: SweepFrames) -> dict[str, dict[str, Any]]:
    """Runs (by id) whose validation metric collapsed (see :func:`collapse`)."""
    m = frames.metric
    out: dict[str, dict[str, Any]] = {}
    for _, r in frames.runs.iterrows():
        epochs, valid, _, _ = curves(frames, [r["run_id"]], f"valid/{m.name}", "epoch")
        found = collapse([float(v) for v in valid], [int(e) for e in epochs], m.higher_is_better)
        if found:
            best_epoch, epoch, best, then = found
            out[r["run_id"]] = {
                "index": r["index"], "config": frames.describe(r), "epoch": epoch,
                "message": f"validation {m.abbrev} {format_number(best)} (epoch "
                           f"{best_epoch}) -> {format_number(then)}, worse than its first epoch "
                           f"from epoch {epoch} (unstable training: lower the LR, warm up, or "
                           "clip gradients)"}
    return out


def overfitting(frames: SweepFrames, configs: pd.DataFrame, k: int = 2) -> Answer:
    m = frames.metric
    a = m.abbrev
    question = f"Which runs overfit (validation {a} worse for {k}+ epochs while train improves)?"
    rows: list[dict[str, Any]] = []
    collapsed = collapsed_runs(frames)
    for _, row in configs.iterrows():
        if any(run_id in collapsed for run_id in row["run_ids"]):
            continue  # unstable, not overfitting: the divergence answer names it
        epochs, train, _, _ = curves(frames, row["run_ids"], f"train/{m.name}", "epoch")
        ev, valid, _, _ = curves(frames, row["run_ids"], f"valid/{m.name}", "epoch")
        common = sorted(set(epochs.tolist()) & set(ev.tolist()))
        tr = [float(train[list(epochs).index(e)]) for e in common]
        va = [float(valid[list(ev).index(e)]) for e in common]
        for first, last in overfit_spans(tr, va, common, m.higher_is_better, k):
            i, j = common.index(first), common.index(last)
            rows.append({"run": frames.run_numbers(row), "config": frames.describe(row),
                         "from epoch": first, "to epoch": last,
                         f"valid {a}": f"{format_number(va[i])} -> {format_number(va[j])}",
                         f"train {a}": f"{format_number(tr[i])} -> {format_number(tr[j])}"})
    columns = ["run", "config", "from epoch", "to epoch", f"valid {a}", f"train {a}"]
    unstable = ("" if not collapsed else " Left out: run " + ", ".join(
        str(c["index"]) for c in collapsed.values()) + ", which collapsed (unstable training, "
        "not overfitting; see the divergence answer).")
    if not rows:
        return Answer("overfitting", question, f"None: no configuration's validation {a} got "
                      f"worse for {k} epochs in a row while its train {a} improved."
                      + unstable, columns)
    flagged = [str(r) for r in dict.fromkeys(r["run"] for r in rows)]
    text = (f"{len(flagged)} of {len(configs)} configurations overfit: "
            + "; ".join(f"run {r['run']} ({r['config']}) from epoch {r['from epoch']} to "
                        f"{r['to epoch']}, validation {a} {r[f'valid {a}']} while train "
                        f"{a} {r[f'train {a}']}" for r in rows[:6])
            + ("; ..." if len(rows) > 6 else "") + ".")
    text += (" The test column uses each run's best-validation checkpoint, not its last epoch; "
             "more data, dropout or weight decay, or early stopping would help." + unstable)
    return Answer("overfitting", question, text, columns, rows, flagged)


def input_pipeline(frames: SweepFrames, configs: pd.DataFrame) -> list[Answer]:
    """Which configurations waited for data (input-bound), and which one waited least.

    Asked only where some run loaded a Dataset's items through a DataLoader or waited for its
    batches noticeably: tensors in memory wait microseconds, and the question is moot.
    """
    runs = frames.runs
    if "data_wait_frac" not in configs.columns or not (
            runs["loader"].notna().any()
            or (pd.to_numeric(runs["data_wait_frac"], errors="coerce") > NO_WAIT).any()):
        return []
    question = "Was training waiting for data, and what removed the wait?"
    ok = _ok(configs)
    ok = ok[pd.to_numeric(ok["data_wait_frac"], errors="coerce").notna()]
    columns = ["run", "config", "data wait (%)", "throughput (ex/s)"]
    if ok.empty:
        return [Answer("input_pipeline", question,
                       "No finished run recorded how long it waited for data.", columns)]
    ranked = ok.sort_values("data_wait_frac", kind="stable")
    evidence = [{"run": frames.run_numbers(r), "config": frames.describe(r),
                 "data wait (%)": 100 * r["data_wait_frac"],
                 "throughput (ex/s)": r["samples_per_s"]} for _, r in ranked.iterrows()]
    bound = ranked[ranked["data_wait_frac"] >= INPUT_BOUND]
    least = ranked.iloc[0]
    if bound.empty:
        worst = ranked.iloc[-1]
        text = (f"No: no configuration was input-bound; the longest wait for data was "
                f"{100 * worst['data_wait_frac']:.0f} % of the training time "
                f"({_who(frames, worst)}).")
        return [Answer("input_pipeline", question, text, columns, evidence,
                       [frames.run_numbers(worst)])]
    names = "; ".join(f"{_who(frames, r)} waited {100 * r['data_wait_frac']:.0f} %"
                      for _, r in bound.iloc[::-1].iterrows())
    text = (f"Yes: input-bound (waiting for the next batch {100 * INPUT_BOUND:.0f} % or more of "
            f"the training time): {names}.")
    named = [frames.run_numbers(r) for _, r in bound.iloc[::-1].iterrows()]
    if least["data_wait_frac"] < INPUT_BOUND:
        worst = bound.iloc[-1]
        speedup = least["samples_per_s"] / worst["samples_per_s"]
        gain = (f", at {speedup:.2f}x the throughput of the slowest"
                if math.isfinite(speedup) else "")
        text += (f" Least wait: {_who(frames, least)}, "
                 f"{100 * least['data_wait_frac']:.0f} %{gain}.")
        named.append(frames.run_numbers(least))
    else:
        rates = pd.to_numeric(ranked["samples_per_s"], errors="coerce")
        if rates.notna().sum() > 1 and rates.max() > rates.min():
            fast, slow = ranked.loc[rates.idxmax()], ranked.loc[rates.idxmin()]
            text += (f" Fastest nonetheless: {_who(frames, fast)}, at "
                     f"{fast['samples_per_s'] / slow['samples_per_s']:.2f}x the throughput of "
                     f"the slowest.")
            named.append(frames.run_numbers(fast))
        text += (" Every configuration waited: more data.loader.workers (up to the cores), "
                 "a faster Dataset __getitem__, or data.cache: true for data that fits in memory "
                 "would help.")
    return [Answer("input_pipeline", question, text, columns, evidence, named)]


LR_KEY = "optimizer.lr"


def best_lr_per_setting(frames: SweepFrames, configs: pd.DataFrame) -> list[Answer]:
    """The best learning rate for each setting of the other varied keys (each schedule, each
    optimizer): what an LR sweep across schedules is run to learn.  Asked only where the
    sweep varies ``optimizer.lr`` and something else."""
    others = [k for k in frames.keys if k != LR_KEY]
    if LR_KEY not in frames.keys or not others:
        return []
    m = frames.metric
    a = m.abbrev
    what = ", ".join(frames.label(k) for k in others)
    question = f"Which learning rate is best for each {what}?"
    ok = _ok(configs)
    ok = ok[pd.to_numeric(ok[f"valid_{m.name}"], errors="coerce").notna()]
    columns = [what, "best lr", f"best valid {a}", "run", "lrs tried"]
    if ok.empty:
        return [Answer("best_lr", question, "No finished run recorded a validation "
                       f"{a}.", columns)]
    evidence, parts, named = [], [], []
    for _, group in ok.groupby(others, sort=False, dropna=False):
        values = list(group[f"valid_{m.name}"])
        best = group.iloc[values.index(m.best_of(values))]
        label = frames.describe(best, others)
        lrs = sorted(float(v) for v in group[LR_KEY])
        evidence.append({what: label, "best lr": best[LR_KEY],
                         f"best valid {a}": best[f"valid_{m.name}"],
                         "run": frames.run_numbers(best),
                         "lrs tried": ", ".join(f"{v:g}" for v in lrs)})
        edge = (" (the edge of the LRs tried: try beyond it)"
                if len(lrs) > 2 and float(best[LR_KEY]) in (lrs[0], lrs[-1]) else "")
        parts.append(f"{label}: lr {float(best[LR_KEY]):g} (run {frames.run_numbers(best)}, "
                     f"{a} {format_number(best[f'valid_{m.name}'])}){edge}")
        named.append(frames.run_numbers(best))
    text = "Best validation " + a + " per setting: " + "; ".join(parts) + "."
    return [Answer("best_lr", question, text, columns, evidence, named)]


def divergence(frames: SweepFrames) -> Answer:
    question = "Did any run diverge, collapse or fail?"
    rows = [{"run": str(r["index"]), "config": frames.describe(r), "status": r["status"],
             "epochs done": r["epochs_done"], "message": r["error"] or ""}
            for _, r in frames.runs.iterrows() if r["status"] != "ok"]
    # Finished runs whose validation metric fell back below where it started: unstable.
    done = {int(r["index"]): r["epochs_done"] for _, r in frames.runs.iterrows()}
    rows += [{"run": str(c["index"]), "config": c["config"], "status": "collapsed",
              "epochs done": done.get(int(c["index"]), 0), "message": c["message"]}
             for c in collapsed_runs(frames).values()
             if frames.runs.loc[frames.runs["index"] == c["index"], "status"].eq("ok").all()]
    rows += [{"run": str(s["index"]), "config": "", "status": s["status"], "epochs done": 0,
              "message": s["error"] or "no epoch recorded"} for s in frames.skipped]
    columns = ["run", "config", "status", "epochs done", "message"]
    total = len(frames.runs) + len(frames.skipped)
    if not rows:
        return Answer("divergence", question, f"No: all {total} runs finished normally.",
                      columns)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    detail = "; ".join(f"run {r['run']} {r['status']}" + (f": {r['message']}" if r["message"]
                                                         else "") for r in rows[:5])
    text = (f"{parts} of {total} runs: {detail}." + (" ..." if len(rows) > 5 else "")
            + (" Diverged and failed runs are left out of every other answer and of the bold "
               "marks." if any(r["status"] != "collapsed" for r in rows) else "")
            + (" A collapsed run finished, but its validation metric fell back below its "
               "first epoch's: instability (too high an LR, no warm-up), not overfitting."
               if any(r["status"] == "collapsed" for r in rows) else ""))
    return Answer("divergence", question, text, columns, rows,
                  [r["run"] for r in rows])


__all__ = ["ACCURACY_TOLERANCE", "INPUT_BOUND", "LR_KEY", "RELATIVE_TOLERANCE", "Answer",
           "answer_all", "best_lr_per_setting", "collapse", "collapsed_runs", "config_frame",
           "generalization", "input_pipeline",
           "memory_cost", "overfit_spans", "overfitting", "pareto", "pareto_front",
           "time_budget", "time_to_target", "tolerance_bound"]
