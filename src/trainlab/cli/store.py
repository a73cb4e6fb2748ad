"""`trainlab ls` and `trainlab show`: browse the store (no torch, no engine)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from trainlab.analysis.fmt import format_mib
from trainlab.cli.common import (
    COST_COLUMNS,
    JsonOpt,
    StoreOpt,
    app,
    command_store,
    cost_cells,
    disturbed_note,
    escape,
    fail,
    format_value,
    guard,
    headline,
    out,
    train_seconds,
)
from trainlab.mfu import UNRELIABLE_TEXT, trusted_metric_rows, trusted_summary


@app.command("ls")
def ls(
    ctx: typer.Context,
    store: Path | None = StoreOpt,
    sweep: str | None = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    status: str | None = typer.Option(None, "--status", help="Only runs with this status."),
    as_json: bool = JsonOpt,
) -> None:
    """List the sweeps and runs in the store."""
    from trainlab.config.keys import short_names
    from trainlab.records import STATUSES

    st = command_store(ctx, store, create=False)
    if status is not None and status not in STATUSES:
        fail(f"`--status`: unknown status {status!r}; valid: {', '.join(STATUSES)}")
    if sweep is not None and st.sweep_info(sweep) is None:
        names = list(st.sweeps()["sweep"])
        fail(f"`--sweep`: no sweep {sweep!r} in {st.root}; sweeps: {', '.join(names) or 'none'}")
    runs = st.runs(sweep)
    if status is not None:
        runs = runs[runs["status"] == status]
    records = runs.to_dict(orient="records")
    for r in records:
        r["index"] = None if r["index"] is None or r["index"] != r["index"] else int(r["index"])
    if as_json:
        # Summaries as shown everywhere: an MFU above 1 (an older run's) is None with why.
        out.print_json(data=[{**{k: r[k] for k in ("run_id", "sweep", "index", "status",
                                                   "overrides")},
                              "summary": trusted_summary(r["summary"] or {})} for r in records])
        return
    table = Table(title=f"store {st.root}", title_justify="left")
    for col in ("sweep", "#", "run id", "status", "settings", "result", "train s",
                *COST_COLUMNS):
        table.add_column(col)
    for r in records:
        summary: dict[str, Any] = r["summary"]
        labels = short_names(list(r["overrides"]))
        settings = " ".join(f"{labels[k]}={format_value(v)}" for k, v in r["overrides"].items())
        table.add_row(str(r["sweep"] or "-"), "" if r["index"] is None else str(r["index"]),
                      r["run_id"], _status(r), settings, headline(summary).split("  ")[0],
                      train_seconds(summary), *cost_cells(summary))
    out.print(table)
    disturbed_note(r["summary"] for r in records)


@app.command()
def show(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="Run id (a unique prefix is enough)."),
    store: Path | None = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show one run: config, status, environment, summary, data splits and its per-epoch
    metrics."""
    from trainlab.analysis.splits import ROLES, data_label, split_rows

    st = command_store(ctx, store, create=False)
    full = guard(lambda: st.find_run(run_id))
    runs = st.runs()
    row = runs[runs["run_id"] == full].iloc[0]
    metrics = st.metrics([full])
    if as_json:
        out.print_json(data={
            "run_id": full, "sweeps": sorted(set(runs[runs["run_id"] == full]["sweep"].dropna())),
            "status": row["status"], "error": row["error"], "config": row["config"],
            "env": row["env"], "summary": trusted_summary(row["summary"] or {}),
            "metrics": trusted_metric_rows(metrics.to_dict(orient="records"))})
        return
    out.print(f"[bold]run {full}[/]  status {row['status']}  attempts {row['attempts']}")
    out.print(_pairs_table("config", row["config"] or {}))
    if row["error"]:
        out.print(f"[red]error:[/] {escape(str(row['error']))}", highlight=False)
    summary = row["summary"] or {}
    if "lr_chosen" in summary:
        trust = "trusted" if summary.get("lr_trusted") else (
            "not trusted: " + ", ".join(summary.get("lr_flags") or []))
        lr = summary["lr_chosen"]
        out.print(f"optimizer.lr: auto -> {lr:.4g} " if lr is not None else
                  "optimizer.lr: auto -> no LR ", end="", highlight=False)
        out.print(f"({summary.get('lr_method')} of LR range test {summary.get('lr_range_id')}; "
                  f"{trust})", highlight=False)
    for source in (row["env"] or {}).get("sources", []):
        imports = source.get("imports") or []
        copied = (f"; with {len(imports)} module(s) it imports" if imports else "") + (
            f"; a copy in the run's sources/{source['sha256']}/"
            if source["target"].split(":")[0].endswith(".py") else "")
        out.print(f"own code: {source['field']} = {source['target']}  ({source['file']}, "
                  f"sha256 {source['sha256']}{copied})", highlight=False, markup=False)
    out.print(_pairs_table("summary", {k: v for k, v in trusted_summary(summary).items()
                                       if k not in ("profile", "splits")}, nested=False))
    splits = split_rows(summary.get("splits"))
    if splits:  # which split is "valid" and which "test" (GLUE: validation is the test)
        table = Table(title=f"data splits ({data_label(row['config'])})", title_justify="left")
        for col in ("split", "size", "from", "used for"):
            table.add_column(col, overflow="fold")
        for name, size, source in splits:
            table.add_row(name, size, escape(source), ROLES[name])
        out.print(table)
    out.print(_pairs_table("environment", {k: v for k, v in (row["env"] or {}).items()
                                           if k != "sources"}, nested=False))
    if trusted_summary(summary).get("mfu_note"):
        out.print(f"MFU: {UNRELIABLE_TEXT} ({trusted_summary(summary)['mfu_note']})",
                  highlight=False)
    profile = summary.get("profile")
    if isinstance(profile, dict) and isinstance(profile.get("shares"), dict):
        out.print(_profile_text(profile, st.run_dir(full)), highlight=False, markup=False)
    epochs = metrics[metrics["epoch"] > 0]
    per_epoch = epochs[epochs["key"].str.match(r"^(train|valid)/(loss|accuracy|perplexity|rmse)$")
                       | epochs["key"].isin(["time/train", "throughput/samples_per_s",
                                           "time/cpu_share", "perf/disturbed"])]
    if not per_epoch.empty:
        wide = per_epoch.pivot_table(index="epoch", columns="key", values="value", aggfunc="last")
        # perf/disturbed becomes a mark: other work on the machine disturbed that epoch's timing.
        flags = wide.pop("perf/disturbed") if "perf/disturbed" in wide.columns else None
        table = Table(title="per epoch", title_justify="left")
        table.add_column("epoch")
        for col in wide.columns:  # short headers: the table fits a terminal
            table.add_column(_EPOCH_HEADERS.get(str(col), str(col)), justify="right")
        if flags is not None:
            table.add_column("timing")
        for epoch, values in wide.iterrows():
            mark = [] if flags is None else [
                "disturbed †" if flags.get(epoch, 0.0) == 1.0 else ""]
            table.add_row(str(epoch), *[format_value(v) for v in values], *mark)
        out.print(table)
        out.print("ex/s: training examples per second; cpu: the CPU the run got of what it "
                  "asked for (time/cpu_share); T cum: training seconds so far (time/train, "
                  "cumulative)", highlight=False)
        if flags is not None and (flags == 1.0).any():
            out.print(f"†: {int((flags == 1.0).sum())} of {len(flags)} epochs had their timing "
                      "disturbed by other work on the machine (time/cpu_wait, machine/steal; "
                      "see docs/explanation/measurement.md): their times and throughput are not "
                      "the model's alone.", highlight=False)


