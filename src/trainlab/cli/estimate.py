"""`trainlab estimate`: predicted parameters, peak memory and time of every run; the
estimates and the `--fit-memory` check that `trainlab run` also uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from trainlab.analysis.fmt import format_bytes
from trainlab.cli.common import (
    ExampleOpt,
    FitOpt,
    JsonOpt,
    SetOpt,
    app,
    describe_run,
    err,
    escape,
    format_value,
    guard,
    load_config,
    out,
)
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.plan import Plan, PlannedRun

# Marks the predicted times of a run whose calibration probe was disturbed (perf/disturbed);
# the same symbol as the report's tables.
DISTURBED_MARK = "†"


def estimate_plan(plan: Plan, runs: Sequence[PlannedRun], *, calibrate: bool,
              quiet: bool) -> dict[str, Any]:
    from trainlab.estimate import estimate_runs

    if not quiet:
        err.print(f"estimating {len(runs)} runs"
                  + (" (a short calibration probe per distinct setup)" if calibrate else ""))
    configs = {r.run_id: r.run.config for r in runs}
    return estimate_runs(configs, calibrate=calibrate)


def stack_lines(estimates: Mapping[str, Any], index: Mapping[str, int]) -> list[str]:
    """What the table's stacked rows mean, and each stack's notes (its memory cap, an explicit
    size over the budget, a stacked probe that failed; a stack estimated alone)."""
    stacked = {e.stack: e for e in estimates.values() if e.stack is not None}
    lines = []
    if stacked:
        steps = sorted({e.stack_step for e in stacked.values() if e.stack_step})
        lines.append(
            f"stack S#: {len(stacked)} stack(s) (train.stack), each trained as one model: a "
            "stacked run's ms/step, s/epoch and run time are its stack's (the wall-clock "
            "every run of the stack records), "
            + ("measured on a probe of the stacked step" if steps else
               "from its N models' FLOPs (a lower bound)")
            + (f" ({', '.join(steps)})" if steps else "") + "; its memory is the stack's, all "
            "its models together; the sweep's time counts each stack once.")
    notes: dict[str, list[str]] = {}
    for run_id, e in estimates.items():
        for note in (e.note or "").split("; "):
            if note and (e.stack is not None or "stacked step" in note):
                notes.setdefault(note, []).append(f"#{index.get(run_id, '?')}")
    from trainlab.cli.plan import span

    lines.extend(f"{span(runs)}: {note}" for note, runs in notes.items())
    return lines


def check_fit(plan: Plan, estimates: Mapping[str, Any], budget_text: str) -> None:
    from trainlab.devices import resolve_device
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
            problems.append(f"run {planned.index} ({describe_run(planned)}): predicted peak "
                            f"{format_bytes(est.peak_bytes)} > {format_bytes(budget)}; {hint}")
    if problems:
        raise ConfigError("`--fit-memory`: some runs will not fit:\n  " + "\n  ".join(problems))


def validate_size(text: str) -> None:
    """Fail fast on a malformed --fit-memory, before any probe runs."""
    import torch

    from trainlab.estimate import memory_budget

    guard(lambda: memory_budget(text, torch.device("cpu")))


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
    from trainlab.config.keys import short_names
    from trainlab.plan import make_plan

    sweep = guard(lambda: load_config(config, example, overrides))
    if fit_memory:
        validate_size(fit_memory)
    the_plan = guard(lambda: make_plan(sweep, None))
    estimates = guard(lambda: estimate_plan(the_plan, the_plan.runs, calibrate=calibrate,
                                         quiet=as_json))
    from trainlab.estimate.stacked import sweep_seconds

    total = sweep_seconds(estimates)
    if as_json:
        out.print_json(data={"sweep": sweep.name, "total_run_s": total, "runs": [
            {"index": r.index, "run_id": r.run_id, "varied": r.varied,
             **estimates[r.run_id].to_dict()} for r in the_plan.runs]})
    else:
        labels = short_names(the_plan.varied)
        method = next(iter(estimates.values())).method
        table = Table(title=f"sweep {sweep.name}: predicted ({method} method); whole sweep "
                            f"{human_seconds(total)}", title_justify="left")
        stacked = any(e.stack is not None for e in estimates.values())
        for col in ["#", *labels.values(), *(["stack"] if stacked else []), "params",
                    "trainable", "weights+grads+opt", "activations", "tensor peak",
                    "peak memory", "ms/step", "s/epoch", "run"]:
            table.add_column(col, justify="right")
        for r in the_plan.runs:
            e = estimates[r.run_id]
            mark = f" {DISTURBED_MARK}" if e.disturbed else ""
            stack_cell = ([f"S{e.stack} ({e.stack_size})" if e.stack is not None else
                           "alone" if r.run.config.train.stack != "off" else ""]
                          if stacked else [])
            table.add_row(
                str(r.index), *[format_value(r.varied[k]) for k in the_plan.varied],
                *stack_cell,
                f"{e.params_total:,}", f"{e.params_trainable:,}",
                format_bytes(e.param_bytes + e.grad_bytes + e.optimizer_bytes),
                format_bytes(e.activation_bytes) if e.activation_bytes is not None else "?",
                format_bytes(e.tensor_peak_bytes) if e.tensor_peak_bytes is not None else "?",
                format_bytes(e.peak_bytes), f"{e.step_s * 1e3:.3g}{mark}",
                f"{e.epoch_train_s + e.epoch_eval_s:.3g}{mark}", human_seconds(e.run_s) + mark)
        out.print(table)
        out.print("tensor peak is the run's own tensors at their peak (weights, gradients, "
                  "optimizer state, activations, data, batch), what the run reports as "
                  "memory/tensor_peak_bytes; peak memory is what it reports as "
                  "memory/peak_bytes: on CPU the process's peak RSS (Python, torch and the "
                  "data included); activations are traced: on the meta device (no memory), or on "
                  "the CPU for a stack's small model.",
                  highlight=False)
        for line in stack_lines(estimates, {r.run_id: r.index for r in the_plan.runs}):
            out.print(escape(line), highlight=False)
        if any(estimates[r.run_id].disturbed for r in the_plan.runs):
            out.print(disturbed_legend(), highlight=False)
        if any(estimates[r.run_id].activation_bytes is None for r in the_plan.runs):
            out.print("activations ?: not traced (PyTorch's MemTracker cannot follow frozen "
                      "parameters or ops without a meta kernel); the peak then rests on the "
                      "calibration probe (with --no-calibrate: on weights, gradients and "
                      "optimizer state alone).", highlight=False)
    if fit_memory:
        guard(lambda: check_fit(the_plan, estimates, fit_memory))


def disturbed_legend() -> str:
    """The one line under the table that explains the marker."""
    from trainlab.engine.contention import CPU_WAIT_MAX, STEAL_MAX

    return (f"{DISTURBED_MARK}: other work on the machine disturbed the calibration probe (its "
            f"threads waited for a core over {CPU_WAIT_MAX:.0%} of the time, or the hypervisor "
            f"stole over {STEAL_MAX:.0%} of the CPU), so these times are the machine's, not the "
            "model's: estimate again on a quiet machine.")


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"
