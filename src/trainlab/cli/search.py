"""`trainlab run` and `trainlab plan` on a sweep with ``search:`` (Optuna trials)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.table import Table

from trainlab.cli.common import (
    command_store,
    err,
    escape,
    fail,
    format_value,
    guard,
    headline,
    out,
)
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.config.schema import SweepConfig
    from trainlab.hooks import Callback, RunOutcome
    from trainlab.plan import Plan, PlannedRun
    from trainlab.search.driver import Search, Study


class _TrialLines:
    """One line per finished run of a trial (a search's batches are small: no bars)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def on_sweep_start(self, plan: Plan) -> None:
        pass

    def callbacks(self, planned: PlannedRun) -> Sequence[Callback]:
        return ()

    def on_run_end(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        if self.quiet:
            return
        colour = {"ok": "green", "pruned": "cyan", "interrupted": "yellow"}.get(
            outcome.status, "red")
        where = (f" at epoch {outcome.summary['pruned_epoch']}"
                 if outcome.status == "pruned" else "")
        values = ", ".join(f"{k.split('.')[-1]}={format_value(v)}"
                           for k, v in planned.varied.items())
        err.print(f"[{colour}]{outcome.status:>8}[/]{where} run {planned.index} "
                  f"{planned.run_id[:8]} {escape(values)}  {headline(outcome.summary)}",
                  highlight=False)


def run_search_command(ctx: typer.Context, sweep: SweepConfig, store: Path | None, *,
                       executor: str | None, jobs: int | None, ray_address: str | None,
                       cpus_per_run: float | None, gpus_per_run: float | None,
                       log: list[str] | None, quiet: bool, as_json: bool) -> NoReturn:
    """Train a search (see :mod:`trainlab.search.driver`) and print its trials."""
    from trainlab.execute import make_executor
    from trainlab.loggers import make_trackers
    from trainlab.search.driver import Search, run_search

    guard(lambda: Search(sweep, None).check())  # bad input creates no store
    trackers = guard(lambda: make_trackers(log or []))  # a missing package: exit 2
    chosen = guard(lambda: make_executor(executor, jobs=jobs, address=ray_address,
                                         cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run))
    st = command_store(ctx, store)
    if hasattr(chosen, "store_root"):  # Ray ships own code to a cluster, never the store
        chosen.store_root = st.root
    # Trials at once: --jobs, a Ray executor's own limit, else one per core on Ray, else 1.
    width = jobs or getattr(chosen, "jobs", None) or (
        _cores() if type(chosen).__name__ == "RayExecutor" else 1)
    from trainlab.engine.interrupt import graceful_sigint

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    try:
        with graceful_sigint():
            result = run_search(sweep, st, chosen, int(width),
                                observer=lambda plan: _TrialLines(quiet or as_json), warn=warn,
                                trackers=trackers)
    except ConfigError as exc:
        fail(escape(str(exc)))
    finally:
        chosen.close()
    search = Search(sweep, st)  # as stored now, every trial settled
    if as_json:
        out.print_json(data=search_json(search))
    else:
        print_studies(search)
        if result.interrupted:
            err.print("[yellow]interrupted:[/] state saved; rerun the same command to go on "
                      "with the search (finished trials are kept, unfinished ones resume).")
    raise typer.Exit(result.exit_code)


def plan_search_command(sweep: SweepConfig, store: Any, as_json: bool) -> None:
    """What a run of this search will do: method, trials, space, pruner, and what is done."""
    from trainlab.search.driver import Search

    search = guard(lambda: Search(sweep, store))
    guard(search.check)
    if as_json:
        out.print_json(data=search_json(search))
        return
    spec = search.spec
    out.print(f"sweep [bold]{escape(sweep.name)}[/]: {escape(spec.describe())}", highlight=False)
    table = Table(title="search space", title_justify="left")
    table.add_column("key")
    table.add_column("values")
    for p in spec.space:
        table.add_row(p.key, escape(p.describe()))
    out.print(table)
    seeds = f" x {len(search.seeds)} seeds (a trial's value: the mean)" if sweep.seeds else ""
    out.print(f"{len(search.studies)} study(ies) (one per grid point) x {spec.trials} trials"
              f"{seeds} = at most {len(search.studies) * spec.trials * len(search.seeds)} runs; "
              f"{sweep.train.get('epochs', 10)} epochs each at most", highlight=False)
    for study in search.studies:
        counts: dict[str, int] = {}
        for trial in study.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        done = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none yet"
        out.print(f"  study {escape(study.label)}: trials in the store: {done}; "
                  f"{search.remaining(study)} to ask", highlight=False)


def print_studies(search: Search) -> None:
    spec = search.spec
    for study in search.studies:
        table = Table(title=f"study {study.label}: {spec.method}, {spec.direction} "
                            f"{spec.metric}", title_justify="left")
        for col in ["trial", *[k.split(".")[-1] for k in spec.keys], "status", spec.metric]:
            table.add_column(col)
        best = best_trial(search, study)
        for number, trial in enumerate(study.trials, 1):
            mark = " *" if trial is best else ""
            table.add_row(f"{number}{mark}", *[format_value(trial.params[k]) for k in spec.keys],
                          trial.state, format_value(trial.value) if trial.value is not None
                          else "")
        out.print(table)
        if best is not None:
            out.print(f"best ({escape(study.label)}): " + ", ".join(
                f"{k}={format_value(v)}" for k, v in best.params.items())
                + f" -> {spec.metric} {format_value(best.value)}", highlight=False)


def best_trial(search: Search, study: Study) -> Any:
    done = [t for t in study.trials if t.state == "complete" and t.value is not None]
    if not done:
        return None
    sign = 1.0 if search.spec.direction == "maximize" else -1.0
    return max(done, key=lambda t: sign * float(t.value or 0.0))


def search_json(search: Search) -> dict[str, Any]:
    spec = search.spec
    return {"sweep": search.sweep.name, "method": spec.method, "trials": spec.trials,
            "metric": spec.metric, "direction": spec.direction,
            "space": {p.key: p.describe() for p in spec.space},
            "prune": {"method": spec.prune.method, "min_epochs": spec.prune.min_epochs},
            "studies": [{"point": s.point, "remaining": search.remaining(s), "trials": [
                {"params": t.params, "state": t.state, "value": t.value,
                 "runs": [r.run_id for r in t.runs]} for t in s.trials]}
                for s in search.studies]}


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
