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

--mode process: what the per-epoch and per-run costs add to the step (issue 19's goals), on the
digits MLP (64-256-10, SGD, batch 32, 40 epochs of 40 steps) against PLAIN_SCRIPT, a plain
hand-written script (torch's defaults, validation each epoch, the best weights kept in memory,
tested at the end; no store, no checkpoints) at --plain-threads intra-op threads (default 1, what
`train.threads: auto` picks for this model: on a busy 2-core machine a script at torch's default
2 threads runs several times slower, which would measure the machine, not the overheads).  Two
measures, each a ratio plain/trainlab of speed (above 1.0: the plain script is faster; goal
at most 1.0 on both), median [range]:
  * per epoch: in one process, the script's epochs interleaved with those of an engine run at
    its defaults into a real store (an epoch of each in turn), each timed from its start to the
    next one's (validation, log points, records and checkpoints included); per round the median
    over epochs 2 to 39, over --rounds rounds;
  * whole process: `trainlab run CONFIG` (fresh store, defaults: estimate, threads auto) against
    `python plain_script.py`, fresh processes in alternating order, the first pair discarded;
    the ratio of wall times per pair over --rounds pairs.
It writes its section of BENCHMARKS.md (--out; --no-write to print only).
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.overhead")

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import (
    WORKLOADS,
    PlainSteps,
    ScriptSteps,
    _train_into_store,
    engine,
    epoch_groups,
    interleaved,
    median_step_ratio,
    plain,
    script,
    section_name,
    write_section,
)
from trainlab.components import load_dataset
from trainlab.config.schema import resolve_run
from trainlab.hooks import Callback, RunState

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


# --- --mode process: per-epoch and whole-process costs against a plain script ------------------

# The digits MLP of issue 19's goals, as `trainlab run` takes it (every default on).
DIGITS_RUN: dict[str, Any] = {
    "name": "digits-overhead",
    "data": {"name": "digits", "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 256, "layers": 1},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 40, "seed": 0},
}

# The same study as people write it without a framework: torch's defaults, the same data and
# split (trainlab ships scikit-learn's digits file), validation every epoch with .item(), the
# best weights kept in memory and tested at the end.  Run as a file for the whole-process
# measure; its Plain class steps epochs in the engine's process for the per-epoch one.
PLAIN_SCRIPT = '''"""Digits, MLP 64-256-10, SGD, batch 32, 40 epochs: a plain script by hand."""
import importlib.resources
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPOCHS, BATCH, LR = 40, 32, 0.05


class Plain:
    def __init__(self, generator=None):
        path = importlib.resources.files("trainlab") / "data" / "digits.csv.gz"
        table = np.loadtxt(str(path), delimiter=",")
        x = torch.tensor(table[:, :-1] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        y = torch.tensor(table[:, -1], dtype=torch.long)
        order = np.random.default_rng(0).permutation(len(x))
        held = round(len(x) * 0.15)
        valid, test, train = order[:held], order[held:2 * held], order[2 * held:]
        self.train, self.valid, self.test = (x[train], y[train]), (x[valid], y[valid]), (
            x[test], y[test])
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(),
                                   nn.Linear(256, 10))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.generator = generator
        self.best, self.best_state = float("inf"), None

    def evaluate(self, x, y):
        self.model.eval()
        with torch.no_grad():
            out = self.model(x)
            return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()

    def epoch(self):
        x, y = self.train
        self.model.train()
        for idx in torch.randperm(len(x), generator=self.generator).split(BATCH):
            self.opt.zero_grad()
            loss = F.cross_entropy(self.model(x[idx]), y[idx])
            loss.backward()
            self.opt.step()
        loss, accuracy = self.evaluate(*self.valid)
        if loss < self.best:
            self.best = loss
            self.best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        return loss, accuracy


if __name__ == "__main__":
    if len(sys.argv) > 1:  # the benchmark's intra-op thread count (see --plain-threads)
        torch.set_num_threads(int(sys.argv[1]))
    plain = Plain()
    for epoch in range(1, EPOCHS + 1):
        loss, accuracy = plain.epoch()
        print(f"epoch {epoch}: valid loss {loss:.4f}, accuracy {accuracy:.4f}")
    plain.model.load_state_dict(plain.best_state)
    loss, accuracy = plain.evaluate(*plain.test)
    print(f"test loss {loss:.4f}, accuracy {accuracy:.4f}")
'''


def plain_class() -> Any:
    """PLAIN_SCRIPT's Plain class, loaded without running the script."""
    namespace: dict[str, Any] = {"__name__": "plain_script"}
    exec(compile(PLAIN_SCRIPT, "plain_script.py", "exec"), namespace)
    return namespace["Plain"]


class EpochTurns(Callback):
    """Before each engine epoch, one epoch of the plain script (its own generator, so the
    engine's RNG stays its own; ``threads`` intra-op threads): each contender's epochs timed
    from their start to the next one's."""

    def __init__(self, plain: Any, threads: int) -> None:
        self.plain, self.threads = plain, threads
        self.engine_s: list[float] = []
        self.plain_s: list[float] = []
        self.start: float | None = None

    def on_epoch_start(self, state: RunState) -> None:
        now = time.perf_counter()
        if self.start is not None:
            self.engine_s.append(now - self.start)
        engine_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        t = time.perf_counter()
        self.plain.epoch()
        self.plain_s.append(time.perf_counter() - t)
        torch.set_num_threads(engine_threads)
        self.start = time.perf_counter()


def per_epoch(rounds: int, tmp: Path, threads: int) -> dict[str, Any]:
    """Plain/trainlab epoch speed, the contenders' epochs in turn in this process (see the
    module doc): per round the ratio of median epoch times over epochs 2 to 39."""
    plain_cls = plain_class()
    ratios: list[float] = []
    ms: dict[str, list[float]] = {"trainlab": [], "plain": []}
    picked: set[int] = set()
    for r in range(rounds + 1):  # round 0 warms up (imports, first-call costs): left out
        turns = EpochTurns(plain_cls(torch.Generator().manual_seed(r)), threads)
        outcome = _train_into_store(copy.deepcopy(DIGITS_RUN), tmp / f"epochs-{r}", turns)
        picked.add(outcome.summary["speed"]["threads"])
        engine_s = statistics.median(turns.engine_s[1:39])
        plain_s = statistics.median(turns.plain_s[1:39])
        if r:
            ratios.append(engine_s / plain_s)
            ms["trainlab"].append(engine_s * 1e3)
            ms["plain"].append(plain_s * 1e3)
    return {"plain_vs_trainlab": statistics.median(ratios), "range": [min(ratios), max(ratios)],
            "epoch_ms": {k: statistics.median(v) for k, v in ms.items()}, "rounds": rounds,
            "threads": {"trainlab": sorted(picked), "plain": threads}}


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   check=True)
    return time.perf_counter() - start


def whole_process(rounds: int, tmp: Path, threads: int) -> dict[str, Any]:
    """Plain/trainlab whole-process speed: fresh processes in alternating order, the ratio of
    wall times per pair; the first pair (cold file caches) left out."""
    config, script = tmp / "digits.yaml", tmp / "plain_script.py"
    config.write_text(yaml.safe_dump(DIGITS_RUN, sort_keys=False))
    script.write_text(PLAIN_SCRIPT)
    console = Path(sys.executable).with_name("trainlab")
    trainlab = [str(console)] if console.exists() else [sys.executable, "-m", "trainlab"]
    # The environment a user has: not the malloc thresholds this benchmark runs under.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    ratios: list[float] = []
    seconds: dict[str, list[float]] = {"trainlab": [], "plain": []}
    for r in range(rounds + 1):
        sides = ["trainlab", "plain"] if r % 2 else ["plain", "trainlab"]
        took = {}
        for side in sides:
            command = ([*trainlab, "run", str(config), "--store", str(tmp / f"store-{r}")]
                       if side == "trainlab" else [sys.executable, str(script), str(threads)])
            took[side] = _timed(command, env)
        if r:
            ratios.append(took["trainlab"] / took["plain"])
            for side, value in took.items():
                seconds[side].append(value)
    return {"plain_vs_trainlab": statistics.median(ratios), "range": [min(ratios), max(ratios)],
            "seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "seconds_range": {k: [min(v), max(v)] for k, v in seconds.items()}, "rounds": rounds}


def measure_process(rounds: int, tmp: Path, threads: int) -> dict[str, Any]:
    load = os.getloadavg()
    epochs = per_epoch(rounds, tmp, threads)
    whole = whole_process(rounds, tmp, threads)
    return {"per_epoch": epochs, "whole_process": whole, "load_before": list(load),
            "load_after": list(os.getloadavg()), "cores": os.cpu_count()}


def process_markdown(result: dict[str, Any], rounds: int) -> str:
    e, w = result["per_epoch"], result["whole_process"]
    lines = [
        "## Per-epoch and per-run costs against a plain script (benchmarks/overhead.py "
        "--mode process)", "",
        f"Written by `python -m benchmarks.overhead --mode process --rounds {rounds}`, "
        f"{date.today()}, {platform.machine()}, {result['cores']} CPUs, torch "
        f"{torch.__version__}. The digits MLP (64-256-10, SGD, batch 32, 40 epochs of 40 steps) "
        "trained by trainlab at its defaults (a real store, validation, checkpoints, "
        "`train.threads: auto`) and by a plain hand-written script (torch's defaults, "
        "validation each epoch, best weights in memory). Speed ratio plain/trainlab, median "
        "[range] over rounds: above 1.0 the script is faster (goal: at most 1.0 on both).", "",
        "| measure | trainlab | plain script | plain/trainlab [range] |", "|---|---|---|---|",
        f"| per epoch (in one process, epochs in turn; ms, start to start) | "
        f"{e['epoch_ms']['trainlab']:.1f} | {e['epoch_ms']['plain']:.1f} | "
        f"{e['plain_vs_trainlab']:.3f} [{e['range'][0]:.3f}-{e['range'][1]:.3f}] |",
        f"| whole process (`trainlab run` vs `python plain_script.py`; s) | "
        f"{w['seconds']['trainlab']:.2f} | {w['seconds']['plain']:.2f} | "
        f"{w['plain_vs_trainlab']:.3f} [{w['range'][0]:.3f}-{w['range'][1]:.3f}] |", "",
        f"Intra-op threads: trainlab {e['threads']['trainlab']} (auto), the script "
        f"{e['threads']['plain']} (--plain-threads). Load average before "
        f"{result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workloads", default=",".join(WORKLOAD_NAMES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="interleaved: go on past --rounds epochs until the plain loop's "
                             "measured steps add up to this many seconds")
    parser.add_argument("--mode", choices=["interleaved", "epochs", "own-code", "process"],
                        default="interleaved",
                        help="step-by-step interleaving in one run (default), whole epochs "
                             "alternating, own-code: the digits MLP built in against the "
                             "same MLP from a user's file, whole runs alternating, or process: "
                             "per-epoch and whole-process speed against a plain script")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="process: the results file whose section this rewrites")
    parser.add_argument("--no-write", action="store_true", help="process: print only")
    parser.add_argument("--plain-threads", type=int, default=1,
                        help="process: the plain script's intra-op threads (default 1: what "
                             "train.threads: auto picks for this tiny model; the table says "
                             "what trainlab picked)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "process":
        with tempfile.TemporaryDirectory() as tmp:
            result = measure_process(args.rounds, Path(tmp), args.plain_threads)
        text = process_markdown(result, args.rounds)
        print(text)
        if not args.no_write:
            write_section(args.out, section_name("benchmarks.overhead.process"), text)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
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
