"""Overhead of trainlab's engine against a plain loop and a typical course script.

Usage (from the repository root):  python -m benchmarks.overhead [--rounds 7] [--json F]
                                   [--mode interleaved|epochs]

Contenders, on the same model, data and seed:
  * engine  - trainlab's loop with every measurement on at its defaults (train loss, LR and
              gradient norm every log_every=50 steps written to a real SQLite store;
              validation, peak memory, MFU and checkpoints at epoch end);
  * plain   - a hand-written loop: same model, data, seed, batch order AND optimizer kernels
              (trainlab's optimizer builder), nothing measured: the engine's pure overhead;
  * script  - a typical course script: DataLoader over a TensorDataset, loss.item() every
              step, a tqdm bar (when tqdm is installed), torch's default optimizer and loss;
  * gathered (interleaved mode) - the plain loop taking its batches as the engine does
              (slices of chunks gathered together, one index op per chunk instead of two
              per step): engine/gathered is the engine's bookkeeping alone.

--mode interleaved (the default): one process trains all three in turn.  The engine trains;
after each block of its steps (about 10 ms of steps) the plain loop and the script each take
as many steps of their own, in alternating order, and every step is timed alone (the engine's
from the end of the step or block before it to its end, so its bookkeeping and log points are
inside it; validation and checkpoints, after an epoch's last step, are outside for all).  A
shared machine's speed drifts by tens of percent within seconds; contenders milliseconds apart
see the same machine, so their ratios cancel the drift that epoch-by-epoch alternation leaves
in.  It measures at least --rounds epochs and --seconds of plain-loop steps after a warm-up
epoch, pools the epochs into GROUPS contiguous groups, and gives per group the ratio of summed
step times (an epoch's cost) and the median of the per-step ratios; over groups, the median and
the range.

--mode own-code: the digits MLP as trainlab builds it against the same MLP written in a user's
file (model.name: python), each a whole engine run, alternating: user code costs nothing extra.

--mode epochs: in alternating order each round, one whole epoch of each contender after the
other, timed from the epoch's start (shuffle included) to its last step's end; the paired ratio
of epoch means and of median single steps per round, median and range over rounds.
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

from benchmarks.common import (
    WORKLOADS,
    PlainSteps,
    ScriptSteps,
    engine,
    epoch_groups,
    interleaved,
    median_step_ratio,
    plain,
    script,
)
from trainlab.components import load_dataset
from trainlab.config.schema import resolve_run

WORKLOAD_NAMES = ["digits-mlp", "mlp-fmnist-b32", "mlp-fmnist-b256", "lstm-lm", "gpt-lm"]
GROUPS = 7  # interleaved: the measured epochs are pooled into this many contiguous groups
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


def _spread(values: list[float]) -> tuple[float, list[float]]:
    return round(statistics.median(values), 3), [round(min(values), 3), round(max(values), 3)]


def measure_interleaved(name: str, rounds: int, tmp: Path,
                        seconds: float = 0.0) -> dict[str, Any]:
    """Engine, plain loop and script stepped in turn in one process (see the module doc):
    at least ``rounds`` epochs and ``seconds`` of plain-loop steps after the warm-up epoch."""
    raw = copy.deepcopy(WORKLOADS[name])
    raw["train"] = {"seed": 0}
    config = resolve_run(raw)
    load_dataset(config.data, config.model)  # build the data once, outside every timing
    script_steps = ScriptSteps(raw)
    others = {"plain": PlainSteps(raw, trainlab_optimizer=True),
              "gathered": PlainSteps(raw, trainlab_optimizer=True, gather=True),
              "script": script_steps}
    try:
        per_epoch = interleaved(raw, tmp / name, rounds, others, seconds)
    finally:
        script_steps.close()
    result: dict[str, Any] = {"workload": name, "mode": "interleaved",
                              "rounds": len(per_epoch),
                              "steps": sum(len(r["engine"]) for r in per_epoch)}
    groups = epoch_groups(per_epoch, GROUPS)
    result["groups"] = len(groups)
    result["median_step_us"] = {
        k: round(statistics.median([statistics.median(g[k]) for g in groups]) * 1e6, 1)
        for k in groups[0]}
    result["step_ms"] = {
        k: round(statistics.median([statistics.fmean(g[k]) for g in groups]) * 1e3, 4)
        for k in groups[0]}
    for a, b in (("engine", "plain"), ("script", "plain"), ("gathered", "plain"),
                 ("engine", "gathered")):
        sums = [sum(g[a]) / sum(g[b]) for g in groups]
        steps = [median_step_ratio(g, a, b) for g in groups]
        result[f"{a}_vs_{b}"], result[f"{a}_vs_{b}_range"] = _spread(sums)
        result[f"{a}_vs_{b}_median_step"], result[f"{a}_vs_{b}_median_step_range"] = (
            _spread(steps))
    return result


# The built-in `mlp` of the digits workload, written as a user writes it in a file of their own.
OWN_MLP = """
from torch import nn


