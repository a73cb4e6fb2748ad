"""`trainlab plan`: the runs a sweep expands to, their ids, status and next action."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from trainlab.cli.common import (
    ExampleOpt,
    JsonOpt,
    SetOpt,
    StoreOpt,
    app,
    escape,
    format_value,
    guard,
    load_config,
    out,
)
from trainlab.cli.lr_find import auto_cell, auto_lrs
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.plan import Plan
    from trainlab.stacks import StackPlan

SHOWN = 40  # runs listed in full; a larger sweep shows its first and last ones


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

    Checks every run still to train (devices, data, model shapes) without training or
    writing anything.
    """
    from trainlab.plan import make_plan
    from trainlab.store import open_store

    sweep = guard(lambda: load_config(config, example, overrides))
    st = None
    try:
        st = open_store(store, create=False)
    except ConfigError:
        st = None  # no store yet: every run is pending
    else:
        ctx.call_on_close(st.close)
    if sweep.search is not None:  # trials are proposed as the search goes
        from trainlab.cli.search import plan_search_command

        plan_search_command(sweep, st, as_json)
        return
    the_plan = guard(lambda: make_plan(sweep, st))

    from trainlab.config.grid import expansion

    auto = auto_lrs(the_plan, st)
    expanded = expansion(sweep, len(the_plan.runs))
    stacks = _stacks(the_plan)
    if as_json:
        data = {"sweep": sweep.name, "varied": the_plan.varied, "expansion": expanded, "runs": [
            {"index": r.index, "run_id": r.run_id, "varied": r.varied, "status": r.status,
             "action": r.action, "config": r.run.config.to_dict(),
             **({"lr_auto": auto[r.run_id]} if r.run_id in auto else {}),
             **({"stack": stacks.cell(r.run_id)} if stacks is not None else {})}
            for r in the_plan.runs]}
        if len(the_plan.runs) > SHOWN:  # rich's highlighting of 10,000 configs takes minutes
            import json
            import sys

            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            out.print_json(data=data)
        return
    from trainlab.config.keys import short_names

    table = Table(title=f"sweep {sweep.name}: {len(the_plan.runs)} runs, "
                        f"{len(the_plan.todo)} to do", title_justify="left")
    lr_col = ["lr"] if auto else []
    stack_col = ["stack"] if stacks is not None else []
    for col in ["#", "run id", *short_names(the_plan.varied).values(), *lr_col, *stack_col,
                "status", "action"]:
        table.add_column(col)
    # Past a screenful, the first and the last runs; --json lists every one.
    runs = the_plan.runs
    shown = runs if len(runs) <= SHOWN else [*runs[:SHOWN - 5], None, *runs[-5:]]
    for r in shown:
        if r is None:
            table.add_row("…", f"{len(runs) - SHOWN:,} more", *[""] * (
                len(the_plan.varied) + len(lr_col) + len(stack_col) + 2))
            continue
        lr_cell = [auto_cell(auto.get(r.run_id))] if auto else []
        stack_cell = [stacks.cell(r.run_id)] if stacks is not None else []
        table.add_row(str(r.index), r.run_id, *[format_value(r.varied[k]) for k in the_plan.varied],
                      *lr_cell, *stack_cell, r.status, r.action)
    out.print(table)
    if len(runs) > SHOWN:
        counts: dict[str, int] = {}
        for r in runs:
            counts[f"{r.status}, {r.action}"] = counts.get(f"{r.status}, {r.action}", 0) + 1
        out.print("runs by status and action: " + "; ".join(
            f"{n:,} {what}" for what, n in counts.items()) + " (`--json` lists every run)",
            highlight=False)
    out.print(f"expanded: {escape(expanded)}", highlight=False)
    if stacks is not None:
        for line in stacks.lines():
            out.print(escape(line), highlight=False)
    if auto:
        out.print("lr auto: an LR range test runs once per distinct data, model, optimizer and "
                  "fine-tuning before training (`trainlab lr-find` runs it alone).",
                  highlight=False)


def _stacks(the_plan: Plan) -> StackView | None:
    """The stacks of the runs to train, when some run sets ``train.stack``: ``auto`` groups
    capped by the memory budget (estimate/stacked.py: one model's memory from the meta-device
    trace, no probe)."""
    if all(p.run.config.train.stack == "off" for p in the_plan.todo):
        return None
    from trainlab.estimate.stacked import layout

    found = layout(the_plan.todo)
    return StackView(found.plan, {p.run_id: p.index for p in the_plan.runs}, found.warnings)


class StackView:
    """The plan's stacks as table cells and lines: ``S1 (16)``, or ``alone`` and why; the
    memory cap of ``train.stack: auto`` and, for an explicit size over the budget, a warning."""

    def __init__(self, stacks: StackPlan, index: dict[str, int],
                 warnings: dict[str, str] | None = None) -> None:
        self.stacks, self.index = stacks, index
        self.warnings = warnings or {}
        self.names = {p.run_id: f"S{i} ({len(s)})" for i, s in enumerate(stacks.stacks, 1)
                      for p in s}

    def cell(self, run_id: str) -> str:
        if run_id in self.names:
            return self.names[run_id]
        return "alone" if run_id in self.stacks.alone else ""

    def lines(self) -> list[str]:
        out = [f"train.stack: {len(self.stacks.stacks)} stack(s) of "
               f"{sum(len(s) for s in self.stacks.stacks)} runs, each stack trained as one "
               "model in one process (local, --jobs and Ray alike; times are the stack's)"]
        for said in (self.stacks.capped, self.warnings):
            lines: dict[str, list[str]] = {}
            for run_id, line in said.items():
                lines.setdefault(line, []).append(f"#{self.index[run_id]}")
            out.extend(f"{line} ({span(runs)})" for line, runs in lines.items())
        why: dict[str, list[str]] = {}
        for run_id, reason in self.stacks.alone.items():
            why.setdefault(reason, []).append(f"#{self.index[run_id]}")
        out.extend(f"trains alone ({', '.join(runs)}): {reason}" for reason, runs in why.items())
        return out


def span(runs: list[str]) -> str:
    """``#1-#16`` for a run of consecutive numbers, else the list."""
    numbers = [int(r[1:]) for r in runs]
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"{runs[0]}-{runs[-1]}"
    return ", ".join(runs)
