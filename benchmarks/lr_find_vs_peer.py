"""trainlab's LR range test against torch-lr-finder on the lr-range example (LeNet-5, digits).

Both tools get the same thing: the model initialised from the same seed, the same batches in
the same order (the training loop's order), the same exponential ramp (start, end, steps) and
the same stopping threshold (``--diverge``).  Each smooths with its own method at the same
weight (torch-lr-finder: a causal EMA, ``smooth_f = 1 - smooth``; trainlab: a zero-lag EMA of
weight ``smooth``).  torch-lr-finder suggests one LR, the steepest point of its smoothed
curve per step (after dropping 10 points at the start and 5 at the end, its defaults); the
script prints it beside trainlab's suggestions and the ratio steepest(trainlab) / steepest(peer).

    pip install -e ".[bench]"
    python -m benchmarks.lr_find_vs_peer [--steps 2000] [--json out.json] [--out BENCHMARKS.md]

It compares suggestions, not speed (the timings it prints are each tool's own wall time on the
machine at hand).  It writes the table as its dated section of BENCHMARKS.md, one per machine
(--out; --no-write to print only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import command_line, write_result
from trainlab.components import build_model, build_optimizer, load_dataset
from trainlab.components.optimizers import with_lr
from trainlab.config import expand, load_sweep
from trainlab.config.schema import LRFindSpec, RunConfig, resolve_lr_find
from trainlab.engine import epoch_permutation, seed_everything
from trainlab.engine.tasks import TASKS
from trainlab.lr.range_test import lr_find


def _batches(config: RunConfig, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training loop's batches, epoch after epoch (what trainlab's test reads)."""
    data = load_dataset(config.data)  # type: ignore[arg-type]
    bs = config.data.batch_size  # type: ignore[attr-defined]
    epoch = 1
    while True:
        order = epoch_permutation(len(data.train), seed, epoch)
        for idx in order.split(bs):
            yield data.train.inputs[idx], data.train.targets[idx]
        epoch += 1


def peer(config: RunConfig, settings: LRFindSpec) -> dict[str, Any]:
    """torch-lr-finder on the same model init, batches, ramp and stopping threshold."""
    from matplotlib.figure import Figure
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    data = load_dataset(config.data)  # type: ignore[arg-type]
    task = TASKS[data.info.task]
    seed_everything(settings.seed)
    model = build_model(config.model, data.info)
    optimizer = build_optimizer(with_lr(config.optimizer, settings.start),  # type: ignore[arg-type]
                                model.parameters())
    source = _batches(config, settings.seed)

    class Batches(TrainDataLoaderIter):  # type: ignore[misc]
        """Feeds torch-lr-finder trainlab's batch order instead of a DataLoader's."""

        def __init__(self) -> None:
            self.data_loader = None
            self.auto_reset = False

        def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
            return next(source)

    finder = LRFinder(model, optimizer, task.loss, device="cpu")
    t0 = time.perf_counter()
    finder.range_test(Batches(), start_lr=settings.start, end_lr=settings.end,
                      num_iter=settings.steps, step_mode=settings.mode,
                      smooth_f=1.0 - settings.smooth, diverge_th=int(settings.diverge))
    seconds = time.perf_counter() - t0
    ax = Figure().subplots()
    try:
        _, suggested = finder.plot(ax=ax, suggest_lr=True)
    except RuntimeError as exc:  # too few points for its skip_start + skip_end
        suggested, note = None, str(exc)
    else:
        note = ""
    finder.reset()
    lrs = finder.history["lr"]
    return {"steepest": suggested, "steps": len(lrs), "stop_lr": lrs[-1] if lrs else None,
            "seconds": seconds, "note": note}