def mlp(input_shape, num_classes, hidden=128):
    width = 1
    for d in input_shape:
        width *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
"""


def measure_own_code(rounds: int, tmp: Path, epochs: int = 3) -> dict[str, Any]:
    """The digits MLP built in (``model.name: mlp``) against the same MLP from a user's file
    (``model.name: python``), each trained by the engine, whole runs alternating in order
    round by round: the ratio of their last epochs' seconds per step (median and range over
    rounds), and whether both trained the same weights (same init, same batches)."""
    (tmp / "own").mkdir(exist_ok=True)
    (tmp / "own" / "nets.py").write_text(OWN_MLP)
    base = copy.deepcopy(WORKLOADS["digits-mlp"])
    base["train"] = {"epochs": epochs}
    builtin = base
    own = {**base, "model": {"name": "python", "target": str(tmp / "own" / "nets.py") + ":mlp",
                             "args": {"hidden": base["model"]["hidden_dim"]}}}
    ratios, steps = [], {"builtin": [], "own": []}
    results: dict[str, set[float]] = {"builtin": set(), "own": set()}
    for r in range(rounds + 1):  # the first round warms up and is left out
        order = [("builtin", builtin), ("own", own)]
        seconds = {}
        for name, raw in order if r % 2 else reversed(order):
            summary: dict[str, Any] = {}
            seconds[name] = engine(raw, tmp / f"store-{name}", summary=summary)
            results[name].add(summary["test_loss"])
        if r:
            ratios.append(seconds["own"] / seconds["builtin"])
            for name in seconds:
                steps[name].append(seconds[name] * 1e3)
    return {"workload": "digits-mlp, own file vs built-in", "own_vs_builtin":
            statistics.median(ratios), "own_vs_builtin_range": [min(ratios), max(ratios)],
            "step_ms": {k: statistics.median(v) for k, v in steps.items()}, "rounds": rounds,
            # Same init, same batches, same arithmetic: every run of both ends at one test loss.
            "same_results": len(results["builtin"] | results["own"]) == 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workloads", default=",".join(WORKLOAD_NAMES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="interleaved: go on past --rounds epochs until the plain loop's "
                             "measured steps add up to this many seconds")
    parser.add_argument("--mode", choices=["interleaved", "epochs", "own-code"],
                        default="interleaved",
                        help="step-by-step interleaving in one run (default), whole epochs "
                             "alternating, or own-code: the digits MLP built in against the "
                             "same MLP from a user's file, whole runs alternating")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "own-code":
        with tempfile.TemporaryDirectory() as tmp:
            own = measure_own_code(args.rounds, Path(tmp))
        lo, hi = own["own_vs_builtin_range"]
        print(f"| workload | built-in ms/step | own file ms/step | own/built-in [range] |\n"
              f"|---|---|---|---|\n| {own['workload']} | {own['step_ms']['builtin']:.3f} | "
              f"{own['step_ms']['own']:.3f} | {own['own_vs_builtin']:.3f} [{lo:.3f}-{hi:.3f}] |"
              f"\n\nsame test loss in every run of both: {own['same_results']}")
        if args.json:
            args.json.write_text(json.dumps(own, indent=2))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            result = (measure_interleaved(name, args.rounds, Path(tmp), args.seconds)
                      if args.mode == "interleaved" else measure(name, args.rounds, Path(tmp)))
            results.append(result)
            print(f"{name:>16}: engine/plain {result['engine_vs_plain']:.3f} (median step "
                  f"{result['engine_vs_plain_median_step']:.3f})  script/plain "
                  f"{result['script_vs_plain']:.3f}", flush=True)
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "threads": args.threads, "mode": args.mode,
               "cpu": platform.processor() or platform.machine()}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print("\n| workload | engine ms/step | plain ms/step | script ms/step | engine/plain "
          "[range] | engine/plain, median step [range] | engine/gathered plain, median step "
          "[range] | script/plain |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["step_ms"]
        lo, hi = r["engine_vs_plain_range"]
        slo, shi = r["engine_vs_plain_median_step_range"]
        bookkeeping = "—"  # --mode epochs has no gathered plain loop
        if "engine_vs_gathered_median_step" in r:
            glo, ghi = r["engine_vs_gathered_median_step_range"]
            bookkeeping = f"{r['engine_vs_gathered_median_step']:.3f} [{glo:.3f}-{ghi:.3f}]"
        print(f"| {r['workload']} | {s['engine']:.3f} | {s['plain']:.3f} | {s['script']:.3f} | "
              f"{r['engine_vs_plain']:.3f} [{lo:.3f}-{hi:.3f}] | "
              f"{r['engine_vs_plain_median_step']:.3f} [{slo:.3f}-{shi:.3f}] | "
              f"{bookkeeping} | {r['script_vs_plain']:.3f} |")
    print(f"\nmachine: {machine}")


if __name__ == "__main__":
    main()
