"""The `trainlab` command line.

Exit codes: 0 every run ok; 1 the sweep finished but some runs failed or diverged; 2 bad input
(config or usage: a one-paragraph message, no traceback); 130 interrupted (state saved).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from trainlab import __version__
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.engine import Callback, RunOutcome, RunState
    from trainlab.lr_study import AutoLR
    from trainlab.plan import Plan, PlannedRun
    from trainlab.store import Store

app = typer.Typer(
    name="trainlab",
    help="Run, measure and compare deep-learning training experiments from one YAML file.\n\n"
         "Start with `trainlab run --example quickstart`, then `trainlab ls`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Tables piped to a file or CI log get room to breathe (rich assumes 80 columns there).
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)

T = TypeVar("T")

StoreOpt = typer.Option(None, "--store", envvar="TRAINLAB_STORE", metavar="DIR",
                        help="Store directory (default: ./trainlab-runs, or $TRAINLAB_STORE).")
SetOpt = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                      help="Override a config field for every run, e.g. --set train.epochs=2 "
                           "(repeatable; grid.KEY=[..] edits a grid axis).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
FitOpt = typer.Option(
    None, "--fit-memory", metavar="BYTES|auto",
    help="Refuse runs whose predicted peak memory exceeds this (8e9, 16GiB, auto = the "
         "device's memory) and suggest the largest batch size that fits.")
ExampleOpt = typer.Option(
    None, "--example", "-e", metavar="NAME",
    help="Use a built-in example instead of CONFIG (see `trainlab examples`).")


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; bad input becomes a message and exit code 2, never a traceback."""
    try:
        return fn()
    except ConfigError as exc:
        _fail(_escape(str(exc)))


def _open_store(ctx: typer.Context, path: Path | None, *, create: bool = True) -> Store:
    """The command's store (bad input: exit 2), closed when the command ends, however it ends
    (an explicit close: its SQLite connection is not left to the garbage collector)."""
    from trainlab.store import open_store

    st = _guard(lambda: open_store(path, create=create))
    ctx.call_on_close(st.close)
    return st


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def _version(value: bool) -> None:
    if value:
        out.print(f"trainlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Run, measure and compare deep-learning training experiments."""


def _load(config: Path | None, example: str | None, overrides: list[str] | None) -> Any:
    from trainlab.config import load_sweep

    if config is not None and example is not None:
        raise ConfigError("give either CONFIG or --example, not both")
    return load_sweep(config, example=example, overrides=overrides or [])


# --- run ---------------------------------------------------------------------------------------


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
) -> None:
    """Train every run of a sweep into the store.

    Finished runs are skipped, interrupted ones resume from their last checkpoint, failed ones
    are retried. Ctrl-C saves state and exits with 130; rerun the same command to go on.
    """
    from trainlab.api import prepare

    if nproc is not None:
        overrides = [*(overrides or []), f"train.nproc={nproc}"]
    sweep = _guard(lambda: _load(config, example, overrides))
    st = _open_store(ctx, store)
    estimates: dict[str, Any] = {}
    if fit_memory:
        _validate_size(fit_memory)

    def predict(the_plan: Plan) -> None:
        # Before the plan is registered: a run refused by --fit-memory leaves no trace.
        if (estimate or fit_memory) and the_plan.todo:
            estimates.update(_estimate(the_plan, the_plan.todo, calibrate=True,
                                       quiet=quiet or as_json))
            if fit_memory:
                _check_fit(the_plan, estimates, fit_memory)

    prepared = _guard(lambda: prepare(
        sweep, st, executor=executor, jobs=jobs, ray_address=ray_address,
        cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, log=log or [], check=predict))
    the_plan = prepared.plan
    if not as_json:
        _warn_slow_precision(the_plan)
    if estimates:
        st.set_estimates({k: e.to_dict() for k, e in estimates.items()})
    from trainlab.engine.interrupt import graceful_sigint

    def notify() -> None:
        err.print("\n[yellow]Ctrl-C:[/] stopping after the current step and saving state; "
                  "press Ctrl-C again to quit at once.")

    try:
        observer = _Progress(the_plan, quiet=quiet or as_json)
        try:
            with graceful_sigint(notify):
                result = prepared.executor.execute(the_plan, prepared.store, observer)
        finally:
            observer.close()
    finally:
        prepared.close()  # trackers finished, workers ended
    if as_json:
        out.print_json(data=_sweep_json(the_plan, st))
    else:
        _print_summary(the_plan, st)
        if result.interrupted:
            err.print("[yellow]interrupted:[/] state saved; rerun the same command to resume.")
    raise typer.Exit(result.exit_code)