def ours(config: RunConfig, settings: LRFindSpec) -> dict[str, Any]:
    result = lr_find(config, settings)
    sug = result.suggestions
    return {"steepest": sug.steepest, "valley": sug.valley, "minimum": sug.minimum,
            "candidates": sug.candidates, "trusted": sug.assessment.trusted,
            "flags": [f.code for f in sug.assessment.flags], "steps": result.steps,
            "stop_lr": result.stop_lr, "seconds": result.seconds}


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One row per optimizer: both tools' suggestions, steps and stopping LRs."""
    lines = ["| optimizer | steepest trainlab | steepest torch-lr-finder | ratio | valley | "
             "min/10 | candidates (trainlab) | trusted | steps trainlab / peer | stopped at LR "
             "trainlab / peer | seconds trainlab / peer |", "|---" * 11 + "|"]
    notes = []
    for r in rows:
        a, b = r["trainlab"], r["torch_lr_finder"]
        lines.append(" | ".join([
            f"| {r['optimizer']}", _fmt(a["steepest"]), _fmt(b["steepest"]),
            f"{r['steepest_ratio']:.2f}", _fmt(a["valley"]), _fmt(a["minimum"]),
            ", ".join(_fmt(c) for c in a["candidates"] or []) or "-",
            "yes" if a["trusted"] else "no (" + ", ".join(a["flags"]) + ")",
            f"{a['steps']} / {b['steps']}", f"{_fmt(a['stop_lr'])} / {_fmt(b['stop_lr'])}",
            f"{a['seconds']:.1f} / {b['seconds']:.1f} |"]))
        if b["note"]:
            notes.append(f"- {r['optimizer']}: torch-lr-finder: {b['note']}")
    return "\n".join(lines + (["", *notes] if notes else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="lr-range")
    parser.add_argument("--steps", type=int, default=None, help="default: the example's")
    parser.add_argument("--diverge", type=float, default=None, help="default: the example's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the results file whose section (for this machine) this rewrites")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = os.getloadavg()
    torch.set_num_threads(args.threads)
    sweep = load_sweep(example=args.example)
    settings = resolve_lr_find(sweep.lr_find, {"steps": args.steps, "diverge": args.diverge})
    rows = []
    seen: set[str] = set()
    for run in expand(sweep):
        name = run.config.optimizer.name
        if name in seen:
            continue
        seen.add(name)
        a, b = ours(run.config, settings), peer(run.config, settings)
        ratio = (a["steepest"] / b["steepest"] if a["steepest"] and b["steepest"]
                 else math.nan)
        rows.append({"optimizer": name, "trainlab": a, "torch_lr_finder": b,
                     "steepest_ratio": ratio})
    intro = (f"`{args.example}`: {run.config.model.name} on {run.config.data.name}, ramp "
             f"{settings.start:g} -> {settings.end:g} over {settings.steps} steps "
             f"({settings.mode}), stop at {settings.diverge:g}x the best smoothed loss, "
             f"smoothing {settings.smooth}")
    table = markdown(rows)
    print(intro + "\n\n" + table)
    if not args.no_write:
        from importlib.metadata import version

        body = (intro + ". Both tools get the same initialisation (seed "
                f"{settings.seed}), the same batches in the same order and the same ramp; each "
                "smooths its own way at the same weight (torch-lr-finder: a causal EMA; "
                "trainlab: a zero-lag EMA). torch-lr-finder suggests the steepest point of its "
                "smoothed curve after dropping 10 points at the start and 5 at the end (its "
                "defaults); ratio = steepest(trainlab) / steepest(torch-lr-finder). Suggestions, "
                "not speed, are compared (seconds: each tool's own wall time).\n\n" + table)
        write_result(args.out, "benchmarks.lr_find_vs_peer",
                     "LR range test against torch-lr-finder (benchmarks/lr_find_vs_peer.py)",
                     command_line("benchmarks.lr_find_vs_peer"), load, body,
                     versions={"torch-lr-finder": version("torch-lr-finder")},
                     device=torch.device("cpu"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": settings.model_dump(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
