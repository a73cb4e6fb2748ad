"""Stacked training (train.stack): a grid of small runs trained together against one at a time.

Usage (from the repository root):  python -m benchmarks.stack [--rounds 3] [--epochs 5]
[--model mlp|cnn]

A 16-run grid of digits MLPs (64-256-10, SGD, batch 32: 4 LRs x 2 weight decays x 2 seeds), or
with ``--model cnn`` an 8-run grid of LeNet-5-style CNNs on the digits (the built-in ``cnn``:
two conv-pool stages of 6 and 16 channels, fc 120-84-10; SGD, batch 32: 4 LRs x 2 schedules,
constant and cosine; a model the stacked step batches with ``vmap``), trained by a whole
``trainlab run`` (a fresh process and store each time: import, plan, train, store) with
``train.stack`` the grid's size and with ``train.stack: off`` (one run after another), the two
alternating round by round (a shared machine's speed drifts within minutes; alternation cancels
most of it).  Reported: each side's median wall-clock over rounds and the ratio, median and range
over rounds (goal: at least 4x on a 2-core CPU), the same for the training time alone (the
runs' summed ``time/train`` against the stack's), and the largest relative difference between a
stacked run's final validation loss and its solo run's (goal: float rounding, < 1e-5).  Both
sides use the default ``train.threads: auto``.
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.stack")

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import section_name, write_section

LRS = [0.01, 0.03, 0.1, 0.3]
WEIGHT_DECAYS = [0.0, 1e-3]
SEEDS = [0, 1]
SCHEDULES = ["constant", "cosine"]

# Each grid: its size, what its BENCHMARKS.md section says it is, and its sweep's fields.
GRIDS: dict[str, dict[str, Any]] = {
    "mlp": {"runs": 16, "what": "digits MLPs (64-256-10, SGD, batch 32, {epochs} epochs; 4 LRs "
                                "x 2 weight decays x 2 seeds)",
            "model": {"name": "mlp", "hidden_dim": 256},
            "grid": {"optimizer.lr": LRS, "optimizer.weight_decay": WEIGHT_DECAYS},
            "seeds": SEEDS},
    "cnn": {"runs": 8, "what": "LeNet-5-style CNNs on the digits (conv 6 and 16 channels, "
                               "fc 120-84-10; SGD, batch 32, {epochs} epochs; 4 LRs x 2 "
                               "schedules, constant and cosine; the vmap path)",
            "model": {"name": "cnn"},
            "grid": {"optimizer.lr": LRS, "schedule.name": SCHEDULES}, "seeds": [0]},
}


def sweep(stack: str | int, epochs: int, model: str = "mlp") -> dict[str, Any]:
    grid = GRIDS[model]
    return {"name": f"stack-{stack}",
            "data": {"name": "digits", "batch_size": 32},
            "model": grid["model"],
            "optimizer": {"name": "sgd", "lr": 0.1},
            "train": {"epochs": epochs, "stack": stack},
            "grid": grid["grid"], "seeds": grid["seeds"]}


def run_once(folder: Path, stack: str | int, epochs: int, round_: int,
             extra: list[str], model: str = "mlp") -> tuple[float, float, Path]:
    """Wall-clock and CPU seconds of one whole ``trainlab run`` of the grid, and its store
    (CPU time: what the process itself used, less inflated than wall-clock where other work
    shares the cores)."""
    config = folder / f"{stack}-{round_}.yaml"
    config.write_text(yaml.safe_dump(sweep(stack, epochs, model)))
    store = folder / f"store-{stack}-{round_}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainlab", "run", str(config), "--store", str(store),
                    "--quiet", *extra], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, store


def final_valid(store: Path) -> tuple[dict[tuple[float, float, str, int], float], float]:
    """Each run's last validation loss, by (lr, weight decay, schedule, seed); and the training
    seconds
    of the sweep (a stack's once: its runs share them)."""
    from trainlab.store import open_store

    st = open_store(store)
    runs = st.runs()
    metrics = st.metrics(list(runs["run_id"]), ["valid/loss", "time/train"])
    last = metrics.sort_values("step").groupby(["run_id", "key"])["value"].last()
    out = {}
    train: dict[str, float] = {}
    for _, row in runs.iterrows():
        cfg = row["config"]
        key = (cfg["optimizer"]["lr"], cfg["optimizer"]["weight_decay"],
               cfg["schedule"]["name"], cfg["train"]["seed"])
        out[key] = float(last[(row["run_id"], "valid/loss")])
        train[row["run_id"]] = float(last[(row["run_id"], "time/train")])
    st.close()
    stacked = cfg["train"].get("stack", "off") != "off"
    return out, max(train.values()) if stacked else sum(train.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model", choices=sorted(GRIDS), default="mlp",
                        help="the grid: 16 digits MLPs, or 8 LeNet-5-style CNNs")
    parser.add_argument("--no-estimate", action="store_true",
                        help="run both sides with --no-estimate (no calibration probe)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the results file whose stack section this rewrites")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    n = GRIDS[args.model]["runs"]
    load = os.getloadavg()
    times: dict[str, list[float]] = {"stacked": [], "solo": []}
    cpu: dict[str, list[float]] = {"stacked": [], "solo": []}
    train_ratios: list[float] = []
    train_s: dict[str, list[float]] = {"stacked": [], "solo": []}
    by_lr: dict[float, float] = {lr: 0.0 for lr in LRS}
    extra = ["--no-estimate"] if args.no_estimate else []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for r in range(args.rounds):
            order: list[tuple[str, str | int]] = [("stacked", n), ("solo", "off")]
            if r % 2:
                order.reverse()
            stores = {}
            for name, stack in order:
                seconds, used, stores[name] = run_once(folder, stack, args.epochs, r, extra,
                                                       args.model)
                times[name].append(seconds)
                cpu[name].append(used)
                print(f"round {r + 1}: {name} {seconds:.1f} s ({used:.1f} s CPU)", flush=True)
            (stacked, stacked_train), (solo, solo_train) = (final_valid(stores["stacked"]),
                                                             final_valid(stores["solo"]))
            assert stacked.keys() == solo.keys() and len(solo) == n
            for k in solo:
                by_lr[k[0]] = max(by_lr[k[0]], abs(stacked[k] - solo[k]) / abs(solo[k]))
            train_ratios.append(solo_train / stacked_train)
            train_s["stacked"].append(stacked_train)
            train_s["solo"].append(solo_train)
    worst = max(by_lr.values())
    ratios = [b / a for a, b in zip(times["stacked"], times["solo"])]
    results = {"seconds": {k: statistics.median(v) for k, v in times.items()},
               "all_seconds": times, "speedup": statistics.median(ratios),
               "range": [min(ratios), max(ratios)], "max_rel_valid_loss_diff": worst,
               "cpu_seconds": {k: statistics.median(v) for k, v in cpu.items()},
               "cpu_speedup": statistics.median([b / a for a, b in zip(cpu["stacked"],
                                                                       cpu["solo"])]),
               "max_rel_valid_loss_diff_by_lr": {str(k): v for k, v in by_lr.items()},
               "train_time_speedup": statistics.median(train_ratios),
               "train_range": [min(train_ratios), max(train_ratios)],
               "train_seconds": {k: statistics.median(v) for k, v in train_s.items()},
               "rounds": args.rounds, "epochs": args.epochs, "model": args.model,
               "runs": n, "cores": os.cpu_count(),
               "load_before": list(load), "load_after": list(os.getloadavg())}
    lo, hi = results["range"]
    tlo, thi = results["train_range"]
    secs, trains = results["seconds"], results["train_seconds"]
    cpus = results["cpu_seconds"]
    lines = ["| side | whole `trainlab run`, s (median) | of it training, s | the rest, s "
             "| CPU s of the whole run |", "|---|---|---|---|---|",
             f"| train.stack: {n} (one stack of {n}) | {secs['stacked']:.1f} | "
             f"{trains['stacked']:.1f} | {secs['stacked'] - trains['stacked']:.1f} | "
             f"{cpus['stacked']:.1f} |",
             f"| train.stack: off ({n} runs in turn) | {secs['solo']:.1f} | "
             f"{trains['solo']:.1f} | {secs['solo'] - trains['solo']:.1f} | "
             f"{cpus['solo']:.1f} |",
             "", f"Whole run: stacked {results['speedup']:.2f}x faster [{lo:.2f}-{hi:.2f}] "
             f"(goal: at least 4x). Training time alone (the runs' summed time/train against "
             f"the stack's): {results['train_time_speedup']:.2f}x [{tlo:.2f}-{thi:.2f}]. Whole run "
             f"in CPU seconds: {results['cpu_speedup']:.2f}x.", "",
             "Largest relative difference of a run's final validation loss from its solo "
             "run's, by LR (goal: float rounding; the batched matmuls round differently and "
             "training amplifies it, the more the higher the LR): " + ", ".join(
                 f"lr {k:g}: {v:.1e}" for k, v in by_lr.items()) + ".", "",
             f"Load average before {load[0]:.2f}, after {results['load_after'][0]:.2f}."]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        flag = (" --no-estimate" if args.no_estimate else "") + (
            f" --model {args.model}" if args.model != "mlp" else "")
        what = GRIDS[args.model]["what"].format(epochs=args.epochs)
        title = "Stacked runs" + (", a LeNet-5 grid" if args.model == "cnn" else "") + (
            " without the estimate" if args.no_estimate else "")
        head = (f"## {title} (benchmarks/stack.py)\n\nWritten by `python -m "
                f"benchmarks.stack --rounds {args.rounds} --epochs {args.epochs}{flag}`, "
                f"{date.today()}, {platform.machine()}, {os.cpu_count()} CPUs. A {n}-run grid of "
                f"{what}, a whole `trainlab run` in a fresh process and store, "
                "stacked and one at a time alternating round by round; ratio median [range] "
                "over rounds.\n\n")
        name = "benchmarks.stack" + (f".{args.model}" if args.model != "mlp" else "") + (
            ".no-estimate" if args.no_estimate else "")
        write_section(args.out, section_name(name), head + table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
