"""Overhead of trainlab's engine against a plain loop and a typical course script.

Usage:  python benchmarks/overhead.py [--rounds 5] [--workloads digits-mlp,lstm-lm] [--json F]

For each workload, in one process and in alternating order each round, it times one epoch of:
  * engine  - trainlab's loop with every measurement on at its defaults (train loss, LR and
              gradient norm every log_every=50 steps, records written to a real SQLite store,
              validation and peak memory at epoch end, checkpoints);
  * plain   - a hand-written loop: same model, data, seed and batch order, nothing measured;
  * script  - a typical course script: DataLoader over a TensorDataset, loss.item() every step,
              a tqdm bar (when tqdm is installed).
The timed region is the epoch's training steps (validation and checkpoints excluded for all).
It reports the median time per step and the ratios engine/plain and script/plain.

glibc's default malloc thresholds cause page-fault storms and 2x outliers on these small
models; the script re-executes itself with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set
high so that every contender runs under the same, steadier allocator settings.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
if any(os.environ.get(k) != v for k, v in _MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC})

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainlab.components import build_model, build_optimizer, load_dataset  # noqa: E402
from trainlab.config.schema import resolve_run  # noqa: E402
from trainlab.engine import Callback, RunState, epoch_permutation, train  # noqa: E402
from trainlab.engine.tasks import TASKS  # noqa: E402
from trainlab.store import open_store  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "digits-mlp": {
        "data": {"name": "digits", "batch_size": 32},
        "model": {"name": "mlp", "hidden_dim": 128},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    "fmnist-mlp-b32": {
        "data": {"name": "synthetic", "n_samples": 8000, "shape": [1, 28, 28], "batch_size": 32},
        "model": {"name": "mlp", "hidden_dim": 256},
        "optimizer": {"name": "sgd", "lr": 0.05},
    },
    "fmnist-mlp-b256": {
        "data": {"name": "synthetic", "n_samples": 24000, "shape": [1, 28, 28],
                 "batch_size": 256},
        "model": {"name": "mlp", "hidden_dim": 256},
        "optimizer": {"name": "sgd", "lr": 0.05},
    },
    "lstm-lm": {
        "data": {"name": "pydoc-lm", "seq_len": 32, "batch_size": 32},
        "model": {"name": "lstm", "embed_dim": 64, "hidden_dim": 128, "dropout": 0.1},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    "gpt-lm": {
        "data": {"name": "pydoc-lm", "seq_len": 32, "batch_size": 32},
        "model": {"name": "gpt", "embed_dim": 64, "hidden_dim": 128, "heads": 4},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
}


class _StepTimer(Callback):
    """Wall time from the start of an epoch to the end of its last step."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []

    def on_epoch_start(self, state: RunState) -> None:
        self.start, self.first_step = time.perf_counter(), state.step

    def on_step_end(self, state: RunState) -> None:
        self.end = time.perf_counter()
        self.steps = state.step - self.first_step

    def on_epoch_end(self, state: RunState, values: Any) -> None:
        self.epochs.append((self.end - self.start, self.steps))


def _engine(raw: dict[str, Any], store_root: Path) -> float:
    config = resolve_run(raw)
    timer = _StepTimer()
    store = open_store(store_root)
    run_id = f"bench-{time.perf_counter_ns()}"
    store.register_sweep("bench", {}, [], [(run_id, 1, {}, config.to_dict())])
    outcome = train(config, run_id=run_id, run_dir=store.run_dir(run_id), sink=store,
                    callbacks=[timer], resume=False)
    assert outcome.status == "ok", outcome.error
    store.close()
    seconds, steps = timer.epochs[-1]
    return seconds / steps


def _prepare(raw: dict[str, Any]) -> tuple[Any, Any, torch.nn.Module, torch.optim.Optimizer]:
    config = resolve_run(raw)
    data = load_dataset(config.data)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, data.info)
    return config, data, model, build_optimizer(config.optimizer, model.parameters())


def _plain(raw: dict[str, Any], _: Path) -> float:
    config, data, model, opt = _prepare(raw)
    loss_fn = TASKS[data.info.task].loss
    x_all, y_all = data.train.inputs, data.train.targets
    order = epoch_permutation(len(x_all), config.train.seed, 1)
    batches = order.split(config.data.batch_size)
    model.train()
    start = time.perf_counter()
    for idx in batches:
        x, y = x_all[idx], y_all[idx]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / len(batches)


def _script(raw: dict[str, Any], _: Path) -> float:
    config, data, model, opt = _prepare(raw)
    loss_fn = TASKS[data.info.task].loss
    loader = DataLoader(TensorDataset(data.train.inputs, data.train.targets),
                        batch_size=config.data.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    try:
        from tqdm import tqdm

        wrap: Callable[[Any], Any] = lambda it: tqdm(it, leave=False, file=sys.stderr)  # noqa: E731
    except ImportError:
        wrap = iter
    model.train()
    running, n = 0.0, 0
    start = time.perf_counter()
    for x, y in wrap(loader):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        running += loss.item()  # the habit: a host sync every step
        n += 1
    return (time.perf_counter() - start) / n


CONTENDERS: dict[str, Callable[[dict[str, Any], Path], float]] = {
    "engine": _engine, "plain": _plain, "script": _script}


def measure(name: str, rounds: int, tmp: Path) -> dict[str, Any]:
    raw = copy.deepcopy(WORKLOADS[name])
    raw["train"] = {"epochs": 1, "seed": 0}
    load_dataset(resolve_run(raw).data)  # build the data once, outside every timing
    for fn in CONTENDERS.values():  # warm-up round, discarded
        fn(raw, tmp / "warmup")
    times: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    order = list(CONTENDERS)
    for r in range(rounds):
        for key in order if r % 2 == 0 else reversed(order):
            times[key].append(CONTENDERS[key](raw, tmp / f"{name}-{r}"))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "workload": name,
        "step_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
        "range_ms": {k: [round(min(v) * 1e3, 4), round(max(v) * 1e3, 4)]
                     for k, v in times.items()},
        "engine_vs_plain": round(med["engine"] / med["plain"], 3),
        "script_vs_plain": round(med["script"] / med["plain"], 3),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            result = measure(name, args.rounds, Path(tmp))
            results.append(result)
            print(f"{name:>16}: step ms  engine {result['step_ms']['engine']:.3f}  plain "
                  f"{result['step_ms']['plain']:.3f}  script {result['step_ms']['script']:.3f}  "
                  f"| engine/plain {result['engine_vs_plain']:.3f}  script/plain "
                  f"{result['script_vs_plain']:.3f}", flush=True)
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "threads": args.threads, "cpu": platform.processor() or platform.machine()}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print("\n| workload | engine ms/step | plain ms/step | script ms/step | engine/plain | "
          "script/plain |\n|---|---|---|---|---|---|")
    for r in results:
        s = r["step_ms"]
        print(f"| {r['workload']} | {s['engine']:.3f} | {s['plain']:.3f} | {s['script']:.3f} | "
              f"{r['engine_vs_plain']:.3f} | {r['script_vs_plain']:.3f} |")
    print(f"\nmachine: {machine}")


if __name__ == "__main__":
    main()
