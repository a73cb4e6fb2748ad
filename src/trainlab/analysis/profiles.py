"""Where the time goes: the runs' ``train.profile`` results in the report.

A profiled run's summary holds ``profile`` (written by the engine's ``engine/profile.py``):
the seconds and share of each phase of a step (data wait, forward, backward, optimizer,
other) over the recorded steps, the top operators by self time and the trace's path in the
run's directory.  The report shows a stacked bar of the phase shares per run, a table of the
top operators and links to the traces (Perfetto, chrome://tracing, TensorBoard's profiler).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.analysis.fmt import format_value, is_finite
from trainlab.analysis.frames import SweepFrames
from trainlab.analysis.plots import Figure, use_agg
from trainlab.analysis.tables import Column, Table

# The engine's phases in its order (analysis reads the store, never the engine).
PHASES = ("data_wait", "forward", "backward", "optimizer", "other")
PHASE_LABELS = {"data_wait": "data wait", "forward": "forward", "backward": "backward",
                "optimizer": "optimizer", "other": "other"}
TOP_OPS = 10  # operators per run in the table
TABLE_RUNS = 4  # runs in the operator table (the first profiled ones)


@dataclass(frozen=True)
class ProfiledRun:
    index: int
    run_id: str
    label: str  # the run's varied values ("" for a sweep of one configuration)
    profile: dict[str, Any]
    trace: Path | None  # the trace file, where it exists
    memory: Path | None  # the CUDA memory history, where it exists


def profiled_runs(frames: SweepFrames, store_root: str) -> list[ProfiledRun]:
    """The sweep's runs with a profile, in run order (the trace only where its file exists)."""
    out = []
    for _, row in frames.runs.sort_values("index").iterrows():
        summary = row["summary"] if isinstance(row["summary"], dict) else {}
        prof = summary.get("profile")
        if not isinstance(prof, dict) or not isinstance(prof.get("shares"), dict):
            continue
        run_dir = Path(store_root) / "runs" / str(row["run_id"]) if store_root else None
        files = []
        for key in ("trace", "memory"):
            path = run_dir / str(prof[key]) if run_dir is not None and prof.get(key) else None
            files.append(path if path is not None and path.is_file() else None)
        out.append(ProfiledRun(int(row["index"]), str(row["run_id"]), frames.describe(row),
                               prof, files[0], files[1]))
    return out


def phase_figure(runs: list[ProfiledRun]) -> Figure:
    """One horizontal bar per profiled run, split into the share of each phase."""
    import matplotlib.pyplot as plt

    use_agg()
    labels = [f"run {r.index}" + (f" ({r.label})" if r.label else "") for r in runs]
    fig, ax = plt.subplots(figsize=(7.0, 1.4 + 0.42 * len(runs)))
    left = [0.0] * len(runs)
    for i, phase in enumerate(PHASES):
        widths = [100.0 * _share(r, phase) for r in runs]
        ax.barh(range(len(runs)), widths, left=left, color=f"C{i}", height=0.6,
                label=PHASE_LABELS[phase])
        for y, (x0, w) in enumerate(zip(left, widths)):
            if w >= 6:  # a label that fits inside its segment
                ax.text(x0 + w / 2, y, f"{w:.0f}", ha="center", va="center", fontsize=7,
                        color="white")
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(runs)), [_short(lab) for lab in labels], fontsize=8)
    ax.invert_yaxis()  # run order top to bottom
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of a profiled step (%)")
    ax.legend(ncol=len(PHASES), fontsize=8, frameon=False, loc="lower center",
              bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    steps = ", ".join(f"run {r.index}: {_steps_text(r)}" for r in runs)
    caption = ("Where a training step's time goes (train.profile): the share of each phase "
               "in the profiled steps, from torch.profiler's named ranges. Data wait: "
               "getting the next batch; forward: forward pass and loss; backward: the "
               "backward pass; optimizer: zero_grad, gradient clipping or norm, the "
               "optimizer step and a per-step schedule; other: the rest of the step (the "
               "loop's bookkeeping, a log point's sync). The profiled steps are left out of "
               f"training time and throughput. Steps and mean step time: {steps}.")
    return Figure("profile-phases", "Where the time goes", caption, fig, section="profile")


def operator_table(runs: list[ProfiledRun]) -> Table | None:
    """The top operators by self time of the first profiled runs (None without operators)."""
    shown = [r for r in runs if r.profile.get("top_ops")][:TABLE_RUNS]
    if not shown:
        return None
    cuda = any("self_cuda_s" in op for r in shown for op in r.profile["top_ops"])
    cols = [Column("index", "#", "run", "#: run number in the sweep"),
            Column("operator", "operator", "text"),
            Column("self_cpu_ms", "self CPU ms", "number",
                   "self CPU ms: milliseconds on the CPU in the operator itself (not in the "
                   "operators it calls), summed over the profiled steps")]
    if cuda:
        cols.append(Column("self_cuda_ms", "self CUDA ms", "number",
                           "self CUDA ms: the same on the GPU"))
    cols += [Column("share", "% step", "percent",
                    "% step: self CPU time as a share of the profiled steps' time"),
             Column("calls", "calls", "count", "calls: over the profiled steps")]
    rows, groups = [], []
    for r in shown:
        total = r.profile.get("seconds")
        for op in r.profile["top_ops"][:TOP_OPS]:
            row = {"index": r.index, "run_id": r.run_id, "operator": str(op.get("name")),
                   "self_cpu_ms": _ms(op.get("self_cpu_s")), "calls": op.get("calls"),
                   "share": (100.0 * op["self_cpu_s"] / total if is_finite(total) and total
                             and is_finite(op.get("self_cpu_s")) else None)}
            if cuda:
                row["self_cuda_ms"] = _ms(op.get("self_cuda_s"))
            rows.append(row)
            groups.append(str(r.index))
    left_out = len([r for r in runs if r.profile.get("top_ops")]) - len(shown)
    notes = [f"{left_out} more profiled runs are left out; `trainlab show RUN` lists theirs."
             ] if left_out > 0 else []
    caption = (f"The top {TOP_OPS} operators by self time in each profiled run's recorded "
               "steps (torch.profiler). Columns: " + "; ".join(c.explain for c in cols
                                                               if c.explain) + ".")
    return Table("profile-ops", "Top operators of the profiled steps", cols, rows,
                 [None] * len(rows), groups, caption, notes=notes)


def trace_links(runs: list[ProfiledRun]) -> tuple[tuple[str, str], ...]:
    """(text, file) for each profiled run's trace and memory history that exist."""
    out = []
    for r in runs:
        if r.trace is not None:
            out.append((f"run {r.index}: trace ({r.trace.name}; Perfetto, chrome://tracing, "
                        "TensorBoard's profiler plugin)", str(r.trace)))
        if r.memory is not None:
            out.append((f"run {r.index}: CUDA memory history ({r.memory.name}; "
                        "pytorch.org/memory_viz)", str(r.memory)))
    return tuple(out)


def _share(run: ProfiledRun, phase: str) -> float:
    value = run.profile["shares"].get(phase)
    return float(value) if is_finite(value) else 0.0


def _steps_text(run: ProfiledRun) -> str:
    step = _ms(run.profile.get("step_s"))
    ms = f", {step:.3g} ms" if step is not None else ""
    return f"{format_value(run.profile.get('steps'))} steps{ms}"


def _ms(seconds: Any) -> float | None:
    return 1000.0 * float(seconds) if is_finite(seconds) else None


def _short(label: str, width: int = 48) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


__all__ = ["PHASES", "ProfiledRun", "operator_table", "phase_figure", "profiled_runs",
           "trace_links"]
