"""The input pipeline: trainlab's DataLoader path against a plain loop, and workers against none.

Usage (from the repository root):  python -m benchmarks.loader [--rounds 5] [--json F]

Two measurements, each with both sides in one process, alternating round by round (a shared
machine's speed drifts by tens of percent within minutes; alternation cancels most of it):

* parity: a map-style Dataset of fixed items (a synthetic 64-feature classification set,
  4,096 items; the 64-256-10 MLP, Adam, batch 32), trained by trainlab (``data: {name:
  python}``, ``data.loader`` as given) and by a hand-written loop over a ``DataLoader`` with
  the same settings, the same batches (trainlab's (seed, epoch) order as its batch sampler),
  model, optimizer and seed.  Both sides live in one process and take turns epoch by epoch:
  the plain loop's epoch e runs right before trainlab's epoch e (odd e) or right after it (even
  e), so each pair sees the same machine within ~100 ms, and either side goes first as often.
  Each pair gives a ratio of training seconds (trainlab's ``time/epoch_train`` against the
  plain loop's iter() to last step); epochs 2 to E of every round are pooled (epoch 1 carries
  worker start-up), and the median of the pooled ratios and its range over rounds are
  reported, with each side's data wait per step (seconds inside ``next()``) and compute per
  step (the rest), so a difference shows where it lies.  Goal: within 3 %.  The old protocol
  (3 epochs a side, whole runs alternating) could not resolve 3 %: its rounds spread 20 %.
* data-bound: a Dataset whose items each cost 1 ms of I/O (a sleep: a slow disk or network),
  trained by trainlab at 0 and at 2 workers: the ratio of samples/s (median over epochs from the
  run's records).  Goal: 2 workers at least 1.5x the samples/s of 0 on a 2-core machine.
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.loader")

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import listed_batches_loader, section_name, write_section
from trainlab.components import build_model, build_optimizer, load_dataset
from trainlab.config.schema import resolve_run
from trainlab.engine import epoch_permutation, train
from trainlab.hooks import Callback, RunState
from trainlab.records import NullSink

DATA = '''
import time

import torch
from torch.utils.data import Dataset


class Items(Dataset):
    """Fixed items; ``io_s`` seconds of I/O (a sleep) per item."""

    def __init__(self, n, seed, io_s=0.0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 64, generator=g)
        self.y = (self.x[:, :10].argmax(1))
        self.io_s = io_s

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.io_s:
            time.sleep(self.io_s)
        return self.x[i], int(self.y[i])


def items(n=4096, io_s=0.0):
    return {"train": Items(n, 0, io_s), "valid": Items(256, 1), "test": Items(256, 2)}
'''


def _raw(folder: Path, workers: int, epochs: int, n: int, io_s: float) -> dict[str, Any]:
    return {
        "data": {"name": "python", "target": str(folder / "benchdata.py") + ":items",
                 "args": {"n": n, "io_s": io_s}, "task": "classification", "num_classes": 10,
                 "batch_size": 32, "loader": {"workers": workers}},
        "model": {"name": "mlp", "hidden_dim": 256},
        "optimizer": {"name": "adam", "lr": 1e-3},
        # One intra-op thread on both sides: the workers need the other core.
        "train": {"epochs": epochs, "checkpoint": False, "threads": 1},
    }


def trainlab_epochs(raw: dict[str, Any]) -> tuple[list[float], list[float]]:
    """trainlab's (seconds per epoch, samples/s per epoch) of one run."""
    sink = NullSink()
    outcome = train(resolve_run(raw), sink=sink)
    if outcome.status != "ok":
        raise SystemExit(f"trainlab run failed: {outcome.error}")
    times = [r.value for r in sink.records if r.key == "time/epoch_train"]
    rates = [r.value for r in sink.records if r.key == "throughput/samples_per_s"]
    return times, rates


class PlainLoop:
    """A hand-written loop over a DataLoader with the same settings, batches, model, optimizer
    and seed as trainlab's run of ``raw``; :meth:`epoch` trains one epoch and keeps its seconds
    (iter() to the last step's end) and its data wait (seconds inside ``next()``)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        config = self.config = resolve_run(raw)
        self.data = load_dataset(config.data, config.model)
        with torch.random.fork_rng(devices=[]):  # trainlab's run keeps its own RNG stream
            torch.manual_seed(config.train.seed)
            self.model = build_model(config.model, self.data.info)
        self.opt = build_optimizer(config.optimizer, self.model.parameters())
        settings = config.data.loader
        assert settings is not None
        self.batches: list[list[int]] = []
        self.loader = listed_batches_loader(self.data.train, settings, self.batches)
        self.seconds: dict[int, float] = {}
        self.wait: dict[int, float] = {}

    def epoch(self, epoch: int) -> None:
        config, model, opt = self.config, self.model, self.opt
        order = epoch_permutation(len(self.data.train), config.train.seed, epoch)
        self.batches[:] = [b.tolist() for b in order.split(config.data.batch_size)]
        loss_fn = torch.nn.functional.cross_entropy
        model.train()
        perf = time.perf_counter
        wait = 0.0
        t = perf()
        steps = iter(self.loader)
        while True:
            t_fetch = perf()
            try:
                x, y = next(steps)
            except StopIteration:
                break
            wait += perf() - t_fetch
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        self.seconds[epoch] = perf() - t
        self.wait[epoch] = wait

    def close(self) -> None:
        shutdown = getattr(getattr(self.loader, "_iterator", None), "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class Turns(Callback):
    """The plain loop's epoch e right before trainlab's epoch e when e is odd, right after it
    when e is even: pairs a few milliseconds apart, either side first half the time."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain

    def on_epoch_start(self, state: RunState) -> None:
        if state.epoch % 2:
            self.plain.epoch(state.epoch)

    def on_epoch_end(self, state: RunState, values: dict[str, float]) -> None:
        if not state.epoch % 2:
            self.plain.epoch(state.epoch)


