"""Overhead of trainlab's engine against a plain loop and a typical course script.

Usage (from the repository root):  python -m benchmarks.overhead [--rounds 7] [--json F]

For each workload, in one process and in alternating order each round, it times one epoch of:
  * engine  - trainlab's loop with every measurement on at its defaults (train loss, LR and
              gradient norm every log_every=50 steps written to a real SQLite store;
              validation, peak memory, MFU and checkpoints at epoch end);
  * plain   - a hand-written loop: same model, data, seed, batch order AND optimizer kernels
              (trainlab's optimizer builder), nothing measured: the engine's pure overhead;
  * script  - a typical course script: DataLoader over a TensorDataset, loss.item() every
              step, a tqdm bar (when tqdm is installed), torch's default optimizer.
The timed region is the epoch, from its start (shuffle included) to its last step's end.  It
reports, over rounds, the median of each epoch's mean time per step; the ratios engine/plain
and script/plain are paired (each round's epochs ran back to back, so a round's ratio cancels
the machine's slow drift) and the median over rounds is given with the range.  For
engine/plain also the paired ratio of each round's median single-step time, which leaves out
the few cold steps at an epoch's start (the engine times its first step apart as warm-up) and
shows the cost of the steady step.
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.overhead")

import argparse
import copy
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import WORKLOADS, engine, plain, script
from trainlab.components import load_dataset
from trainlab.config.schema import resolve_run

WORKLOAD_NAMES = ["digits-mlp", "mlp-fmnist-b32", "mlp-fmnist-b256", "lstm-lm", "gpt-lm"]
CONTENDERS = {
    "engine": engine,
    "plain": lambda raw, tmp, steps=None: plain(raw, tmp, trainlab_optimizer=True, steps=steps),
    "script": script,
}


def measure(name: str, rounds: int, tmp: Path) -> dict[str, Any]:
    raw = copy.deepcopy(WORKLOADS[name])
    raw["train"] = {"epochs": 1, "seed": 0}
    config = resolve_run(raw)
    load_dataset(config.data, config.model)  # build the data once, outside every timing
    for fn in CONTENDERS.values():  # warm-up round, discarded
        fn(raw, tmp / "warmup")
    times: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    step_medians: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    order = list(CONTENDERS)
    for r in range(rounds):
        for key in order if r % 2 == 0 else reversed(order):
            steps: list[float] = []
            times[key].append(CONTENDERS[key](raw, tmp / f"{name}-{r}", steps))
            step_medians[key].append(statistics.median(steps))
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, per_round: dict[str, list[float]]) -> list[float]:
        # Each round's contenders ran back to back: their ratio cancels the machine's drift.
        return [x / y for x, y in zip(per_round[a], per_round["plain"])]

    epoch_ratios = paired("engine", times)
    step_ratios = paired("engine", step_medians)
    return {
        "workload": name,
        "step_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
        "range_ms": {k: [round(min(v) * 1e3, 4), round(max(v) * 1e3, 4)]
                     for k, v in times.items()},
        "engine_vs_plain": round(statistics.median(epoch_ratios), 3),
        "engine_vs_plain_range": [round(min(epoch_ratios), 3), round(max(epoch_ratios), 3)],
        "script_vs_plain": round(statistics.median(paired("script", times)), 3),
        "median_step_us": {k: round(statistics.median(v) * 1e6, 1)
                           for k, v in step_medians.items()},
        "engine_vs_plain_median_step": round(statistics.median(step_ratios), 3),
        "engine_vs_plain_median_step_range": [round(min(step_ratios), 3),
                                              round(max(step_ratios), 3)],
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workloads", default=",".join(WORKLOAD_NAMES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            result = measure(name, args.rounds, Path(tmp))
            results.append(result)
            print(f"{name:>16}: engine/plain {result['engine_vs_plain']:.3f} (median step "
                  f"{result['engine_vs_plain_median_step']:.3f})  script/plain "
                  f"{result['script_vs_plain']:.3f}", flush=True)
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "threads": args.threads, "cpu": platform.processor() or platform.machine()}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print("\n| workload | engine ms/step | plain ms/step | script ms/step | engine/plain "
          "[range] | engine/plain, median step [range] | script/plain |\n"
          "|---|---|---|---|---|---|---|")
    for r in results:
        s = r["step_ms"]
        lo, hi = r["engine_vs_plain_range"]
        slo, shi = r["engine_vs_plain_median_step_range"]
        print(f"| {r['workload']} | {s['engine']:.3f} | {s['plain']:.3f} | {s['script']:.3f} | "
              f"{r['engine_vs_plain']:.3f} [{lo:.3f}-{hi:.3f}] | "
              f"{r['engine_vs_plain_median_step']:.3f} [{slo:.3f}-{shi:.3f}] | "
              f"{r['script_vs_plain']:.3f} |")
    print(f"\nmachine: {machine}")


if __name__ == "__main__":
    main()
