"""The report of a search (a sweep with ``search:``): its trials, the best so far against
trials and against compute, parameter importances, a parallel-coordinates figure, and the
chosen configuration with its evidence.

It reads the store's rows only (the trials are runs whose overrides hold the searched keys);
Optuna is needed for the importances alone, and their absence is a note, not an error.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from trainlab.analysis.fmt import format_sig
from trainlab.analysis.frames import SweepFrames
from trainlab.analysis.plots import Figure, use_agg
from trainlab.analysis.tables import Column, Table

_LOWER = ("loss", "perplexity", "rmse")


@dataclass
class TrialRow:
    study: str
    number: int
    params: dict[str, Any]
    state: str  # complete | pruned | failed | running
    value: float | None
    values: list[float] = field(default_factory=list)  # per seed
    compute: float = 0.0  # seconds, training and validation, summed over its runs
    epochs: int = 0


@dataclass
class SearchView:
    metric: str
    direction: str
    keys: list[str]
    trials: list[TrialRow]
    notes: list[str] = field(default_factory=list)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b

    def best(self, study: str | None = None) -> TrialRow | None:
        done = [t for t in self.trials if t.state == "complete" and t.value is not None
                and (study is None or t.study == study)]
        best: TrialRow | None = None
        for t in done:
            if best is None or self.better(t.value, best.value):  # type: ignore[arg-type]
                best = t
        return best

    @property
    def studies(self) -> list[str]:
        return list(dict.fromkeys(t.study for t in self.trials))


def search_layout(frames: SweepFrames) -> tuple[list[str], str | None, list[str]] | None:
    """(facet, panel, hue) for a search's curves: the searched keys colour the lines of one
    panel per grid point (a figure per trial would be a figure per sampled value); None for a
    sweep without ``search:``."""
    raw = (frames.config or {}).get("search")
    if not isinstance(raw, dict) or not isinstance(raw.get("space"), dict):
        return None
    hue = [k for k in frames.keys if k in raw["space"]]
    fixed = [k for k in frames.keys if k not in raw["space"]]
    return fixed[1:], (fixed[0] if fixed else None), hue


def search_view(frames: SweepFrames, store: Any) -> SearchView | None:
    """The sweep's trials, read from ``store``; None for a sweep without ``search:``."""
    raw = (frames.config or {}).get("search")
    if not isinstance(raw, dict) or not isinstance(raw.get("space"), dict):
        return None
    keys = list(raw["space"])
    metric = raw.get("metric") or "valid/loss"
    direction = raw.get("direction") or (
        "minimize" if metric.rsplit("/", 1)[-1] in _LOWER else "maximize")
    runs: pd.DataFrame = store.runs(frames.name)
    # The metric's rows give its values and, with their times, each run's compute up to its
    # last validation (training and evaluation seconds since the run started).
    long: pd.DataFrame = store.metrics(list(runs["run_id"]), keys=[metric])
    groups: dict[tuple[str, str], list[Any]] = {}
    for run in runs.to_dict(orient="records"):
        overrides = run.get("overrides") or {}
        if not all(k in overrides for k in keys):
            continue
        point = ", ".join(f"{k}={v}" for k, v in overrides.items()
                          if k not in keys and k != "train.seed") or "all"
        params = {k: overrides[k] for k in keys}
        groups.setdefault((point, repr(sorted(params.items()))), []).append(run)
    trials: list[TrialRow] = []
    numbers: dict[str, int] = {}
    ordered = sorted(groups.items(), key=lambda kv: min(int(r["index"] or 0) for r in kv[1]))
    for (point, _), members in ordered:
        numbers[point] = numbers.get(point, 0) + 1
        params = {k: (members[0].get("overrides") or {})[k] for k in keys}
        statuses = {str(r["status"]) for r in members}
        per_run, compute, epochs = [], 0.0, 0
        for r in members:
            mine = long[(long["run_id"] == r["run_id"])]
            values = mine[mine["key"] == metric]["value"].dropna()
            if len(values):
                per_run.append(float(values.min() if direction == "minimize" else values.max()))
            compute += float(mine["time"].max()) if len(mine) else 0.0
            epochs = max(epochs, int(mine["epoch"].max()) if len(mine) else 0)
        state = ("pruned" if "pruned" in statuses else "complete" if statuses == {"ok"}
                 else "failed" if statuses & {"failed", "diverged", "oom"} else "running")
        value = statistics.fmean(per_run) if state == "complete" and len(per_run) == len(
            members) else None
        trials.append(TrialRow(point, numbers[point], params, state, value, per_run, compute,
                               epochs))
    return SearchView(metric, direction, keys, trials)


