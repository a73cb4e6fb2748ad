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
reports, over rounds, the median of each epoch's mean time per step, with the ratios
engine/plain and script/plain; and for engine/plain also the ratio of median single-step times
(pooled over rounds), which leaves out the few cold steps at an epoch's start (the engine times
its first step apart as warm-up) and shows the cost of the steady step.
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
    "script": lambda raw, tmp, steps=None: script(raw, tmp),
}


def measure(name: str, rounds: int, tmp: Path) -> dict[str, Any]:
    raw = copy.deepcopy(WORKLOADS[name])
    raw["train"] = {"epochs": 1, "seed": 0}
    load_dataset(resolve_run(raw).data)  # build the data once, outside every timing
    for fn in CONTENDERS.values():  # warm-up round, discarded
        fn(raw, tmp / "warmup")
    times: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    steps: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    order = list(CONTENDERS)
    for r in range(rounds):
        for key in order if r % 2 == 0 else reversed(order):
            times[key].append(CONTENDERS[key](raw, tmp / f"{name}-{r}", steps[key]))
    med = {k: statistics.median(v) for k, v in times.items()}
    step_med = {k: statistics.median(steps[k]) for k in ("engine", "plain")}
    return {
        "workload": name,
        "step_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
        "range_ms": {k: [round(min(v) * 1e3, 4), round(max(v) * 1e3, 4)]
                     for k, v in times.items()},
        "engine_vs_plain": round(med["engine"] / med["plain"], 3),
        "script_vs_plain": round(med["script"] / med["plain"], 3),
        "median_step_us": {k: round(v * 1e6, 1) for k, v in step_med.items()},
        "engine_vs_plain_median_step": round(step_med["engine"] / step_med["plain"], 3),
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
    print("\n| workload | engine ms/step | plain ms/step | script ms/step | engine/plain | "
          "engine/plain, median step | script/plain |\n|---|---|---|---|---|---|---|")
    for r in results:
        s = r["step_ms"]
        print(f"| {r['workload']} | {s['engine']:.3f} | {s['plain']:.3f} | {s['script']:.3f} | "
              f"{r['engine_vs_plain']:.3f} | {r['engine_vs_plain_median_step']:.3f} | "
              f"{r['script_vs_plain']:.3f} |")
    print(f"\nmachine: {machine}")


if __name__ == "__main__":
    main()