def parity_round(raw: dict[str, Any]) -> dict[str, dict[int, float]]:
    """One trainlab run with the plain loop's epochs in turn: per side and epoch, seconds and
    data wait."""
    plain = PlainLoop(raw)
    sink = NullSink()
    try:
        outcome = train(resolve_run(raw), sink=sink, callbacks=[Turns(plain)])
    finally:
        plain.close()
    if outcome.status != "ok":
        raise SystemExit(f"trainlab run failed: {outcome.error}")

    def per_epoch(key: str) -> dict[int, float]:
        return {r.epoch: r.value for r in sink.records if r.key == key}

    return {"trainlab": per_epoch("time/epoch_train"), "trainlab_wait": per_epoch("time/data_wait"),
            "plain": plain.seconds, "plain_wait": plain.wait}


def parity(folder: Path, workers: int, rounds: int, epochs: int) -> dict[str, Any]:
    raw = _raw(folder, workers, epochs, 4096, 0.0)
    steps = -(-4096 // 32)
    pooled: list[float] = []
    per_round: list[float] = []
    us: dict[str, list[float]] = {k: [] for k in ("trainlab_wait", "plain_wait",
                                                  "trainlab_compute", "plain_compute")}
    ms: dict[str, list[float]] = {"trainlab": [], "plain": []}
    for r in range(rounds + 1):  # round 0 warms up and is left out
        got = parity_round(raw)
        if not r:
            continue
        ratios = []
        for e in range(2, epochs + 1):
            ratios.append(got["trainlab"][e] / got["plain"][e])
            for side in ("trainlab", "plain"):
                ms[side].append(got[side][e] * 1e3)
                us[f"{side}_wait"].append(got[f"{side}_wait"][e] / steps * 1e6)
                us[f"{side}_compute"].append((got[side][e] - got[f"{side}_wait"][e])
                                             / steps * 1e6)
        pooled += ratios
        per_round.append(statistics.median(ratios))
    return {"workers": workers, "trainlab_vs_plain": statistics.median(pooled),
            "range": [min(per_round), max(per_round)], "pairs": len(pooled),
            "epoch_ms": {k: statistics.median(v) for k, v in ms.items()},
            "step_us": {k: statistics.median(v) for k, v in us.items()}, "rounds": rounds}


def data_bound(folder: Path, rounds: int, epochs: int = 4) -> dict[str, Any]:
    speedups, rates = [], {0: [], 2: []}
    for r in range(rounds):
        order = [0, 2] if r % 2 else [2, 0]
        per = {}
        for workers in order:
            per[workers] = statistics.median(trainlab_epochs(
                _raw(folder, workers, epochs, 512, 0.001))[1])
            rates[workers].append(per[workers])
        speedups.append(per[2] / per[0])
    return {"io_ms_per_item": 1.0, "speedup_2_vs_0": statistics.median(speedups),
            "range": [min(speedups), max(speedups)],
            "samples_per_s": {str(k): statistics.median(v) for k, v in rates.items()},
            "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=16,
                        help="epochs per parity round (each paired with a plain-loop epoch)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the results file whose loader section this rewrites")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "benchdata.py").write_text(DATA)
        sys.path.insert(0, str(folder))
        results = {"parity": [parity(folder, w, args.rounds, args.epochs) for w in (0, 2)],
                   "data_bound": data_bound(folder, args.rounds),
                   "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                   "load_before": list(load), "load_after": list(os.getloadavg())}
    lines = ["| workers | trainlab ms/epoch | plain ms/epoch | trainlab/plain [range over "
             "rounds] | data wait µs/step (trainlab, plain) | compute µs/step (trainlab, plain) |",
             "|---|---|---|---|---|---|"]
    for p in results["parity"]:
        lo, hi = p["range"]
        us = p["step_us"]
        lines.append(f"| {p['workers']} | {p['epoch_ms']['trainlab']:.1f} | "
                     f"{p['epoch_ms']['plain']:.1f} | {p['trainlab_vs_plain']:.3f} "
                     f"[{lo:.3f}-{hi:.3f}] ({p['pairs']} pairs) | {us['trainlab_wait']:.0f}, "
                     f"{us['plain_wait']:.0f} | {us['trainlab_compute']:.0f}, "
                     f"{us['plain_compute']:.0f} |")
    d = results["data_bound"]
    lo, hi = d["range"]
    lines += ["", f"Data-bound Dataset (1 ms of I/O per item): samples/s at 0 workers "
              f"{d['samples_per_s']['0']:.0f}, at 2 workers {d['samples_per_s']['2']:.0f}: "
              f"{d['speedup_2_vs_0']:.2f}x [{lo:.2f}-{hi:.2f}] (goal: at least 1.5x).",
              "", f"Load average before {load[0]:.2f}, after {results['load_after'][0]:.2f}."]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        head = (f"## The input pipeline (benchmarks/loader.py)\n\nWritten by "
                f"`python -m benchmarks.loader --rounds {args.rounds} --epochs {args.epochs}`, "
                f"{date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, torch "
                f"{torch.__version__}. Parity: a map-style Dataset (4,096 items, 64 features) "
                "trained by trainlab and by a plain loop over a DataLoader with the same "
                "settings, batches, model and seed, in one process, epoch by epoch in turn "
                "(either side first half the time); the ratio trainlab/plain of training "
                "seconds per epoch pair, median over the pooled pairs of epochs 2 to E "
                "[range of the per-round medians] (goal: within 3 %). Per step, the seconds "
                "spent waiting inside next() and the rest.\n\n")
        write_section(args.out, section_name("benchmarks.loader"), head + table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