def trials_table(view: SearchView) -> Table:
    from trainlab.config.keys import short_names

    labels = short_names(view.keys)
    best = {s: view.best(s) for s in view.studies}
    columns = [Column("study", "study", "text"), Column("trial", "trial", "int"),
               *[Column(k, labels[k], "text") for k in view.keys],
               Column("state", "state", "text"), Column("value", view.metric, "metric"),
               Column("epochs", "epochs", "int"), Column("compute", "compute s", "seconds")]
    rows = [{"study": t.study, "trial": t.number,
             **{k: format_sig(v) if isinstance(v, float) else str(v)
                for k, v in t.params.items()},
             "state": t.state, "value": t.value, "epochs": t.epochs, "compute": t.compute}
            for t in view.trials]
    marks = [("best" if best.get(t.study) is t else None) for t in view.trials]
    caption = (f"Every trial of the search in the order it was asked, by study (grid point). "
               f"Value: the best {view.metric} over its epochs (the mean over seeds); pruned "
               "trials stopped early at the epoch shown and have no value; compute: training "
               "and validation seconds over the trial's runs. The best trial of each study is "
               "marked.")
    return Table("search-trials", "Search trials", columns, rows, marks,  # type: ignore[arg-type]
                 [t.study for t in view.trials], caption, notes=chosen_notes(view))


def chosen_notes(view: SearchView) -> list[str]:
    """The chosen configuration of each study and the evidence for it."""
    notes = []
    for study in view.studies:
        best = view.best(study)
        if best is None:
            notes.append(f"{study}: no trial finished yet.")
            continue
        mine = [t for t in view.trials if t.study == study]
        done = [t for t in mine if t.state == "complete"]
        text = (f"{study}: chosen " + ", ".join(f"{k}={format_sig(v)}" for k, v in
                                                best.params.items())
                + f" ({view.metric} {format_sig(best.value)}, trial {best.number} of "
                f"{len(mine)}; {len(done)} complete, "
                f"{sum(t.state == 'pruned' for t in mine)} pruned).")
        sign = 1.0 if view.direction == "minimize" else -1.0
        others = sorted((t for t in done if t is not best and t.value is not None),
                        key=lambda t: sign * float(t.value or 0.0))
        if others and len(best.values) > 1:
            second = others[0]
            noise = max(statistics.stdev(best.values),
                        statistics.stdev(second.values) if len(second.values) > 1 else 0.0)
            gap = abs((best.value or 0.0) - (second.value or 0.0))
            verdict = "beyond" if gap > noise else "within"
            text += (f" Over the runner-up (trial {second.number}) it gains "
                     f"{format_sig(gap)}, {verdict} the seed noise (std {format_sig(noise)}).")
        elif others:
            text += (f" Runner-up: trial {others[0].number} at {format_sig(others[0].value)} "
                     "(one seed per trial: add seeds: to tell a gain from noise).")
        notes.append(text)
    return notes


def search_figures(view: SearchView) -> list[Figure]:
    use_agg()
    figures = [_progress_figure(view)]
    parallel = _parallel_figure(view)
    if parallel is not None:
        figures.append(parallel)
    importance = _importance_figure(view)
    if importance is not None:
        figures.append(importance)
    return figures


def _progress_figure(view: SearchView) -> Figure:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for colour, study in enumerate(view.studies):
        mine = [t for t in view.trials if t.study == study]
        best: float | None = None
        xs_n: list[float] = []
        xs_t: list[float] = []
        ys: list[float] = []
        spent = 0.0
        for t in mine:
            spent += t.compute
            if t.value is not None and (best is None or view.better(t.value, best)):
                best = t.value
            xs_n.append(t.number)
            xs_t.append(spent)
            ys.append(best if best is not None else math.nan)
        for ax, xs in zip(axes, (xs_n, xs_t)):
            ax.step(xs, ys, where="post", color=f"C{colour}", label=study)
            done = [(x, t.value) for x, t in zip(xs, mine) if t.value is not None]
            ax.scatter([d[0] for d in done], [d[1] for d in done], s=12, color=f"C{colour}",
                       alpha=0.5)
            pruned = [x for x, t in zip(xs, mine) if t.state == "pruned"]
            if pruned:
                low = ax.get_ylim()[0]
                ax.scatter(pruned, [low] * len(pruned), marker="x", color="0.5", s=14)
    axes[0].set_xlabel("trial")
    axes[1].set_xlabel("cumulative compute (s)")
    for ax in axes:
        ax.set_ylabel(f"best {view.metric} so far")
        ax.grid(alpha=0.3)
    if len(view.studies) > 1:
        axes[0].legend(fontsize=7)
    caption = (f"Best {view.metric} so far ({view.direction}) against the trial number (left) "
               "and against the compute spent (right: training and validation seconds of "
               "every trial so far, pruned ones included); dots: each complete trial's value; "
               "x: pruned trials.")
    return Figure("search-progress", "Search: best so far", caption, fig, "search")


