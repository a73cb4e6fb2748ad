"""Streaming data against map-style data: the same items as an IterableDataset and as a Dataset.

Usage (from the repository root):  python -m benchmarks.streaming [--rounds 5] [--no-write]

Four sides train the same model (the 64-256-10 MLP, Adam, batch 32, one intra-op thread) on
the same items (a synthetic 64-feature classification set of 4,096 items, each read from
memory as ``(x[i], int(y[i]))``; ``--item-us`` adds a busy wait per item, a decoding cost, a
row each: 0 and 50 µs by default):

* ``trainlab map``: trainlab on a map-style ``Dataset`` (``data: {name: python}``; its
  DataLoader path, :class:`~trainlab.components.items.ItemLoader`);
* ``trainlab iter``: trainlab on the same items as an ``IterableDataset`` (a new order per
  epoch from ``set_epoch``, split between workers by ``get_worker_info()``), with
  ``train.steps_per_epoch`` = 4,096 / 32, so an epoch is one pass, the same samples;
* ``plain map``: a hand-written loop over a ``DataLoader`` of the Dataset (trainlab's batches
  as its batch sampler, persistent workers as trainlab's default);
* ``plain iter``: a hand-written loop over ``DataLoader(iterable, batch_size=32,
  drop_last=True)``, ``set_epoch(e)`` before each epoch (the usual PyTorch idiom: workers
  started for each epoch, so that they see the new epoch).

All four live in ONE process and take turns epoch by epoch (the two trainlab runs on threads
of their own that hand a baton around, so exactly one side runs at a time), the order of the
sides rotating each epoch.  Each side's samples/s of each epoch (trainlab's
``throughput/samples_per_s``; the plain loops' samples over iter() to the last step's end);
epoch 1 is left out (start-up); per round, the median over epochs 2 to E of each epoch's
ratio; reported: the median of the pooled epoch ratios [range of the per-round medians].
``trainlab iter / trainlab map`` is the gap a user sees; ``plain iter / plain map`` what
iterable loading costs in PyTorch itself; ``trainlab iter / plain iter`` what of it is
trainlab's.  Rows for 0 and 2 ``data.loader.workers``.
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.streaming")

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.common import command_line, listed_batches_loader, write_result
from trainlab.components import build_model, build_optimizer, load_dataset
from trainlab.config.schema import resolve_run
from trainlab.engine import epoch_permutation, train
from trainlab.hooks import Callback, RunState
from trainlab.records import NullSink

N, BATCH = 4096, 32

DATA = '''
import time

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info


def _busy(us):
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


class Items(Dataset):
    """Fixed items; ``item_us`` microseconds of busy work per item (a decode)."""

    def __init__(self, n, seed, item_us=0.0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 64, generator=g)
        self.y = self.x[:, :10].argmax(1)
        self.item_us = item_us

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.item_us:
            _busy(self.item_us)
        return self.x[i], int(self.y[i])


class Stream(IterableDataset):
    """The items of ``Items`` in an order drawn from ``set_epoch``'s number, split between
    DataLoader workers by get_worker_info()."""

    def __init__(self, items):
        self.items, self.epoch = items, 0

    def set_epoch(self, n):
        self.epoch = n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.epoch % 2**63)
        order = torch.randperm(len(self.items), generator=g).tolist()
        info = get_worker_info()
        if info is not None:
            order = order[info.id::info.num_workers]
        items = self.items
        for i in order:
            yield items[i]


def mapped(n=4096, item_us=0.0):
    return {"train": Items(n, 0, item_us), "valid": Items(256, 1), "test": Items(256, 2)}


def streamed(n=4096, item_us=0.0):
    return {"train": Stream(Items(n, 0, item_us)), "valid": Items(256, 1),
            "test": Items(256, 2)}
'''

SIDES = ("trainlab map", "trainlab iter", "plain map", "plain iter")


def _raw(folder: Path, kind: str, workers: int, epochs: int, item_us: float) -> dict[str, Any]:
    train_: dict[str, Any] = {"epochs": epochs, "checkpoint": False, "threads": 1}
    if kind == "iter":
        train_["steps_per_epoch"] = N // BATCH  # one pass: the map side's samples
    return {
        "data": {"name": "python", "target": str(folder / "streamdata.py")
                 + (":streamed" if kind == "iter" else ":mapped"),
                 "args": {"n": N, "item_us": item_us}, "task": "classification",
                 "num_classes": 10, "batch_size": BATCH, "loader": {"workers": workers}},
        "model": {"name": "mlp", "hidden_dim": 256},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "train": train_,
    }


class Plain:
    """A hand-written loop over a DataLoader of the same items, model, optimizer and seed as
    trainlab's run of ``raw``; :meth:`epoch` trains one epoch and keeps its samples/s."""

    def __init__(self, raw: dict[str, Any], kind: str) -> None:
        config = self.config = resolve_run(raw)
        self.kind = kind
        data = load_dataset(config.data, config.model, steps_per_epoch=config.train.steps_per_epoch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            self.model = build_model(config.model, data.info)
        self.opt = build_optimizer(config.optimizer, self.model.parameters())
        settings = config.data.loader
        assert settings is not None
        workers = settings.workers
        split: Any = data.train
        self.batches: list[list[int]] = []
        if kind == "map":
            self.size = len(split)
            self.loader: DataLoader[Any] = listed_batches_loader(split, settings, self.batches)
        else:  # the user's IterableDataset itself, as PyTorch's docs load one
            self.size = N
            self.iterable = split.stream.iterable
            extra = {"prefetch_factor": settings.prefetch} if workers else {}
            self.loader = DataLoader(self.iterable, batch_size=config.data.batch_size,
                                     drop_last=True, num_workers=workers,
                                     collate_fn=split.collate,
                                     generator=torch.Generator().manual_seed(0), **extra)
        self.rates: dict[int, float] = {}

    def epoch(self, epoch: int) -> None:
        config, model, opt = self.config, self.model, self.opt
        if self.kind == "map":
            order = epoch_permutation(self.size, config.train.seed, epoch)
            self.batches[:] = [b.tolist() for b in order.split(config.data.batch_size)]
        else:
            self.iterable.set_epoch(epoch)
        loss_fn = torch.nn.functional.cross_entropy
        model.train()
        samples = 0
        t = time.perf_counter()
        for x, y in self.loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            samples += len(y)
        self.rates[epoch] = samples / (time.perf_counter() - t)

    def close(self) -> None:
        shutdown = getattr(getattr(self.loader, "_iterator", None), "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class Baton(Callback):
    """A trainlab run on a thread of its own that trains an epoch only when handed the baton:
    it waits at its start and after each epoch (the epoch's records, validation included, are
    made before it hands the baton back), so no other side runs while it trains."""

    def __init__(self) -> None:
        self.go, self.done = threading.Event(), threading.Event()
        self.ready = threading.Event()

    def _wait(self) -> None:
        self.go.wait()
        self.go.clear()

    def on_run_start(self, state: RunState) -> None:
        self.ready.set()
        self._wait()

    def on_epoch_end(self, state: RunState, values: Any) -> None:
        self.done.set()
        self._wait()


class Run:
    """One trainlab run on its own thread, an epoch per :meth:`epoch` call."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.sink = NullSink()
        self.baton = Baton()
        self.outcome: Any = None
        self.thread = threading.Thread(target=self._train, args=(raw,), daemon=True)
        self.thread.start()  # its setup runs now, alone; it then waits for the baton
        self._until(self.baton.ready)

    def _train(self, raw: dict[str, Any]) -> None:
        self.outcome = train(resolve_run(raw), sink=self.sink, callbacks=[self.baton])
        self.baton.ready.set()
        self.baton.done.set()

    def _until(self, event: threading.Event) -> None:
        while not event.wait(0.05):
            if not self.thread.is_alive():
                break
        event.clear()
        if self.outcome is not None and self.outcome.status != "ok":
            raise SystemExit(f"trainlab run failed: {self.outcome.error}")

    def epoch(self, epoch: int) -> None:
        self.baton.go.set()
        self._until(self.baton.done)

    def finish(self) -> dict[int, float]:
        self.baton.go.set()  # after its last epoch: test, summary, its workers stopped
        self.thread.join()
        if self.outcome is None or self.outcome.status != "ok":
            raise SystemExit(f"trainlab run failed: {getattr(self.outcome, 'error', None)}")
        return {r.epoch: r.value for r in self.sink.records
                if r.key == "throughput/samples_per_s"}


def one_round(folder: Path, workers: int, epochs: int, item_us: float, first: int
              ) -> dict[str, dict[int, float]]:
    """One round: the four sides, epoch by epoch in a rotating order; per side and epoch,
    samples/s."""
    plains = {k: Plain(_raw(folder, k, workers, epochs, item_us), k) for k in ("map", "iter")}
    runs = {k: Run(_raw(folder, k, workers, epochs, item_us)) for k in ("map", "iter")}
    turns: dict[str, Callable[[int], None]] = {
        "trainlab map": runs["map"].epoch, "trainlab iter": runs["iter"].epoch,
        "plain map": plains["map"].epoch, "plain iter": plains["iter"].epoch}
    try:
        for e in range(1, epochs + 1):
            k = (first + e) % len(SIDES)
            for side in SIDES[k:] + SIDES[:k]:
                turns[side](e)
        return {"trainlab map": runs["map"].finish(), "trainlab iter": runs["iter"].finish(),
                "plain map": plains["map"].rates, "plain iter": plains["iter"].rates}
    finally:
        for plain in plains.values():
            plain.close()


RATIOS = (("trainlab iter", "trainlab map"), ("plain iter", "plain map"),
          ("trainlab iter", "plain iter"), ("trainlab map", "plain map"))


def measure(folder: Path, workers: int, rounds: int, epochs: int, item_us: float
            ) -> dict[str, Any]:
    pooled: dict[str, list[float]] = {f"{a} / {b}": [] for a, b in RATIOS}
    per_round: dict[str, list[float]] = {k: [] for k in pooled}
    rates: dict[str, list[float]] = {s: [] for s in SIDES}
    for r in range(rounds + 1):  # round 0 warms up and is left out
        got = one_round(folder, workers, epochs, item_us, r)
        if not r:
            continue
        for a, b in RATIOS:
            ratios = [got[a][e] / got[b][e] for e in range(2, epochs + 1)]
            pooled[f"{a} / {b}"] += ratios
            per_round[f"{a} / {b}"].append(statistics.median(ratios))
        for side in SIDES:
            rates[side] += [got[side][e] for e in range(2, epochs + 1)]
    return {"workers": workers, "item_us": item_us, "rounds": rounds,
            "pairs": len(pooled[f"{RATIOS[0][0]} / {RATIOS[0][1]}"]),
            "ratios": {k: {"median": statistics.median(v), "range": [min(per_round[k]),
                                                                     max(per_round[k])]}
                       for k, v in pooled.items()},
            "samples_per_s": {s: statistics.median(v) for s, v in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per side and round")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--item-us", type=float, nargs="+", default=[0.0, 50.0],
                        help="busy microseconds per item (a decode), on every side: a row each")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the results file whose streaming section this rewrites")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    # torch's intra-op thread count is per thread: the plain loops (this thread) train on one,
    # as each trainlab run sets for its own thread (train.threads: 1).
    torch.set_num_threads(1)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "streamdata.py").write_text(DATA)
        sys.path.insert(0, str(folder))
        rows = [measure(folder, w, args.rounds, args.epochs, us)
                for us in args.item_us for w in args.workers]
    lines = ["| workers | µs/item | samples/s: trainlab map, trainlab iter, plain map, plain "
             "iter | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |",
             "|---|---|---|" + "---|" * len(RATIOS)]
    for row in rows:
        rates = ", ".join(f"{row['samples_per_s'][s]:.0f}" for s in SIDES)
        cells = []
        for a, b in RATIOS:
            got = row["ratios"][f"{a} / {b}"]
            lo, hi = got["range"]
            cells.append(f"{got['median']:.3f} [{lo:.3f}-{hi:.3f}]")
        lines.append(f"| {row['workers']} | {row['item_us']:g} | {rates} | "
                     + " | ".join(cells) + " |")
    load_after = os.getloadavg()
    lines += ["", f"{rows[0]['pairs']} epoch pairs per ratio (epochs 2 to {args.epochs} of "
              f"{args.rounds} rounds); µs/item: busy work per item (a decode). Load average "
              f"(1 min) before {load[0]:.2f}, after {load_after[0]:.2f}."]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        body = ("The same 4,096 items (64 features) as a map-style Dataset and as an "
                "IterableDataset (a new order per epoch by `set_epoch`, split between workers "
                "by `get_worker_info()`), the 64-256-10 MLP, Adam, batch 32, one thread: "
                "trainlab on each, and a plain PyTorch loop over a DataLoader of each (the "
                "iterable one with `batch_size=32, drop_last=True` and `set_epoch(e)` before "
                "each epoch), in one process, taking turns epoch by epoch in a rotating order. "
                "Samples/s per epoch; each ratio is the median of the pooled per-epoch ratios "
                "[range of the per-round medians]. `trainlab iter / trainlab map` is the gap a "
                "user sees, `plain iter / plain map` what iterable loading costs in PyTorch "
                "itself, `trainlab iter / plain iter` trainlab's part of it.\n\n" + table)
        write_result(args.out, "benchmarks.streaming", "Streaming against map-style data",
                     command_line("benchmarks.streaming"), load, body)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "load_before": list(load),
                                         "load_after": list(load_after)}, indent=2))


if __name__ == "__main__":
    main()
