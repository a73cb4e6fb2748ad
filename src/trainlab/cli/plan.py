"""`trainlab plan`: the runs a sweep expands to, their ids, status and next action."""

from __future__ import annotations

from pathlib import Path

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
    the_plan = guard(lambda: make_plan(sweep, st))

    from trainlab.config.grid import expansion

    auto = auto_lrs(the_plan, st)
    expanded = expansion(sweep, len(the_plan.runs))
    if as_json:
        data = {"sweep": sweep.name, "varied": the_plan.varied, "expansion": expanded, "runs": [
            {"index": r.index, "run_id": r.run_id, "varied": r.varied, "status": r.status,
             "action": r.action, "config": r.run.config.to_dict(),
             **({"lr_auto": auto[r.run_id]} if r.run_id in auto else {})}
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
    for col in ["#", "run id", *short_names(the_plan.varied).values(), *lr_col, "status",
                "action"]:
        table.add_column(col)
    # Past a screenful, the first and the last runs; --json lists every one.
    runs = the_plan.runs
    shown = runs if len(runs) <= SHOWN else [*runs[:SHOWN - 5], None, *runs[-5:]]
    for r in shown:
        if r is None:
            table.add_row("…", f"{len(runs) - SHOWN:,} more", *[""] * (
                len(the_plan.varied) + len(lr_col) + 2))
            continue
        lr_cell = [auto_cell(auto.get(r.run_id))] if auto else []
        table.add_row(str(r.index), r.run_id, *[format_value(r.varied[k]) for k in the_plan.varied],
                      *lr_cell, r.status, r.action)
    out.print(table)
    if len(runs) > SHOWN:
        counts: dict[str, int] = {}
        for r in runs:
            counts[f"{r.status}, {r.action}"] = counts.get(f"{r.status}, {r.action}", 0) + 1
        out.print("runs by status and action: " + "; ".join(
            f"{n:,} {what}" for what, n in counts.items()) + " (`--json` lists every run)",
            highlight=False)
    out.print(f"expanded: {escape(expanded)}", highlight=False)
    if auto:
        out.print("lr auto: an LR range test runs once per distinct data, model, optimizer and "
                  "fine-tuning before training (`trainlab lr-find` runs it alone).",
                  highlight=False)