def _axis_values(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """A parameter's values on [0, 1] (log scale for positive ranges spanning 10x); category
    labels for a choice."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        nums = [float(v) for v in values]
        low, high = min(nums), max(nums)
        if low > 0 and high / low >= 10:
            nums, low, high = [math.log10(v) for v in nums], math.log10(low), math.log10(high)
        span = (high - low) or 1.0
        return [(v - low) / span for v in nums], None
    labels = sorted({str(v) for v in values})
    step = 1 / max(len(labels) - 1, 1)
    return [labels.index(str(v)) * step for v in values], labels


def _parallel_figure(view: SearchView) -> Figure | None:
    import matplotlib.pyplot as plt

    trials = [t for t in view.trials if t.state in ("complete", "pruned")]
    if len(trials) < 2:
        return None
    axes_keys = [*view.keys, view.metric]
    columns = [_axis_values([t.params[k] for t in trials]) for k in view.keys]
    scored = [t.value for t in trials if t.value is not None]
    if scored:
        lo, hi = min(scored), max(scored)
        metric_pos = [((t.value - lo) / ((hi - lo) or 1.0)) if t.value is not None else 0.0
                      for t in trials]
    else:
        metric_pos = [0.0] * len(trials)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(axes_keys)), 3.8),
                           constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, t in enumerate(trials):
        ys = [col[0][i] for col in columns] + [metric_pos[i]]
        quality = metric_pos[i] if view.direction == "maximize" else 1 - metric_pos[i]
        if t.value is None:
            ax.plot(range(len(ys)), ys, color="0.75", lw=0.8, ls="--")
        else:
            ax.plot(range(len(ys)), ys, color=cmap(quality), lw=1.4, alpha=0.9)
    ax.set_xticks(range(len(axes_keys)), [k.split(".")[-1] for k in axes_keys])
    ax.set_yticks([])
    for x, (key, (_, labels)) in enumerate(zip(view.keys, columns)):
        ax.axvline(x, color="0.3", lw=0.6)
        if not labels:  # a number: its range at the axis' ends
            values = [float(t.params[key]) for t in trials]
            ax.text(x + 0.03, 0, format_sig(min(values)), fontsize=7, va="bottom")
            ax.text(x + 0.03, 1, format_sig(max(values)), fontsize=7, va="top")
        if labels:
            for j, label in enumerate(labels):
                ax.text(x + 0.03, j / max(len(labels) - 1, 1), label, fontsize=7, va="center")
    caption = ("Parallel coordinates: each line is a trial, each axis a searched key scaled to "
               "its range (log scale where it spans 10x or more), the last axis the trial's "
               f"{view.metric}; colour: yellow is better; grey dashed: pruned trials.")
    return Figure("search-parallel", "Search: parallel coordinates", caption, fig, "search")


def importances(view: SearchView, study: str) -> dict[str, float] | None:
    """Optuna's parameter importances of one study (None: too few trials, or no Optuna)."""
    done = [t for t in view.trials if t.study == study and t.state == "complete"
            and t.value is not None]
    if len(view.keys) < 2 or len(done) < 4:
        return None
    try:
        import optuna
    except ImportError:
        view.notes.append("parameter importances need Optuna: pip install 'trainlab[search]'")
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist = optuna.distributions
    dists: dict[str, Any] = {}
    for k in view.keys:
        values = [t.params[k] for t in done]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            low, high = float(min(values)), float(max(values))
            dists[k] = dist.FloatDistribution(low, high if high > low else low + 1.0,
                                              log=low > 0 and high / low >= 10)
        else:
            dists[k] = dist.CategoricalDistribution(sorted({str(v) for v in values}))
    study_ = optuna.create_study(
        direction="maximize" if view.direction == "maximize" else "minimize")
    for t in done:
        params = {k: (str(t.params[k]) if isinstance(dists[k], dist.CategoricalDistribution)
                      else float(t.params[k])) for k in view.keys}
        study_.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                   value=t.value))
    try:
        import sklearn  # noqa: F401  (fANOVA's trees)

        evaluator = None
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        return dict(optuna.importance.get_param_importances(study_, evaluator=evaluator))
    except (ValueError, RuntimeError) as exc:
        view.notes.append(f"parameter importances of {study}: not computed ({exc})")
        return None


def _importance_figure(view: SearchView) -> Figure | None:
    import matplotlib.pyplot as plt

    found = {s: imp for s in view.studies if (imp := importances(view, s))}
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 0.5 * len(view.keys)
                                                     + 1.4), constrained_layout=True,
                             squeeze=False)
    for ax, (study, imp) in zip(axes[0], found.items()):
        keys = list(imp)[::-1]
        ax.barh([k.split(".")[-1] for k in keys], [imp[k] for k in keys], color="C0")
        ax.set_xlim(0, 1)
        ax.set_title(study, fontsize=9)
        ax.set_xlabel("importance")
    caption = ("Parameter importances (Optuna's fANOVA over the complete trials; PED-ANOVA "
               "without scikit-learn): the share of the variance of "
               f"{view.metric} each searched key explains. Few trials make these rough.")
    return Figure("search-importance", "Search: parameter importances", caption, fig, "search")
