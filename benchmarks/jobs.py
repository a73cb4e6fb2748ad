"""Parallel sweeps: wall-clock of a sweep with ``--jobs N`` against ``--jobs 1``.

Usage (from the repository root):  python -m benchmarks.jobs [--rounds 3] [--jobs 2] [--set K=V]
                                   [--example quickstart] [--json F] [--out BENCHMARKS.md]

Each round runs the whole command a user types, ``trainlab run --example quickstart --store
<fresh dir> -q`` (interpreter start, planning, every run, the summary table), once sequentially
and once with ``--jobs N``, in alternating order; it reports the median wall-clock of each and
their ratio.  With ``--jobs N`` the workers get ``cores // N`` threads each, the sequential run
torch's default (all cores).  The goal on a 2-core machine is a ratio <= 0.65.  Run it on an
otherwise idle machine: another process on the cores changes both numbers.

It writes its dated section of BENCHMARKS.md, one per machine (--out; --no-write to print only).
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.jobs")

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import command_line, write_result


def sweep_seconds(example: str, store: Path, jobs: int, extra: list[str]) -> float:
    """Wall-clock of one ``trainlab run`` into a fresh store; fails loudly if a run failed."""
    cmd = [sys.executable, "-m", "trainlab.cli", "run", "--example", example, "--store",
           str(store), "-q", *(["--jobs", str(jobs)] if jobs > 1 else []), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stderr}")
    return seconds


def measure(example: str, jobs: int, rounds: int, tmp: Path,
            extra: list[str] | None = None) -> dict[str, Any]:
    times: dict[int, list[float]] = {1: [], jobs: []}
    order = [1, jobs]
    for r in range(rounds):
        for n in order if r % 2 == 0 else reversed(order):
            seconds = sweep_seconds(example, tmp / f"{r}-{n}", n, extra or [])
            times[n].append(seconds)
            print(f"  round {r + 1}: --jobs {n}: {seconds:.2f} s", flush=True)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {"example": example, "options": extra or [], "jobs": jobs, "rounds": rounds,
            "seconds": {f"jobs{n}": round(v, 3) for n, v in med.items()},
            "range": {f"jobs{n}": [round(min(v), 3), round(max(v), 3)]
                      for n, v in times.items()},
            "ratio": round(med[jobs] / med[1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--example", default="quickstart")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to trainlab run (repeatable)")
    parser.add_argument("--no-estimate", action="store_true",
                        help="pass --no-estimate (no calibration probes before the sweep)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the results file whose section (for this machine) this rewrites")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = os.getloadavg()
    extra = [a for s in args.set for a in ("--set", s)]
    extra += ["--no-estimate"] if args.no_estimate else []
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.example, args.jobs, args.rounds, Path(tmp), extra)
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "result": result}, indent=2))
    s, lo_hi = result["seconds"], result["range"]
    label = " ".join([args.example, *extra])
    table = "\n".join([
        f"| sweep | --jobs 1 s [range] | --jobs {args.jobs} s [range] | ratio | rounds |",
        "|---|---|---|---|---|",
        f"| `{label}` | {s['jobs1']:.2f} [{lo_hi['jobs1'][0]:.2f}-{lo_hi['jobs1'][1]:.2f}] | "
        f"{s[f'jobs{args.jobs}']:.2f} [{lo_hi[f'jobs{args.jobs}'][0]:.2f}-"
        f"{lo_hi[f'jobs{args.jobs}'][1]:.2f}] | {result['ratio']:.3f} | {args.rounds} |"])
    print("\n" + table)
    print(f"\nmachine: {machine}")
    if not args.no_write:
        body = (f"The whole `trainlab run --example {args.example}` command (interpreter start, "
                f"planning, estimation probes unless --no-estimate, every run), into a fresh "
                f"store each time, sequentially and with `--jobs {args.jobs}` in alternating "
                f"order; median wall seconds over the rounds [range], and the ratio --jobs "
                f"{args.jobs} / --jobs 1 (goal on a 2-core machine: at most 0.65).\n\n" + table)
        write_result(args.out, "benchmarks.jobs", "Parallel sweeps, --jobs (benchmarks/jobs.py)",
                     command_line("benchmarks.jobs"), load, body)


if __name__ == "__main__":
    main()
