"""`trainlab report` and `trainlab compare`: the store's runs as figures, tables and answers.

Registered on the app when :mod:`trainlab.cli` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from trainlab.cli.common import JsonOpt, StoreOpt, app, command_store, err, escape, guard, out

# --- report / compare -------------------------------------------------------------------------


@app.command()
def report(
    ctx: typer.Context,
    store: Path | None = StoreOpt,
    sweep: str | None = typer.Option(
        None, "--sweep", help="Sweep to report (default: the most recently updated)."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Output directory (default: reports/SWEEP)."),
    metric: str | None = typer.Option(
        None, "--metric", help="Quality metric to rank by: perplexity, accuracy, rmse, loss, f1 "
                               "or mcc (default: the task's metric)."),
    facet: str | None = typer.Option(
        None, "--facet", metavar="KEYS", help="Varied keys (comma-separated) that split curves "
                                              "into figures."),
    panel: str | None = typer.Option(None, "--panel", metavar="KEY",
                                     help="Varied key that splits a figure into panels."),
    hue: str | None = typer.Option(None, "--hue", metavar="KEYS",
                                   help="Varied keys (comma-separated) coloured within a panel."),
    sort: str | None = typer.Option(
        None, "--sort", metavar="COLS", help="Sort tables by these columns (comma-separated, "
                                             "-COL for descending; run: experiment-number "
                                             "order) (default: the varied keys)."),
    group: str | None = typer.Option(
        None, "--group", metavar="KEY", help="Bold the best run per value of this key, or "
                                             "'none' (default: the first varied key)."),
    target: float | None = typer.Option(
        None, "--target", help="Validation metric value for 'first to reach' (default: within "
                               "10% of the best; 1 point for accuracy)."),
    clock: str = typer.Option(
        "train", "--clock", help="Time axis: train (training seconds, eval excluded) or wall "
                                 "(seconds since start, eval included)."),
    overfit_epochs: int = typer.Option(
        2, "--overfit-epochs", help="Epochs in a row of worse validation that flag overfitting."),
    formats: str = typer.Option("png,svg", "--format", metavar="EXTS",
                                help="Figure files to write: png, svg and/or pdf."),
    as_json: bool = JsonOpt,
) -> None:
    """Write a report of one sweep: HTML, Markdown/LaTeX/CSV tables, PNG/SVG figures, answers.

    Reads the store only.  Figures: train and validation curves of each recorded metric over
    epochs and over training time, one figure per architecture (and layer count), a panel per
    optimizer (see --facet/--panel/--hue).  Tables: summary with the best run per group in bold,
    memory and throughput.  Answers: best for wall-clock, best generalization, Pareto fronts,
    overfitting and divergence, each with the numbers behind it.
    """
    from trainlab.analysis.report import (
        ReportOptions,
        build_report,
        default_out,
        file_list,
        write_report,
    )

    def _split(text: str | None) -> list[str] | None:
        return None if text is None else [t.strip() for t in text.split(",") if t.strip()]

    st = command_store(ctx, store, create=False)
    options = ReportOptions(sweep=sweep, metric=metric, facet=_split(facet), panel=panel,
                            hue=_split(hue), sort=sort, group=group, target=target,
                            clock=clock, overfit_epochs=overfit_epochs,  # type: ignore[arg-type]
                            formats=tuple(_split(formats) or ()))
    if sweep is not None:
        guard(lambda: _check_not_a_range_test(st, sweep))
    built = guard(lambda: build_report(st, options))
    try:
        target_dir = out_dir or default_out(built.frames.name)
        paths = guard(lambda: write_report(built, target_dir))
    finally:
        built.close()
    if as_json:
        out.print_json(data={"sweep": built.frames.name, "out": str(target_dir),
                             "files": file_list(paths, target_dir),
                             "answers": [a.to_dict() for a in built.answers]},
                       default=str)
        return
    names = list(st.sweeps()["sweep"])
    if sweep is None and len(names) > 1:
        err.print(f"reporting sweep [bold]{built.frames.name}[/] (most recently updated); "
                  f"others: {', '.join(n for n in names if n != built.frames.name)} "
                  "(pick one with --sweep)", highlight=False)
    figures = len(built.figures)
    out.print(f"report of sweep [bold]{built.frames.name}[/]: {len(built.frames.runs)} runs, "
              f"{figures} figures, {len(built.tables)} tables, {len(built.answers)} answers",
              highlight=False)
    for answer in built.answers[:3]:
        out.print(f"[bold]{escape(answer.question)}[/] {escape(answer.answer)}",
                  highlight=False)
    out.print(f"wrote {target_dir / 'report.html'} (open it in a browser), report.md, "
              f"tables/ and figures/ in {target_dir}", highlight=False)


def _check_not_a_range_test(st: Any, sweep: str) -> None:
    """`--sweep` naming what `trainlab lr-find` ran (range tests, no runs): say what to do."""
    from trainlab.errors import ConfigError

    if sweep in set(st.sweeps()["sweep"]):
        return
    ranges = st.lr_ranges(sweep) if hasattr(st, "lr_ranges") else None
    if ranges is None or ranges.empty:
        return
    ids = set(ranges["range_id"])
    linked = st.lr_ranges()
    followups = sorted({str(n) for n, rid in zip(linked["sweep"], linked["range_id"])
                        if rid in ids and n is not None and n != sweep
                        and n in set(st.sweeps()["sweep"])})
    figures = ", ".join(str(st.root / "lr-ranges" / f"{rid}.png") for rid in sorted(ids))
    commands = ", ".join(f"`trainlab report --sweep {n}`" for n in followups)
    then = (f"report the sweep trained from them: {commands} (its report includes these range "
            "tests)" if followups else
            "train the follow-up sweep (`trainlab lr-find CONFIG --emit-grid followup.yaml`, "
            "then `trainlab run followup.yaml`) and report that sweep: its report includes "
            "these range tests")
    raise ConfigError(f"`--sweep`: {sweep!r} has LR range tests ({len(ids)}) but no trained "
                      f"runs: `trainlab lr-find` tests LRs, it trains nothing to report. Its "
                      f"figures: {figures}. To compare LRs, {then}.", field="--sweep")


@app.command()
def compare(
    ctx: typer.Context,
    run_ids: list[str] = typer.Argument(..., metavar="RUN...",
                                        help="Two or more run ids (unique prefixes are enough)."),
    store: Path | None = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compare runs side by side: the config keys that differ, then the key results."""
    from trainlab.analysis.compare import compare_runs

    st = command_store(ctx, store, create=False)
    result = guard(lambda: compare_runs(st, run_ids))
    if as_json:
        out.print_json(data=result.to_dict())
        return
    table = Table(title=f"{len(result.columns)} runs: {len(result.differences)} config keys "
                        f"differ, {result.identical} equal", title_justify="left")
    table.add_column("")
    for col in result.columns:
        table.add_column(col, justify="right")
    for key, cells in result.differences:
        table.add_row(key, *[escape(c) for c in cells])
    table.add_section()
    for label, cells, best in result.results:
        table.add_row(label, *[f"[bold green]{escape(c)}[/]" if i == best else escape(c)
                               for i, c in enumerate(cells)])
    out.print(table)
