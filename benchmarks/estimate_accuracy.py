"""How close trainlab's predictions come to what the runs then measure.

Usage (from the repository root, on a quiet machine):

    python -m benchmarks.estimate_accuracy [--examples quickstart,lm-optimizers] [--json F]
                                           [--out BENCHMARKS.md] [--no-write]

For each built-in example it runs the sweep into a fresh store exactly as `trainlab run` does
(each run is predicted by the calibration probe just before the sweep trains, and the
prediction is stored with it), then compares per run: predicted peak memory against the
largest `memory/peak_bytes` the run recorded, and predicted training time per epoch against the
median `time/epoch_train`. Goals: memory within 15 %, epoch time within 20 %.

Runs that differ only in what cannot change a step's cost (quickstart's weight decay, for one)
share a probe and so a prediction; how far their measured epoch times lie apart ("same-setup
spread", max/min - 1) is the machine's own run-to-run noise, which no prediction made before a
run can follow.

It writes its dated section of BENCHMARKS.md, one per machine (--out; --no-write to print only).
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.estimate_accuracy")

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trainlab
from benchmarks.common import command_line, write_result
from trainlab.config.keys import short_names


def measure(example: str, store_dir: Path) -> list[dict[str, Any]]:
    start = time.perf_counter()
    result = trainlab.run(example=example, store=store_dir / example)
    wall = time.perf_counter() - start
    store = trainlab.open_store(store_dir / example)
    runs = store.runs(result.plan.sweep.name)
    metrics = store.metrics(runs["run_id"], keys=["memory/peak_bytes", "time/epoch_train"])
    labels = short_names(result.plan.varied)
    rows = []
    for run in runs.itertuples():
        mine = metrics[metrics["run_id"] == run.run_id]
        est: dict[str, Any] = run.estimate  # type: ignore[assignment]
        peak = float(mine[mine["key"] == "memory/peak_bytes"]["value"].max())
        epoch = statistics.median(mine[mine["key"] == "time/epoch_train"]["value"])
        varied = " ".join(f"{labels[k]}={v}" for k, v in run.overrides.items()  # type: ignore
                          if k in labels)
        rows.append({
            "example": example, "index": int(run.index), "run": varied,  # type: ignore[arg-type]
            "memory_predicted": est["peak_bytes"], "memory_measured": peak,
            "memory_error": est["peak_bytes"] / peak - 1,
            "step_memory_predicted": est["step_bytes"],
            "epoch_predicted": est["epoch_train_s"], "epoch_measured": epoch,
            "epoch_error": est["epoch_train_s"] / epoch - 1,
            "probe_s": est["probe_s"], "sweep_wall_s": wall,
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table of ``rows`` (with their same-setup spreads) and its summary lines."""
    worst_mem = max(abs(r["memory_error"]) for r in rows)
    worst_time = max(abs(r["epoch_error"]) for r in rows)
    lines = ["| example | # | run | peak memory predicted | measured | error | epoch s "
             "predicted | measured | error | same-setup spread |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = r["same_setup_spread"]
        lines.append(
            f"| {r['example']} | {r['index']} | {r['run']} | "
            f"{r['memory_predicted'] / 2**20:.0f} MiB | {r['memory_measured'] / 2**20:.0f} MiB"
            f" | {r['memory_error']:+.1%} | {r['epoch_predicted']:.3f} | "
            f"{r['epoch_measured']:.3f} | {r['epoch_error']:+.1%} | "
            + (f"{spread:.1%}" if spread is not None else "-") + " |")
    spreads = [r["same_setup_spread"] for r in rows if r["same_setup_spread"] is not None]
    if spreads:
        lines += ["", f"Runs of one setup (one shared prediction) measured up to "
                  f"{max(spreads):.1%} apart from each other."]
    outside = sum(abs(r["epoch_error"]) > 0.20 for r in rows)
    lines += ["", f"Worst memory error {worst_mem:.1%} (goal 15 %), worst epoch-time error "
              f"{worst_time:.1%} (goal 20 %; {outside} of {len(rows)} runs outside)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", default="quickstart,lm-optimizers")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the results file whose section (for this machine) this rewrites")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for example in args.examples.split(","):
            rows += measure(example, Path(tmp))
    setups: dict[tuple[str, float], list[float]] = {}
    for r in rows:  # runs sharing a probe have the same predicted epoch
        setups.setdefault((r["example"], r["epoch_predicted"]), []).append(r["epoch_measured"])
    for r in rows:
        same = setups[(r["example"], r["epoch_predicted"])]
        r["same_setup_spread"] = max(same) / min(same) - 1 if len(same) > 1 else None
    table = markdown(rows)
    print(table)
    if not args.no_write:
        body = ("Each example run exactly as `trainlab run` does (each run predicted by the "
                "calibration probe before the sweep trains); per run, predicted peak memory "
                "against the largest `memory/peak_bytes` it recorded, and predicted training "
                "seconds per epoch against its median `time/epoch_train`. Same-setup spread: "
                "runs that share a probe (and so a prediction), max/min - 1 of their measured "
                "epoch times: the machine's own noise.\n\n" + table)
        write_result(args.out, "benchmarks.estimate_accuracy",
                     "Estimates against measurements (benchmarks/estimate_accuracy.py)",
                     command_line("benchmarks.estimate_accuracy"), load, body)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))

if __name__ == "__main__":
    main()