def _status(run: Mapping[Any, Any]) -> str:
    """A run's status as `ls` shows it: a ``running`` run whose process on this host is gone
    (killed, the machine rebooted) says so, rather than looking alive."""
    import socket

    from trainlab.store import held_elsewhere

    if (run["status"] == "running" and run.get("host") == socket.gethostname()
            and run.get("pid") is not None and not held_elsewhere(
                {"pid": int(run["pid"]), "host": run["host"], "heartbeat": None})):
        return "stopped (process gone; rerun to resume)"
    stopped = run.get("stopped_epoch")
    if run["status"] == "pruned" and stopped is not None and stopped == stopped:  # not NaN
        return f"pruned at epoch {int(stopped)}"  # a search trial its pruner stopped
    return str(run["status"])


# `trainlab show`'s per-epoch headers, short enough for an 80-column terminal.
_EPOCH_HEADERS = {"throughput/samples_per_s": "ex/s", "time/cpu_share": "cpu",
                  "time/train": "T cum (s)", "train/loss": "tr loss", "valid/loss": "va loss",
                  "train/accuracy": "tr acc", "valid/accuracy": "va acc",
                  "train/perplexity": "tr ppl", "valid/perplexity": "va ppl",
                  "train/rmse": "tr rmse", "valid/rmse": "va rmse"}


def _pairs_table(title: str, values: dict[str, Any], *, nested: bool = True) -> Table:
    """A mapping as a two-column table, one row per key (`trainlab show`; `--json` has the
    raw data).  ``nested``: each value is a section (the config), shown as ``field=value``
    pairs; otherwise nested values are flattened to dotted keys, one row each."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in values.items():
        if nested and isinstance(value, dict):
            text = "  ".join(f"{k}={format_value(v)}" for k, v in _flat(value).items())
            table.add_row(str(key), escape(text))
        elif isinstance(value, dict):
            for sub, item in _flat(value, f"{key}.").items():
                table.add_row(sub, escape(format_value(item)))
        elif str(key).endswith("_bytes") and isinstance(value, int | float):
            table.add_row(str(key), f"{format_mib(value, significant=3)} MiB")
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            table.add_row(str(key), escape("\n".join(value)))
        else:
            table.add_row(str(key), escape(format_value(value)))
    return table


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _profile_text(profile: dict[str, Any], run_dir: Path) -> str:
    """train.profile's result in a few lines: phase shares, top operators, the trace."""
    shares = "  ".join(f"{k.replace('_', ' ')} {100 * float(v):.0f}%"
                       for k, v in profile["shares"].items() if isinstance(v, int | float))
    lines = [f"where the time goes ({profile.get('steps')} profiled steps of epoch "
             f"{profile.get('epoch')}, {1000 * float(profile.get('step_s') or 0):.3g} ms a "
             f"step): {shares}"]
    for op in (profile.get("top_ops") or [])[:5]:
        cuda = (f", self CUDA {1000 * float(op['self_cuda_s']):.3g} ms"
                if "self_cuda_s" in op else "")
        lines.append(f"  {op.get('name')}: self CPU {1000 * float(op.get('self_cpu_s') or 0):.3g}"
                     f" ms{cuda}, {op.get('calls')} calls")
    for key in ("trace", "memory"):
        if profile.get(key):
            lines.append(f"{key}: {run_dir / str(profile[key])}")
    return "\n".join(lines)