def _warn_slow_precision(plan: Plan) -> None:
    """A warning (not an error) for runs whose precision is slower than fp32 on this CPU."""
    from trainlab.engine.flops import slow_precision
    from trainlab.engine.measure import resolve_device

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
        from trainlab.engine import Callback

        progress, owner = self.progress, self
        label = _describe(planned)

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
        metric = _headline(outcome.summary)
        line = (f"[{colour}]{outcome.status:>8}[/] run {planned.index} {planned.run_id} "
                f"{_escape(_describe(planned))}  {metric}")
        if outcome.status not in ("ok", "interrupted") and outcome.error:
            line += f"\n         {_escape(outcome.error.strip().splitlines()[-1][:200])}"
        err.print(line, highlight=False)

    def on_lr_range(self, choice: AutoLR) -> None:
        if self.quiet:
            return
        from trainlab.cli_lr_find import auto_line

        err.print(_escape(auto_line(choice)), highlight=False)

    def close(self) -> None:
        self.progress.stop()


def _batch(state: RunState) -> int:
    return int(state.config.data.batch_size)  # type: ignore[attr-defined]


def _describe(planned: PlannedRun) -> str:
    from trainlab.config.grid import short_names

    labels = short_names(list(planned.varied))
    return " ".join(f"{labels[k]}={_fmt(v)}" for k, v in planned.varied.items())


def _headline(summary: Mapping[str, Any]) -> str:
    parts = []
    for key in ("test_accuracy", "test_perplexity", "test_rmse", "test_loss"):
        if key in summary and summary[key] is not None:
            parts.append(f"{key.replace('_', '/', 1)} {_fmt(summary[key])}")
            break
    if summary.get("train_time") is not None:
        parts.append(f"{summary['train_time']:.1f}s")
    return "  ".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric_name(summary: Mapping[str, Any]) -> str | None:
    return next((m for m in ("accuracy", "perplexity", "rmse") if f"test_{m}" in summary
                 or f"best_valid_{m}" in summary), None)


def _print_summary(plan: Plan, store: Any) -> None:
    from trainlab.config.grid import short_names

    runs = store.runs(plan.sweep.name).set_index("run_id")
    labels = short_names(plan.varied)
    summaries = {p.run_id: (runs.loc[p.run_id, "summary"] if p.run_id in runs.index else {})
                 for p in plan.runs}
    metric = next((m for m in map(_metric_name, summaries.values()) if m), None) or "loss"
    abbrev = {"accuracy": "acc", "perplexity": "ppl", "rmse": "rmse", "loss": "loss"}[metric]
    table = Table(title=f"sweep {plan.sweep.name}", title_justify="left")
    columns = ["#", "run", *labels.values(), "status", "best ep", f"valid {abbrev}",
               f"test {abbrev}", "train s", *_COST_COLUMNS]
    for col in columns:
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    for planned in plan.runs:
        summary = summaries[planned.run_id]
        status = runs.loc[planned.run_id, "status"] if planned.run_id in runs.index else "?"
        cells = [_fmt(summary.get(k)) if summary.get(k) is not None else "" for k in
                 ("best_epoch", f"best_valid_{metric}", f"test_{metric}")]
        table.add_row(str(planned.index), planned.run_id[:8],
                      *[_fmt(planned.varied[k]) for k in plan.varied], status, *cells,
                      f"{summary['train_time']:.1f}" if "train_time" in summary else "",
                      *_cost_cells(summary))
    out.print(table)


# Beside each result: what it cost (trainable share, throughput, peak memory, gradient norm).
_COST_COLUMNS = ("trainable %", "samples/s", "peak MB", "grad norm")


def _cost_cells(summary: Mapping[str, Any]) -> list[str]:
    def get(key: str, fmt: str, scale: float = 1.0) -> str:
        value = summary.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return ""
        return format(value * scale, fmt)

    return [get("params_trainable_pct", ".3g"), get("samples_per_s", ".0f"),
            get("peak_memory_bytes", ".0f", 1 / 2**20), get("grad_norm_median", ".3g")]


def _sweep_json(plan: Plan, store: Any) -> dict[str, Any]:
    runs = store.runs(plan.sweep.name).set_index("run_id")
    return {"sweep": plan.sweep.name, "varied": plan.varied, "runs": [
        {"index": p.index, "run_id": p.run_id, "varied": p.varied,
         "status": runs.loc[p.run_id, "status"], "summary": runs.loc[p.run_id, "summary"]}
        for p in plan.runs]}


# --- estimate ----------------------------------------------------------------------------------


