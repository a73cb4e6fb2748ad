"""`trainlab lr-find`, and how `plan`, `run` and `show` talk about `optimizer.lr: auto`.

Registered on the app when :mod:`trainlab.cli` imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from trainlab.cli.common import (
    ExampleOpt,
    JsonOpt,
    SetOpt,
    StoreOpt,
    app,
    command_store,
    eager,
    err,
    escape,
    guard,
    load_config,
    out,
    warn_if_busy,
)
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.lr.study import AutoLR, LRFindReport, RangeGroup, RangeOutcome
    from trainlab.plan import Plan


_LR_OPTIONS = {"start": "--start", "end": "--end", "steps": "--steps", "epochs": "--epochs",
               "mode": "--mode", "smooth": "--smooth", "diverge": "--diverge", "loss": "--valid",
               "suggest": "--suggest", "candidates": "--candidates", "seed": "--seed"}


@app.command("lr-find")
def lr_find(
    ctx: typer.Context,
    config: Path | None = typer.Argument(None, help="Sweep YAML file.", show_default=False),
    example: str | None = ExampleOpt,
    store: Path | None = StoreOpt,
    overrides: list[str] | None = SetOpt,
    start: float | None = typer.Option(None, "--start", help="First LR (default 1e-7)."),
    end: float | None = typer.Option(None, "--end", help="Last LR (default 10)."),
    steps: int | None = typer.Option(None, "--steps", help="Steps of the ramp, >= 10 "
                                                           "(default 100)."),
    epochs: float | None = typer.Option(None, "--epochs", help="Ramp over this many epochs "
                                                               "instead of --steps."),
    mode: str | None = typer.Option(None, "--mode", help="exp or linear (default exp)."),
    smooth: float | None = typer.Option(None, "--smooth", help="EMA weight of the past loss, "
                                                               "in [0, 1) (default 0.9)."),
    diverge: float | None = typer.Option(None, "--diverge", help="Stop once the smoothed loss "
                                                                 "passes this x its best "
                                                                 "(default 4)."),
    valid: bool = typer.Option(False, "--valid", help="Measure the validation loss after each "
                                                      "update (slower) instead of the next "
                                                      "batch's training loss."),
    suggest: str | None = typer.Option(None, "--suggest", help="The suggestion optimizer.lr: "
                                                               "auto uses: steepest, valley or "
                                                               "minimum (default steepest)."),
    candidates: int | None = typer.Option(None, "--candidates", help="Candidate LRs per test "
                                                                     "(default 4)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the test's initialisation "
                                                         "and batch order (default 0)."),
    emit_grid: Path | None = typer.Option(None, "--emit-grid", metavar="FILE",
                                          help="Write the follow-up sweep (candidates x "
                                               "schedules) that `trainlab run` accepts."),
    schedules: str = typer.Option("constant,step", "--schedules",
                                  help="Schedules of the follow-up sweep, comma-separated."),
    out_dir: Path | None = typer.Option(None, "--out", metavar="DIR",
                                        help="Where the figures go (default STORE/lr-ranges)."),
    rerun: bool = typer.Option(False, "--rerun", help="Run the test again even when the store "
                                                      "holds it."),
    as_json: bool = JsonOpt,
) -> None:
    """LR range test: ramp the LR up, record the loss, suggest LRs and say how far to trust them.

    One test per distinct data, model, optimizer and fine-tuning of the sweep (a grid over
    optimizer.name gives one per optimizer). Settings come from the sweep's `lr_find` section,
    then these options. Each test is stored (a rerun reuses it) and drawn (PNG and SVG); exit
    code 1 when a test could not suggest anything (it diverged from the start). Ctrl-C stops
    the test after the step it is in and exits with 130 (finished tests stay stored).
    """
    from trainlab.config.schema import resolve_lr_find
    from trainlab.lr.study import LRFindReport
    from trainlab.plan import check_runs

    sweep = guard(lambda: load_config(config, example, overrides))
    given = {"start": start, "end": end, "steps": steps, "epochs": epochs, "mode": mode,
             "smooth": smooth, "diverge": diverge, "loss": "valid" if valid else None,
             "suggest": suggest, "candidates": candidates, "seed": seed}
    settings = guard(lambda: _cli_settings(resolve_lr_find, sweep.lr_find, given))
    names = [s.strip() for s in schedules.split(",") if s.strip()]
    if emit_grid is not None:
        guard(lambda: _check_schedules(names))
    from trainlab.config import expand

    runs = guard(lambda: expand(sweep))
    guard(lambda: check_runs(sweep, runs))
    st = command_store(ctx, store)
    report = LRFindReport(sweep.name, suggest=settings.suggest)
    figures_dir = out_dir or st.root / "lr-ranges"
    from trainlab.lr.study import range_groups, run_group

    length = (f"{settings.steps} steps" if settings.epochs is None
              else f"{settings.epochs:g} epochs")
    if not as_json:
        warn_if_busy([run.config.train.threads for run in runs])
    from trainlab.engine import interrupt
    from trainlab.lr.range_test import RangeTestInterrupted

    def notify(signum: int) -> None:
        name = interrupt.signal_name(signum)
        again = "press Ctrl-C again" if name == "Ctrl-C" else f"a second {name} will stop it"
        err.print(f"\n[yellow]{name}:[/] stopping the range test after the current step; "
                  f"{again} to quit at once.")

    stopped: RangeTestInterrupted | None = None
    with interrupt.graceful_sigint(notify), eager(run.config for run in runs):
        for group in range_groups(runs, lambda run: settings):
            if interrupt.stop_requested():
                stopped = RangeTestInterrupted(0, settings.steps)
                break
            if not as_json:
                err.print(f"lr-find {escape(group.describe())}: range {group.range_id}, "
                          f"{length} from {settings.start:g} to {settings.end:g} ...",
                          highlight=False)
            try:
                outcome = run_group(group, st, sweep=sweep.name, rerun=rerun,
                                    on_lengthen=None if as_json else _say_lengthen)
            except RangeTestInterrupted as exc:
                stopped = exc
                break
            report.outcomes.append(outcome)
            report.figures[outcome.group.range_id] = [
                str(p) for p in _draw(outcome, figures_dir, sweep.name)]
    if stopped is not None:
        done = len(report.outcomes)
        err.print(f"[yellow]interrupted ({interrupt.signal_name()}):[/] {escape(str(stopped))}; "
                  f"its partial curve is not stored ({done} finished test(s) are, and a rerun "
                  "reuses them). Rerun the same command to test the rest.", highlight=False)
        raise typer.Exit(interrupt.exit_code())
    if emit_grid is not None:
        _emit(report, sweep, names, emit_grid, st)
    if as_json:
        out.print_json(data=report.to_dict())
    else:
        _print_ranges(report)
    raise typer.Exit(report.exit_code)


def _cli_settings(resolve: Callable[..., Any], section: dict[str, Any],
                  given: dict[str, Any]) -> Any:
    try:
        return resolve(section, given)
    except ConfigError as exc:
        message = str(exc)
        for name, flag in _LR_OPTIONS.items():
            if given.get(name) is not None:
                message = message.replace(f"`lr_find.{name}`", f"`{flag}` (lr_find.{name})")
        raise ConfigError(message, field=exc.field) from None


def _say_lengthen(short: RangeOutcome, longer: RangeGroup) -> None:
    err.print(f"  the {short.result.planned_steps}-step default ramp learned nothing (flagged "
              f"noisy): testing again with {longer.settings.steps} steps, range "
              f"{longer.range_id} ...", highlight=False)


def _check_schedules(names: list[str]) -> None:
    from trainlab.components import SCHEDULES

    if not names:
        raise ConfigError("`--schedules`: give at least one schedule name, e.g. constant,step",
                          field="--schedules")
    for name in names:
        SCHEDULES.get(name, field="--schedules")


def _draw(outcome: RangeOutcome, folder: Path, sweep: str) -> list[Path]:
    from trainlab.analysis.lr_range import plot_lr_range

    title = f"{sweep}: {outcome.group.describe()}"
    return plot_lr_range(outcome.result.to_dict(), folder / outcome.group.range_id, title)


def _emit(report: LRFindReport, sweep: Any, schedules: list[str], path: Path,
          store: Any) -> None:
    from trainlab.lr.study import followup_document, write_followup

    usable = [o for o in report.outcomes if o.result.suggestions.candidates]
    if not usable:
        err.print("[red]no follow-up sweep written:[/] no range test gave candidate LRs")
        return
    doc, skipped = followup_document(sweep, report.outcomes, schedules)
    report.grid_runs = guard(lambda: write_followup(doc, path, usable))
    # The follow-up sweep's report shows the range tests its LRs came from: link them to it.
    for o in usable:
        store.link_lr_range(doc["name"], o.group.range_id, o.group.label)
    report.grid_path = str(path)
    report.skipped = [o.group.range_id for o in skipped]


def _print_ranges(report: LRFindReport) -> None:
    table = Table(title=f"LR range tests of sweep {report.sweep}", title_justify="left",
                  caption=f"optimizer.lr: auto uses the {report.suggest} suggestion "
                          "(lr_find.suggest)", caption_justify="left")
    for col in ("test", "range id", "steps", "seconds", "stopped at", "steepest", "valley",
                "min/10", "candidates", "trust"):
        table.add_column(col, justify="left" if col in ("test", "trust", "candidates")
                         else "right")
    notes = []
    for o in report.outcomes:
        r, sug = o.result, o.result.suggestions
        stopped = "end" if r.stopped == "end" else (
            f"{r.stop_lr:.3g}" if r.stop_lr is not None else r.stopped)
        trust = {"ok": "[green]trusted[/]", "untrusted": "[yellow]not trusted[/]",
                 "diverged": "[red]no LR[/]"}[r.status]
        cands = ", ".join(f"{c:.3g}" for c in sug.candidates or [])
        table.add_row(escape(o.group.describe()), o.group.range_id,
                      f"{r.steps}/{r.planned_steps}",
                      f"{r.seconds:.1f}" + (" (stored)" if o.reused else ""), stopped,
                      *[f"{v:.3g}" if v is not None else "-" for v in
                        (sug.steepest, sug.valley, sug.minimum)], cands, trust)
        if o.note is not None:
            notes.append(f"{o.group.describe()}: {o.note}")
        if r.status != "ok":
            notes.append(f"{o.group.describe()}: {r.explain()}")
    out.print(table)
    for note in notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    for rid, paths in report.figures.items():
        out.print(f"figure {rid}: {', '.join(paths)}", highlight=False)
    if report.grid_path is not None:
        out.print(f"follow-up sweep: {report.grid_path} ({report.grid_runs} runs); train it with"
                  f" `trainlab run {report.grid_path}`", highlight=False)


# --- optimizer.lr: auto in run, plan and show ----------------------------------------------


def auto_line(choice: AutoLR) -> str:
    """One line about the range test behind ``optimizer.lr: auto`` for a group of runs."""
    outcome = choice.outcome
    where = f"lr-find {outcome.group.describe()} " if outcome is not None else "lr-find "
    if choice.lr is None:
        return f"{where}(range {choice.range_id}): no LR: {choice.error}"
    result = outcome.result if outcome is not None else None
    cost = "" if result is None else (
        f"{result.steps} steps, {result.seconds:.1f} s" + (", stored" if outcome
                                                            and outcome.reused else ""))
    line = f"{where}(range {choice.range_id}): lr {choice.lr:.3g} by {choice.method} ({cost})"
    if outcome is not None and outcome.note is not None:
        line += f"\n         {outcome.note}"
    if result is not None and not result.suggestions.assessment.trusted:
        line += "\n         not trusted: " + "; ".join(
            f.message for f in result.suggestions.assessment.flags)
    return line


def auto_lrs(plan: Plan, store: Any) -> dict[str, dict[str, Any]]:
    """For runs with optimizer.lr: auto: range id, and the LR chosen if the store has it."""
    from trainlab.components.optimizers import is_auto

    if not any(is_auto(r.run.config.optimizer) for r in plan.runs):
        return {}  # no range test to look up: the LR package (and torch) stay unloaded
    from trainlab.config.grid import ExpandedRun
    from trainlab.lr.study import RangeGroup, auto_group, stored_outcome

    out: dict[str, dict[str, Any]] = {}
    for r in plan.runs:
        if not is_auto(r.run.config.optimizer):
            continue
        rid, settings = auto_group(r.run.config)
        # A noisy default ramp is followed by a longer test: the LR is that test's.
        group = RangeGroup(rid, settings, [ExpandedRun(1, r.run.config)], {})
        found = stored_outcome(group, store) if store is not None else None
        chosen = found.result.suggestions.get(settings.suggest) if found is not None else None
        out[r.run_id] = {"range_id": found.group.range_id if found is not None else rid,
                         "method": settings.suggest,
                         "stored": found is not None,
                         "lr": chosen}
    return out


def auto_cell(info: dict[str, Any] | None) -> str:
    if info is None:
        return ""
    if info["lr"] is not None:
        return f"auto: {info['lr']:.3g}"
    return "auto (no LR)" if info["stored"] else "auto (to find)"
