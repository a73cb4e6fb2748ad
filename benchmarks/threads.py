"""``train.threads: auto`` against fixed thread counts, on a quiet machine and a busy one.

Usage (from the repository root):  python -m benchmarks.threads [--rounds 3]
                                   [--workload mlp-fmnist-b256] [--busy 2] [--json F]
                                   [--out BENCHMARKS.md]

In one process, each contender is one whole engine run of one epoch (every measurement on,
records in a real SQLite store), in alternating order every round:

  quiet   ``train.threads`` 1, 2 (torch's default here: the cores) and ``auto``; the goal:
          auto's epoch within 5 % of the best fixed count's;
  busy    the same with ``--busy`` plain Python busy loops (separate processes, started before
          the phase and killed after it) on the cores; the goal: auto at least 2x faster than
          a fixed two threads.

``auto`` decides afresh in every run (the per-process memory of choices is cleared before each),
so its numbers include the choosing, as a run without the estimate's probe pays it: the
epoch's seconds per step (training steps only, as the other benchmarks) and the whole run's
wall time (setup, choosing, validation and test included) are both reported.  The table names
what ``auto`` picked each round and why.  The machine's 1-minute load average and what
``auto``'s busy check saw are recorded before each phase.  Results go into their own section
of BENCHMARKS.md (``benchmarks/suite.py`` keeps it when it rewrites the file).
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.threads")

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import WORKLOADS, engine, section_name, write_section
from trainlab.engine import machine, threads
from trainlab.engine.measure import cpu_name

SECTION = "benchmarks.threads"
SPIN = "while True:\n    pass\n"


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` plain Python busy loops in processes of their own, killed on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    try:
        time.sleep(1.0 if n else 0.0)  # on the run queue, and the load average climbing
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def machine_now() -> dict[str, Any]:
    """The 1-minute load average, and other processes' runnable threads as auto samples them."""
    return {"load": machine.load_average(), "others_running": threads.others_running(),
            "loadavg": Path("/proc/loadavg").read_text().strip()
            if Path("/proc/loadavg").exists() else None}


def run_once(raw: dict[str, Any], setting: int | str, store: Path) -> dict[str, Any]:
    """One engine run at ``train.threads: setting``: seconds per step, wall seconds, and the
    count it trained with (and why, for auto)."""
    raw = copy.deepcopy(raw)
    raw["train"] = {**raw.get("train", {}), "threads": setting}
    threads.forget()  # auto decides afresh: its cost is in the run
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    step_s = engine(raw, store, summary=summary)
    wall = time.perf_counter() - t0
    speed = summary["speed"]
    auto = speed.get("threads_auto") or {}
    return {"step_s": step_s, "wall_s": wall, "threads": speed["threads"],
            "reason": auto.get("reason"), "choose_s": auto.get("seconds"),
            "auto_step_s": auto.get("step_s")}


def phase(raw: dict[str, Any], settings: list[int | str], rounds: int, tmp: Path,
          busy: int) -> dict[str, Any]:
    """Every setting once per round, the order reversed every other round, with ``busy``
    spinning processes on the cores."""
    runs: dict[str, list[dict[str, Any]]] = {str(s): [] for s in settings}
    with busy_processes(busy):
        before = machine_now()
        for r in range(rounds):
            for s in settings if r % 2 == 0 else list(reversed(settings)):
                result = run_once(raw, s, tmp / f"busy{busy}-{r}-{s}")
                runs[str(s)].append(result)
                print(f"  busy={busy} round {r + 1}/{rounds} threads={s}: "
                      f"{result['step_s'] * 1e3:.2f} ms/step, run {result['wall_s']:.2f} s"
                      + (f" (auto: {result['threads']}, {result['reason']})"
                         if s == "auto" else ""), file=sys.stderr, flush=True)
        after = machine_now()
    med = {k: {"step_ms": statistics.median(x["step_s"] for x in v) * 1e3,
               "wall_s": statistics.median(x["wall_s"] for x in v),
               "step_range_ms": [min(x["step_s"] for x in v) * 1e3,
                                 max(x["step_s"] for x in v) * 1e3]}
           for k, v in runs.items()}
    return {"busy_processes": busy, "machine_before": before, "machine_after": after,
            "runs": runs, "median": med,
            "auto_picked": [(x["threads"], x["reason"]) for x in runs["auto"]]}