def _estimate(plan: Plan, runs: Sequence[PlannedRun], *, calibrate: bool,
              quiet: bool) -> dict[str, Any]:
    from trainlab.estimate import estimate_runs

    if not quiet:
        err.print(f"estimating {len(runs)} runs"
                  + (" (a short calibration probe per distinct setup)" if calibrate else ""))
    configs = {r.run_id: r.run.config for r in runs}
    return estimate_runs(configs, calibrate=calibrate)


def _check_fit(plan: Plan, estimates: Mapping[str, Any], budget_text: str) -> None:
    from trainlab.engine.measure import resolve_device
    from trainlab.estimate import largest_fitting_batch, memory_budget

    problems = []
    for planned in plan.runs:
        est = estimates.get(planned.run_id)
        if est is None:
            continue
        config = planned.run.config
        budget = memory_budget(budget_text, resolve_device(config.train.device))
        if est.peak_bytes > budget:
            best = largest_fitting_batch(config, budget, est)
            hint = (f"data.batch_size={best} fits" if best else "no batch size fits: use a "
                    "smaller model or a bigger device")
            problems.append(f"run {planned.index} ({_describe(planned)}): predicted peak "
                            f"{_mb(est.peak_bytes)} > {_mb(budget)}; {hint}")
    if problems:
        raise ConfigError("`--fit-memory`: some runs will not fit:\n  " + "\n  ".join(problems))


def _validate_size(text: str) -> None:
    """Fail fast on a malformed --fit-memory, before any probe runs."""
    import torch

    from trainlab.estimate import memory_budget

    _guard(lambda: memory_budget(text, torch.device("cpu")))


def _mb(n: float) -> str:
    """Bytes for people: 3 significant digits in the largest binary unit below the value."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


@app.command("estimate")
def estimate_cmd(
    config: Path | None = typer.Argument(None, help="Sweep YAML file.", show_default=False),
    example: str | None = ExampleOpt,
    overrides: list[str] | None = SetOpt,
    calibrate: bool = typer.Option(
        True, "--calibrate/--no-calibrate",
        help="Time and measure a few real steps per distinct setup (default), or predict from "
             "FLOPs over the measured matmul peak and traced memory (instant, a lower bound)."),
    fit_memory: str | None = FitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Predict parameters, peak memory and time of every run before running it."""
    from trainlab.config.grid import short_names
    from trainlab.plan import make_plan

    sweep = _guard(lambda: _load(config, example, overrides))
    if fit_memory:
        _validate_size(fit_memory)
    the_plan = _guard(lambda: make_plan(sweep, None))
    estimates = _guard(lambda: _estimate(the_plan, the_plan.runs, calibrate=calibrate,
                                         quiet=as_json))
    total = sum(e.run_s for e in estimates.values())
    if as_json:
        out.print_json(data={"sweep": sweep.name, "total_run_s": total, "runs": [
            {"index": r.index, "run_id": r.run_id, "varied": r.varied,
             **estimates[r.run_id].to_dict()} for r in the_plan.runs]})
    else:
        labels = short_names(the_plan.varied)
        method = next(iter(estimates.values())).method
        table = Table(title=f"sweep {sweep.name}: predicted ({method} method); whole sweep "
                            f"{_seconds(total)}", title_justify="left")
        for col in ["#", *labels.values(), "params", "trainable", "weights+grads+opt",
                    "activations", "peak memory", "ms/step", "s/epoch", "run"]:
            table.add_column(col, justify="right")
        for r in the_plan.runs:
            e = estimates[r.run_id]
            table.add_row(
                str(r.index), *[_fmt(r.varied[k]) for k in the_plan.varied],
                f"{e.params_total:,}", f"{e.params_trainable:,}",
                _mb(e.param_bytes + e.grad_bytes + e.optimizer_bytes),
                _mb(e.activation_bytes) if e.activation_bytes is not None else "?",
                _mb(e.peak_bytes), f"{e.step_s * 1e3:.3g}",
                f"{e.epoch_train_s + e.epoch_eval_s:.3g}", _seconds(e.run_s))
        out.print(table)
        out.print("peak memory is what the run reports as memory/peak_bytes: on CPU the "
                  "process's peak RSS (Python, torch and the data included); activations are "
                  "traced on the meta device.", highlight=False)
        if any(estimates[r.run_id].activation_bytes is None for r in the_plan.runs):
            out.print("activations ?: not traced (PyTorch's MemTracker cannot follow frozen "
                      "parameters or ops without a meta kernel); the peak then rests on the "
                      "calibration probe (with --no-calibrate: on weights, gradients and "
                      "optimizer state alone).", highlight=False)
    if fit_memory:
        _guard(lambda: _check_fit(the_plan, estimates, fit_memory))


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


