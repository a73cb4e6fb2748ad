"""`trainlab run`: train every run of a sweep into the store, with progress bars."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from trainlab.cli.common import (
    COST_COLUMNS,
    ExampleOpt,
    FitOpt,
    JsonOpt,
    SetOpt,
    StoreOpt,
    app,
    command_store,
    cost_cells,
    describe_run,
    disturbed_note,
    eager,
    err,
    escape,
    fail,
    format_value,
    guard,
    headline,
    load_config,
    out,
    train_seconds,
    warn_if_busy,
)
from trainlab.cli.estimate import check_fit, estimate_plan, validate_size
from trainlab.mfu import UNRELIABLE_TEXT, trusted_summary

# Above this many runs to train, `run` asks first (at a terminal) or needs --yes (elsewhere).
CONFIRM_RUNS = 500
# Rows of the final table: a larger sweep shows its first and last runs and a tally.
SHOWN = 40

if TYPE_CHECKING:
    from trainlab.hooks import Callback, RunOutcome, RunState
    from trainlab.lr.study import AutoLR
    from trainlab.plan import Plan, PlannedRun


@app.command()
def run(
    ctx: typer.Context,
    config: Path | None = typer.Argument(None, help="Sweep YAML file.", show_default=False),
    example: str | None = ExampleOpt,
    store: Path | None = StoreOpt,
    overrides: list[str] | None = SetOpt,
    as_json: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    estimate: bool = typer.Option(
        True, "--estimate/--no-estimate",
        help="Predict each run's peak memory and time first (a short calibration probe per "
             "distinct setup) and store the prediction with the run."),
    fit_memory: str | None = FitOpt,
    jobs: int | None = typer.Option(
        None, "--jobs", "-j", metavar="N", show_default=False,
        help="Train N runs at once in local worker processes (CPU threads divided, one GPU "
             "per job when there are several)."),
    executor: str | None = typer.Option(
        None, "--executor", metavar="NAME", show_default=False,
        help="local (one run at a time, the default), pool (--jobs) or ray."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", metavar="ADDR", show_default=False,
        help="An existing Ray cluster (HOST:PORT, ray://HOST:10001 or auto); default: a local "
             "Ray. Implies --executor ray."),
    cpus_per_run: float | None = typer.Option(
        None, "--cpus-per-run", show_default=False, help="Ray: CPUs per run (default: 1)."),
    gpus_per_run: float | None = typer.Option(
        None, "--gpus-per-run", show_default=False,
        help="Ray: GPUs per run (default: 1 when the cluster has GPUs, else 0)."),
    nproc: int | None = typer.Option(
        None, "--nproc", metavar="N", show_default=False,
        help="Train each run with DistributedDataParallel on N processes (torchrun): one per "
             "GPU, or gloo on CPU. Same as --set train.nproc=N."),
    log: list[str] | None = typer.Option(
        None, "--log", metavar="TRACKER", show_default=False,
        help="Mirror every metric, the config and the system measurements to wandb, mlflow or "
             "tensorboard (repeatable)."),
    yes: bool = typer.Option(
        False, "--yes", "-y",
        help=f"Train a sweep of more than {CONFIRM_RUNS} runs to train without asking (asked "
             "at a terminal; refused without --yes elsewhere)."),
) -> None:
    """Train every run of a sweep into the store.

    Finished runs are skipped, interrupted ones resume from their last checkpoint, failed ones
    are retried. Ctrl-C saves state and exits with 130; rerun the same command to go on.
    """
    from trainlab.api import prepare

    if nproc is not None:
        overrides = [*(overrides or []), f"train.nproc={nproc}"]
    sweep = guard(lambda: load_config(config, example, overrides))
    if sweep.search is not None:  # trials proposed as the search goes: its own loop
        from trainlab.cli.search import run_search_command

        run_search_command(ctx, sweep, store, executor=executor, jobs=jobs,
                           ray_address=ray_address, cpus_per_run=cpus_per_run,
                           gpus_per_run=gpus_per_run, log=log, quiet=quiet, as_json=as_json)
    from trainlab.store import store_path

    root = store_path(store)
    new_store = not (root / "trainlab.db").exists()
    root_existed = root.exists()
    st = command_store(ctx, store)
    estimates: dict[str, Any] = {}
    if fit_memory:
        validate_size(fit_memory)

    def predict(the_plan: Plan) -> None:
        # Before the plan is registered: a run refused by --fit-memory leaves no trace.
        if not yes:  # and before estimating: 10,000 runs' estimates would take a while
            confirm_size(len(the_plan.todo), the_plan.sweep.name)
        if (estimate or fit_memory) and the_plan.todo:
            with eager(p.run.config for p in the_plan.todo):
                estimates.update(estimate_plan(the_plan, the_plan.todo, calibrate=True,
                                               quiet=quiet or as_json))
            if fit_memory:
                check_fit(the_plan, estimates, fit_memory)
        elif any(p.run.config.train.stack == "auto" for p in the_plan.todo):
            # No estimate: train.stack: auto's memory cap all the same (a traced pass, no
            # probe), remembered for the executor's stacks (estimate/stacked.py).
            from trainlab.estimate.stacked import layout

            layout(the_plan.todo, remember=True)

    from trainlab.errors import ConfigError

    try:
        prepared = prepare(
            sweep, st, executor=executor, jobs=jobs, ray_address=ray_address,
            cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, log=log or [], check=predict)
    except ConfigError as exc:
        if new_store:  # bad input creates nothing: not even the store it would have used
            _remove_new_store(st, remove_root=not root_existed)
        fail(escape(str(exc)))
    except KeyboardInterrupt:  # at the size prompt, or while estimating: nothing stored yet
        if new_store and _unused(st):  # (a Ctrl-C just after registering keeps the sweep)
            _remove_new_store(st, remove_root=not root_existed)
        raise
    the_plan = prepared.plan
    if not as_json:
        _warn_slow_precision(the_plan)
        if the_plan.todo:
            warn_if_busy([p.run.config.train.threads for p in the_plan.todo], jobs)
    if estimates:
        st.set_estimates({k: e.to_dict() for k, e in estimates.items()})
    from trainlab.engine.interrupt import graceful_sigint

    def notify(signum: int) -> None:
        from trainlab.engine.interrupt import signal_name

        name = signal_name(signum)
        again = "press Ctrl-C again" if name == "Ctrl-C" else f"a second {name} will stop it"
        err.print(f"\n[yellow]{name}:[/] stopping after the current step and saving state; "
                  f"{again} to quit at once.")

    from trainlab.errors import DiskFull
    from trainlab.store.sqlite import StoreFull

    try:
        observer = _Progress(the_plan, quiet=quiet or as_json)
        try:
            with graceful_sigint(notify), eager(p.run.config for p in the_plan.todo):
                result = prepared.executor.execute(the_plan, prepared.store, observer)
        finally:
            observer.close()
    except (StoreFull, DiskFull) as exc:  # a full disk: later runs would fail the same way
        _remove_partial_files(st, the_plan)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        prepared.close()  # trackers finished, workers ended
    if as_json:
        out.print_json(data=_sweep_json(the_plan, st))
    else:
        _print_summary(the_plan, st)
        if result.interrupted:
            from trainlab.engine.interrupt import signal_name

            err.print(f"[yellow]interrupted ({signal_name()}):[/] state saved; rerun the same "
                      "command to resume.")
    raise typer.Exit(result.exit_code)


def confirm_size(todo: int, sweep: str) -> None:
    """Above :data:`CONFIRM_RUNS` runs to train, ask at a terminal (a typo in a grid can ask
    for days of training); elsewhere (a script, a batch job) refuse without ``--yes``."""
    import sys

    if todo <= CONFIRM_RUNS:
        return
    from trainlab.errors import ConfigError

    what = f"sweep {sweep} has {todo:,} runs to train (more than {CONFIRM_RUNS})"
    if sys.stdin.isatty() and err.is_terminal:
        try:
            if typer.confirm(f"The {what}. Train them all?", default=False, err=True):
                return
        except typer.Abort as exc:  # click turns a Ctrl-C at the prompt into Abort (exit 1)
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None  # exit 130, as anywhere else
        raise ConfigError(f"`--yes`: not confirmed; nothing was trained. The {what}: "
                          "`trainlab plan` lists them.", field="--yes")
    raise ConfigError(f"`--yes`: the {what}; pass --yes to train them all (asked at a "
                      "terminal, required elsewhere), or make the grid smaller (`trainlab "
                      "plan` lists the runs).", field="--yes")


def _unused(store: Any) -> bool:
    """Whether the store holds no sweep (one this command created, then refused to use)."""
    import sqlite3

    try:
        return bool(store.sweeps().empty)
    except (sqlite3.Error, OSError):
        return False


def _remove_new_store(store: Any, *, remove_root: bool) -> None:
    """Remove the store this command created and has not written a run to: its database
    files, its empty ``runs/`` folder and, when this command made it, its folder."""
    import contextlib

    store.close()
    for name in ("trainlab.db", "trainlab.db-wal", "trainlab.db-shm", "trainlab.db-journal"):
        with contextlib.suppress(OSError):
            (store.root / name).unlink()
    with contextlib.suppress(OSError):
        (store.root / "runs").rmdir()  # only when empty
    if remove_root:
        with contextlib.suppress(OSError):
            store.root.rmdir()  # only when empty


def _remove_partial_files(store: Any, plan: Plan) -> None:
    """Checkpoints half-written when the disk filled (``*.tmp``, replaced by rename when
    whole) of the runs this command was to train: they only hold space."""
    import contextlib

    for planned in plan.todo:
        for tmp in store.run_dir(planned.run_id).glob("*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _warn_slow_precision(plan: Plan) -> None:
    """A warning (not an error) for runs whose precision is slower than fp32 on this CPU."""
    if not plan.todo:  # a finished sweep: no torch to import
        return
    from trainlab.devices import resolve_device
    from trainlab.engine.flops import slow_precision

    settings = {(resolve_device(p.run.config.train.device), p.run.config.train.precision)
                for p in plan.todo}
    for device, precision in sorted(settings, key=str):
        why = slow_precision(device, precision)
        if why:
            err.print(f"[yellow]warning:[/] {why}.")


class _Progress:
    """Rich progress: a bar over the sweep's runs and one over the current run's steps."""

    def __init__(self, plan: Plan, *, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.plan, self.quiet = plan, quiet
        self.live = not quiet and err.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err, transient=False, disable=not self.live, refresh_per_second=8)
        self.sweep_task: Any = None
        self.run_tasks: dict[str, Any] = {}  # one bar per run in progress (several with --jobs)

    def on_sweep_start(self, plan: Plan) -> None:
        skipped = len(plan.runs) - len(plan.todo)
        if not self.quiet:
            err.print(f"sweep [bold]{plan.sweep.name}[/]: {len(plan.runs)} runs, "
                      f"{len(plan.todo)} to train, {skipped} already done")
        self.progress.start()
        self.sweep_task = self.progress.add_task(
            f"sweep {plan.sweep.name}", total=len(plan.todo), info="")

    def callbacks(self, planned: PlannedRun) -> Sequence[Callback]:
        from trainlab.hooks import Callback

        progress, owner = self.progress, self
        label = describe_run(planned)

        class _Bar(Callback):
            last = 0.0

            def on_run_start(self, state: RunState) -> None:
                owner.run_tasks[planned.run_id] = progress.add_task(
                    f"  run {planned.index} {label}", total=state.total_steps,
                    completed=state.step, info="")

            def on_step_end(self, state: RunState) -> None:
                # Counting steps reads no tensor; refresh at most 10 times a second.
                now = time.perf_counter()
                if now - self.last > 0.1 and planned.run_id in owner.run_tasks:
                    self.last = now
                    progress.update(owner.run_tasks[planned.run_id], completed=state.step)

            def on_log(self, state: RunState, values: Mapping[str, float]) -> None:
                if planned.run_id not in owner.run_tasks:
                    return
                rate = state.info.tokens_per_example * _batch(state) / max(
                    values.get("time/step", math.inf), 1e-9)
                unit = "tok/s" if state.info.task == "lm" else "samples/s"
                progress.update(owner.run_tasks[planned.run_id], completed=state.step,
                                info=f"loss {values['train/step_loss']:.4g}  {rate:,.0f} {unit}")

        return [_Bar()]

    def on_run_end(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        task = self.run_tasks.pop(planned.run_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.sweep_task)
        if self.quiet:
            return
        colour = {"ok": "green", "diverged": "yellow", "interrupted": "yellow",
                  "busy": "cyan"}.get(outcome.status, "red")
        metric = headline(outcome.summary)
        line = (f"[{colour}]{outcome.status:>8}[/] run {planned.index} {planned.run_id} "
                f"{escape(describe_run(planned))}  {metric}")
        if outcome.status not in ("ok", "interrupted") and outcome.error:
            line += f"\n         {escape(outcome.error.strip().splitlines()[-1][:200])}"
        if outcome.summary.get("mfu_note"):
            line += f"\n         MFU {UNRELIABLE_TEXT}: {escape(outcome.summary['mfu_note'])}"
        err.print(line, highlight=False)

    def on_lr_range(self, choice: AutoLR) -> None:
        if self.quiet:
            return
        from trainlab.cli.lr_find import auto_line

        err.print(escape(auto_line(choice)), highlight=False)

    def close(self) -> None:
        self.progress.stop()


def _batch(state: RunState) -> int:
    return int(state.config.data.batch_size)


def _metric_name(summary: Mapping[str, Any]) -> str | None:
    return next((m for m in ("accuracy", "perplexity", "rmse") if f"test_{m}" in summary
                 or f"best_valid_{m}" in summary), None)


def _print_summary(plan: Plan, store: Any) -> None:
    from trainlab.config.keys import short_names
    from trainlab.store.sqlite import held_elsewhere

    runs = store.summaries([p.run_id for p in plan.runs])  # no pandas in `trainlab run`
    labels = short_names(plan.varied)
    # Runs another live process is training: "running" here would read as this command's.
    elsewhere = {rid: info for rid, info in store.statuses([p.run_id for p in plan.runs]).items()
                 if info["status"] == "running" and held_elsewhere(info)}
    summaries = {p.run_id: runs.get(p.run_id, {}).get("summary", {}) for p in plan.runs}
    metric = next((m for m in map(_metric_name, summaries.values()) if m), None) or "loss"
    abbrev = {"accuracy": "acc", "perplexity": "ppl", "rmse": "rmse", "loss": "loss"}[metric]
    table = Table(title=f"sweep {plan.sweep.name}", title_justify="left")
    columns = ["#", "run", *labels.values(), "status", "best ep", f"valid {abbrev}",
               f"test {abbrev}", "train s", *COST_COLUMNS]
    for col in columns:
        table.add_column(col, justify="left" if col in ("run", "status") else "right",
                         no_wrap=col == "status")
    status_of = {p.run_id: "training elsewhere" if p.run_id in elsewhere else
                 runs.get(p.run_id, {}).get("status", "?") for p in plan.runs}
    # Past a screenful, the first and the last runs (a 10,000-row table takes a minute to
    # print, and a Ctrl-C would wait for it); `trainlab ls` and --json list every run.
    shown = plan.runs if len(plan.runs) <= SHOWN else [*plan.runs[:SHOWN - 5], None,
                                                       *plan.runs[-5:]]
    for planned in shown:
        if planned is None:
            table.add_row("…", f"{len(plan.runs) - SHOWN:,} more",
                          *[""] * (len(columns) - 2))
            continue
        summary = summaries[planned.run_id]
        cells = [format_value(summary.get(k)) if summary.get(k) is not None else "" for k in
                 ("best_epoch", f"best_valid_{metric}", f"test_{metric}")]
        table.add_row(str(planned.index), planned.run_id[:8],
                      *[format_value(planned.varied[k]) for k in plan.varied],
                      status_of[planned.run_id], *cells, train_seconds(summary),
                      *cost_cells(summary))
    out.print(table)
    if len(plan.runs) > SHOWN:
        tally: dict[str, int] = {}
        for status in status_of.values():
            tally[status] = tally.get(status, 0) + 1
        out.print("runs by status: " + "; ".join(f"{n:,} {what}" for what, n in tally.items())
                  + " (`trainlab ls` or --json lists every run)", highlight=False)
    disturbed_note(summaries.values())
    if elsewhere:
        where = sorted({f"pid {i['pid']} on {i['host']}" for i in elsewhere.values()})
        err.print(f"[cyan]note:[/] {len(elsewhere)} run(s) of this sweep are being trained by "
                  f"another process ({', '.join(where)}); this command left them to it. "
                  "Rerun the same command, or `trainlab ls`, once it ends.", highlight=False)


def _sweep_json(plan: Plan, store: Any) -> dict[str, Any]:
    runs = store.summaries([p.run_id for p in plan.runs])
    return {"sweep": plan.sweep.name, "varied": plan.varied, "runs": [
        {"index": p.index, "run_id": p.run_id, "varied": p.varied,
         "status": runs[p.run_id]["status"],
         "summary": trusted_summary(runs[p.run_id]["summary"] or {})}
        for p in plan.runs]}