def measure(workload: str, rounds: int, tmp: Path, busy: int = 2,
            epochs: int = 1) -> dict[str, Any]:
    raw = copy.deepcopy(WORKLOADS[workload])
    raw["train"] = {"epochs": epochs, "seed": 0}
    cores = threads.ceiling()
    fixed: list[int | str] = sorted({1, cores})
    run_once(raw, 1, tmp / "warmup")  # imports, data, the matmul peak: paid by nobody
    quiet = phase(raw, [*fixed, "auto"], rounds, tmp, 0)
    loaded = phase(raw, [*fixed, "auto"], rounds, tmp, busy) if busy else None
    qm = quiet["median"]
    best_fixed = min((str(f) for f in fixed), key=lambda k: qm[k]["step_ms"])
    out: dict[str, Any] = {
        "workload": workload, "rounds": rounds, "cores": cores, "fixed": fixed,
        "quiet": quiet, "busy": loaded,
        "quiet_auto_vs_best": qm["auto"]["step_ms"] / qm[best_fixed]["step_ms"],
        "quiet_auto_vs_best_wall": qm["auto"]["wall_s"] / qm[best_fixed]["wall_s"],
        "quiet_best_fixed": best_fixed,
    }
    if loaded is not None:
        bm = loaded["median"]
        two = str(max(fixed))
        out["busy_fixed"] = two
        out["busy_speedup"] = bm[two]["step_ms"] / bm["auto"]["step_ms"]
        out["busy_speedup_wall"] = bm[two]["wall_s"] / bm["auto"]["wall_s"]
    return out


def markdown(result: dict[str, Any], machine_info: dict[str, Any], command: str) -> str:
    lines = [
        "## train.threads: auto (benchmarks/threads.py)", "",
        f"Written by `benchmarks/threads.py`: `{command}`, {machine_info['date']}, "
        f"{machine_info['cpu']}, {result['cores']} threads to give, torch "
        f"{machine_info['torch']}. Workload `{result['workload']}`, one epoch per run, "
        f"{result['rounds']} rounds in alternating order; median ms per training step "
        "[range] and median wall seconds of the whole run (auto decides afresh in each: its "
        "choosing is in the wall time).", "",
        "| machine | threads | ms/step | run s | auto picked |", "|---|---|---|---|---|",
    ]
    for name in ("quiet", "busy"):
        ph = result[name]
        if ph is None:
            continue
        m = ph["machine_before"]
        label = (f"none started (load {m['load']:.2f}, others running {m['others_running']})"
                 if name == "quiet" else
                 f"{ph['busy_processes']} busy processes (load {m['load']:.2f}, others "
                 f"running {m['others_running']})")
        picked = ", ".join(f"{t} ({why})" for t, why in ph["auto_picked"])
        for key, med in ph["median"].items():
            lo, hi = med["step_range_ms"]
            lines.append(f"| {label} | {key} | {med['step_ms']:.3f} [{lo:.3f}-{hi:.3f}] | "
                         f"{med['wall_s']:.2f} | {picked if key == 'auto' else ''} |")
    lines += ["", "Load: the 1-minute load average; others running: other processes' runnable "
              "threads as auto's busy check samples them, before the phase.", "",
              f"- none started: auto / best fixed ({result['quiet_best_fixed']} threads) = "
              f"x{result['quiet_auto_vs_best']:.3f} per step, "
              f"x{result['quiet_auto_vs_best_wall']:.3f} per run (goal: within 5 %)"]
    if result["busy"] is not None:
        lines.append(f"- busy: fixed {result['busy_fixed']} threads / auto = "
                     f"x{result['busy_speedup']:.2f} per step, "
                     f"x{result['busy_speedup_wall']:.2f} per run (goal: at least 2x)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", default="mlp-fmnist-b256", choices=sorted(WORKLOADS))
    parser.add_argument("--busy", type=int, default=2,
                        help="busy-loop processes in the busy phase (0: no busy phase)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the file whose threads section is (re)written ('-': none)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.workload, args.rounds, Path(tmp), args.busy, args.epochs)
    machine_info = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                    "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__}
    command = ("python -m benchmarks.threads " + " ".join(sys.argv[1:])).strip()
    text = markdown(result, machine_info, command)
    print(text)
    if str(args.out) != "-":
        write_section(args.out, section_name(SECTION), text)
        print(f"wrote the {SECTION} section of {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info, "result": result}, indent=2))


if __name__ == "__main__":
    main()