# --- plan --------------------------------------------------------------------------------------


@app.command()
def plan(
    ctx: typer.Context,
    config: Path | None = typer.Argument(None, help="Sweep YAML file.", show_default=False),
    example: str | None = ExampleOpt,
    store: Path | None = StoreOpt,
    overrides: list[str] | None = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the runs a sweep expands to: varied keys, ids, status in the store, next action.

    Checks every run (devices, data, model shapes) without training or writing anything.
    """
    from trainlab.plan import make_plan
    from trainlab.store import open_store

    sweep = _guard(lambda: _load(config, example, overrides))
    st = None
    try:
        st = open_store(store, create=False)
    except ConfigError:
        st = None  # no store yet: every run is pending
    else:
        ctx.call_on_close(st.close)
    the_plan = _guard(lambda: make_plan(sweep, st))
    from trainlab.cli_lr_find import auto_cell, auto_lrs

    auto = auto_lrs(the_plan, st)
    if as_json:
        out.print_json(data={"sweep": sweep.name, "varied": the_plan.varied, "runs": [
            {"index": r.index, "run_id": r.run_id, "varied": r.varied, "status": r.status,
             "action": r.action, "config": r.run.config.to_dict(),
             **({"lr_auto": auto[r.run_id]} if r.run_id in auto else {})}
            for r in the_plan.runs]})
        return
    from trainlab.config.grid import short_names

    table = Table(title=f"sweep {sweep.name}: {len(the_plan.runs)} runs, "
                        f"{len(the_plan.todo)} to do", title_justify="left")
    lr_col = ["lr"] if auto else []
    for col in ["#", "run id", *short_names(the_plan.varied).values(), *lr_col, "status",
                "action"]:
        table.add_column(col)
    for r in the_plan.runs:
        lr_cell = [auto_cell(auto.get(r.run_id))] if auto else []
        table.add_row(str(r.index), r.run_id, *[_fmt(r.varied[k]) for k in the_plan.varied],
                      *lr_cell, r.status, r.action)
    out.print(table)
    if auto:
        out.print("lr auto: an LR range test runs once per distinct data, model, optimizer and "
                  "fine-tuning before training (`trainlab lr-find` runs it alone).",
                  highlight=False)


# --- ls / show ---------------------------------------------------------------------------------


@app.command("ls")
def ls(
    ctx: typer.Context,
    store: Path | None = StoreOpt,
    sweep: str | None = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    status: str | None = typer.Option(None, "--status", help="Only runs with this status."),
    as_json: bool = JsonOpt,
) -> None:
    """List the sweeps and runs in the store."""
    from trainlab.config.grid import short_names
    from trainlab.records import STATUSES

    st = _open_store(ctx, store, create=False)
    if status is not None and status not in STATUSES:
        _fail(f"`--status`: unknown status {status!r}; valid: {', '.join(STATUSES)}")
    if sweep is not None and st.sweep_info(sweep) is None:
        names = list(st.sweeps()["sweep"])
        _fail(f"`--sweep`: no sweep {sweep!r} in {st.root}; sweeps: {', '.join(names) or 'none'}")
    runs = st.runs(sweep)
    if status is not None:
        runs = runs[runs["status"] == status]
    records = runs.to_dict(orient="records")
    for r in records:
        r["index"] = None if r["index"] is None or r["index"] != r["index"] else int(r["index"])
    if as_json:
        out.print_json(data=[{k: r[k] for k in ("run_id", "sweep", "index", "status",
                                                  "summary", "overrides")} for r in records])
        return
    table = Table(title=f"store {st.root}", title_justify="left")
    for col in ("sweep", "#", "run id", "status", "settings", "result", "train s",
                *_COST_COLUMNS):
        table.add_column(col)
    for r in records:
        summary: dict[str, Any] = r["summary"]
        labels = short_names(list(r["overrides"]))
        settings = " ".join(f"{labels[k]}={_fmt(v)}" for k, v in r["overrides"].items())
        table.add_row(str(r["sweep"] or "-"), "" if r["index"] is None else str(r["index"]),
                      r["run_id"], r["status"], settings, _headline(summary).split("  ")[0],
                      f"{summary['train_time']:.1f}" if "train_time" in summary else "",
                      *_cost_cells(summary))
    out.print(table)


@app.command()
def show(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="Run id (a unique prefix is enough)."),
    store: Path | None = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show one run: config, status, environment, summary and its per-epoch metrics."""
    st = _open_store(ctx, store, create=False)
    full = _guard(lambda: st.find_run(run_id))
    runs = st.runs()
    row = runs[runs["run_id"] == full].iloc[0]
    metrics = st.metrics([full])
    if as_json:
        out.print_json(data={
            "run_id": full, "sweeps": sorted(set(runs[runs["run_id"] == full]["sweep"].dropna())),
            "status": row["status"], "error": row["error"], "config": row["config"],
            "env": row["env"], "summary": row["summary"],
            "metrics": metrics.to_dict(orient="records")})
        return
    out.print(f"[bold]run {full}[/]  status {row['status']}  attempts {row['attempts']}")
    out.print_json(data={"config": row["config"]})
    if row["error"]:
        out.print(f"[red]error:[/] {_escape(str(row['error']))}", highlight=False)
    summary = row["summary"] or {}
    if "lr_chosen" in summary:
        trust = "trusted" if summary.get("lr_trusted") else (
            "not trusted: " + ", ".join(summary.get("lr_flags") or []))
        lr = summary["lr_chosen"]
        out.print(f"optimizer.lr: auto -> {lr:.4g} " if lr is not None else
                  "optimizer.lr: auto -> no LR ", end="", highlight=False)
        out.print(f"({summary.get('lr_method')} of LR range test {summary.get('lr_range_id')}; "
                  f"{trust})", highlight=False)
    out.print_json(data={"summary": row["summary"], "env": row["env"]})
    epochs = metrics[metrics["epoch"] > 0]
    per_epoch = epochs[epochs["key"].str.match(r"^(train|valid)/(loss|accuracy|perplexity|rmse)$")
                       | epochs["key"].isin(["time/train", "throughput/samples_per_s"])]
    if not per_epoch.empty:
        wide = per_epoch.pivot_table(index="epoch", columns="key", values="value", aggfunc="last")
        table = Table(title="per epoch", title_justify="left")
        table.add_column("epoch")
        for col in wide.columns:
            table.add_column(str(col), justify="right")
        for epoch, values in wide.iterrows():
            table.add_row(str(epoch), *[_fmt(v) for v in values])
        out.print(table)


# --- examples ----------------------------------------------------------------------------------


@app.command()
def examples(
    name: str | None = typer.Argument(None, help="Print this example's YAML."),
    as_json: bool = JsonOpt,
) -> None:
    """List the built-in examples (all run offline), or print one's YAML."""
    from trainlab.config import example_names, example_text
    from trainlab.config.load import parse_yaml

    if name is not None:
        text = _guard(lambda: example_text(name))
        sys.stdout.write(text)
        return
    rows = []
    for n in example_names():
        doc = parse_yaml(example_text(n), n)
        rows.append({"name": n, "description": str(doc.get("description", "")).strip()})
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(title="built-in examples: trainlab run --example NAME", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for r in rows:
        table.add_row(r["name"], r["description"])
    out.print(table)


@app.command()
def components(
    kind: str | None = typer.Argument(
        None, help="data, model, optimizer, schedule, finetune, train or lr_find (default: all)."),
    as_json: bool = JsonOpt,
) -> None:
    """List the registered components and every option each takes, with defaults."""
    from trainlab.docs import KINDS, describe

    if kind is not None and kind not in KINDS:
        _fail(f"`KIND`: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    entries = describe([kind] if kind else list(KINDS))
    if as_json:
        out.print_json(data=entries)
        return
    for entry in entries:
        out.print(f"[bold]{entry['kind']}.name: {entry['name']}[/]  {entry['doc']}",
                  highlight=False)
        for f in entry["fields"]:
            desc = f"  {f['description']}" if f["description"] else ""
            out.print(f"    {f['name']}: {f['type']} = {f['default']}{desc}", highlight=False,
                      markup=False)


from trainlab import cli_lr_find, cli_report  # noqa: E402, F401  (register lr-find, report, compare)


def _exit_now(signum: int, frame: object) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> None:
    """Console entry point.

    Once the command is over, a Ctrl-C (typically the second one, after a graceful stop)
    must not end the process by signal, which shows as exit -2 instead of 130: while threads
    are joined and trackers' exit hooks run it exits at once with 130; during the
    interpreter's teardown, which resets Python's handlers to the default action (death by
    SIGINT), it is ignored.  Registered before any command imports a tracker, this atexit
    hook runs after theirs.
    """
    import atexit

    atexit.register(_ignore_sigint)
    try:
        app()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, _exit_now)
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, _exit_now)


if __name__ == "__main__":
    # `python -m trainlab.cli` runs this file as __main__, a second copy of the module that
    # the lr-find, report and compare commands do not register with: use the real one.
    from trainlab.cli import main as _main

    _main()


__all__ = ["app", "main"]
