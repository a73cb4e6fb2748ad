"""trainlab against the tools people would use instead; writes BENCHMARKS.md.

Usage (from the repository root, on a quiet machine):

    pip install -e ".[bench]"
    python -m benchmarks.suite [--rounds 5] [--out BENCHMARKS.md] [--workloads a,b]

For each workload, alternating the order every round, in one process, it times the training
steps of one epoch of:

  trainlab         the engine at its defaults, every measurement on, records in SQLite
  trainlab-fast    the engine with the fastest options found for this workload on this
                   machine (the median of three alternating tries of: the defaults, fused
                   kernels forced on, one intra-op thread, bf16 autocast, fused + bf16, and on
                   a GPU channels-last; bf16 only where its matmul peak measured at the start
                   is above fp32's); the options picked are printed in the table, and
                   where the main rounds measure the pick slower than the defaults, the
                   defaults are the fastest options (the table names the rejected pick)
  plain            a hand-written loop with torch's default optimizer and loss
  script           a typical course script (DataLoader, loss.item() every step, tqdm)
  lightning        Lightning's Trainer, progress bar off
  lightning-bar    Lightning's Trainer, progress bar on

and reports median ms per step with the range, ratios to the plain loop, FLOPs per step and
model FLOPs utilization against the matmul peak (the highest of the measurements at the
start and after each workload).

On a GPU every contender trains there (benchmarks.common.bench_device); epoch times wait for
the GPU at their ends (interleaved blocks likewise), fused + bf16 and channels-last join the
candidates, and a second table gives each contender's peak allocated memory
(``torch.cuda.max_memory_allocated`` around its epoch) with trainlab's own recorded peak
checked against the allocator's.
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.suite")

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    WORKLOADS,
    Contender,
    PlainSteps,
    bench_device,
    engine,
    epoch_groups,
    interleaved,
    kept_sections,
    lightning,
    median_step_ratio,
    model_spec,
    plain,
    script,
    section_name,
    with_options,
    write_section,
)
from trainlab.components import load_dataset
from trainlab.config.schema import resolve_run
from trainlab.engine.flops import sample_peak_flops, train_step_flops
from trainlab.engine.measure import cpu_name
from trainlab.mfu import unreliable

FAST_CANDIDATES: list[dict[str, Any]] = [
    {},
    {"optimizer.fused": True},
    {"train.threads": 1},
    {"train.precision": "bf16"},
    {"optimizer.fused": True, "train.precision": "bf16"},
]


def candidates_for(peaks: dict[str, float]) -> list[dict[str, Any]]:
    """The option sets worth trying here: not bf16 where its matmuls are slower than fp32's
    (a CPU without native bf16 instructions emulates them: on a Zen 3 EPYC, 1.3 GFLOP/s
    against 120, which would turn the MiniLM workload's tries into hours)."""
    candidates = list(FAST_CANDIDATES)
    if bench_device().type == "cuda":
        candidates.append({"train.precision": "bf16", "train.channels_last": True})
    if peaks["bf16"] < peaks["fp32"]:
        candidates = [c for c in candidates if c.get("train.precision") != "bf16"]
    return candidates


def _pick_fast(raw: dict[str, Any], tmp: Path, candidates: list[dict[str, Any]],
               rounds: int = 3) -> dict[str, Any]:
    """The option set with the lowest median step time over a few alternating rounds.

    One try per candidate is too noisy here: a single slow epoch once picked bf16 for the
    batch-10 MLP, which is slower than the defaults there. Candidates are tried in turn, the
    order reversed every round, and the median decides; the pick is then measured again with
    the other contenders, so a wrong pick costs the table its fastest column, never its honesty.
    """
    times: list[list[float]] = [[] for _ in candidates]
    for r in range(rounds):
        order = range(len(candidates)) if r % 2 == 0 else reversed(range(len(candidates)))
        for i in order:
            times[i].append(engine(with_options(raw, candidates[i]), tmp / "pick"))
    medians = [statistics.median(t) for t in times]
    return candidates[medians.index(min(medians))]


def measure(name: str, rounds: int, tmp: Path,
            candidates: list[dict[str, Any]]) -> dict[str, Any]:
    raw = copy.deepcopy(WORKLOADS[name])
    raw["train"] = {"epochs": 1, "seed": 0}
    config = resolve_run(raw)
    data = load_dataset(config.data, config.model)
    fast = _pick_fast(raw, tmp, candidates)
    summary: dict[str, Any] = {}  # the last engine run's (its recorded peak memory)
    contenders: dict[str, Contender] = {
        "trainlab": lambda r, t: engine(r, t, summary=summary),
        "trainlab-fast": lambda r, t: engine(with_options(r, fast), t),
        "plain": plain,
        "script": script,
        "lightning": lightning,
        "lightning-bar": lambda r, t: lightning(r, t, progress_bar=True),
    }
    for fn in contenders.values():  # warm-up round, discarded
        fn(raw, tmp / "warmup")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    gpu = bench_device().type == "cuda"
    peaks: dict[str, list[float]] = {k: [] for k in contenders}  # on a GPU, bytes
    recorded: list[float] = []  # trainlab's own peak_memory_bytes, each round
    order = list(contenders)
    for r in range(rounds):
        for key in order if r % 2 == 0 else reversed(order):
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            times[key].append(contenders[key](raw, tmp / f"{name}-{r}"))
            if gpu:
                peaks[key].append(float(torch.cuda.max_memory_allocated()))
                if key == "trainlab":
                    recorded.append(float(summary["peak_memory_bytes"]))
        print(f"  {name} round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    bs = raw["data"]["batch_size"]
    flops = train_step_flops(model_spec(raw), data.info, bs)
    med = {k: statistics.median(v) for k, v in times.items()}
    picked = fast
    if fast and med["trainlab-fast"] > med["trainlab"]:
        # The short tries picked options that the main rounds measured slower than the
        # defaults: the fastest options measured are the defaults, and the table says so.
        times["trainlab-fast"], med["trainlab-fast"] = times["trainlab"], med["trainlab"]
        fast = {}
    # The defaults and the picked options against the plain loop again, interleaved in one run
    # (as benchmarks/overhead.py: blocks of ~10 ms of steps in turn, so both see the same
    # machine); the whole-epoch rounds above spread by tens of percent on a shared VM.
    # Not for a thread count of its own: train.threads holds process-wide for the engine's
    # run, so the plain loop would run with it too (and switching the pool at every block
    # slowed the steps after the switch).
    interleaved_ratio = {"trainlab": _interleaved_vs_plain(raw, tmp / f"{name}-il")}
    if picked and "train.threads" not in picked:
        interleaved_ratio["picked"] = _interleaved_vs_plain(with_options(raw, picked),
                                                            tmp / f"{name}-il-picked")
    return {
        "workload": name, "batch_size": bs, "flops_per_step": flops, "fast_options": fast,
        "picked_options": picked,
        "step_ms": {k: v * 1e3 for k, v in med.items()},
        "range_ms": {k: [min(v) * 1e3, max(v) * 1e3] for k, v in times.items()},
        "vs_plain": {k: v / med["plain"] for k, v in med.items()},
        "interleaved_vs_plain": interleaved_ratio,
        "rounds": rounds,
        "peak_bytes": {k: max(v) for k, v in peaks.items()} if gpu else None,
        # trainlab's recorded peak and the allocator's around the same run, each round.
        "recorded_peak_bytes": list(zip(recorded, peaks["trainlab"])) if gpu else None,
    }


def _interleaved_vs_plain(engine_raw: dict[str, Any], store: Path) -> list[float]:
    """The engine (with ``engine_raw``'s options) against the plain loop (torch's default
    optimizer, the process's thread count) stepped in turn in one run: the median of per-step
    ratios in each of up to 5 groups of epochs, then [median, min, max] over the groups."""
    # The plain loop reads only the model, data, seed and optimizer name and LR of the config.
    plain_steps = PlainSteps(engine_raw, trainlab_optimizer=False)
    per_epoch = interleaved(engine_raw, store, 3, {"plain": plain_steps}, seconds=4.0)
    ratios = [median_step_ratio(g, "engine", "plain") for g in epoch_groups(per_epoch, 5)]
    return [statistics.median(ratios), min(ratios), max(ratios)]


def add_mfu(result: dict[str, Any], peak: dict[str, float]) -> None:
    """Model FLOPs utilization of each contender's median step against ``peak`` (the bf16
    peak for the fast options when they train in bf16)."""
    flops, fast = result["flops_per_step"], result["fast_options"]
    fast_peak = peak["bf16"] if fast.get("train.precision") == "bf16" else peak["fp32"]
    result["mfu"] = {k: (flops / (ms / 1e3) / (fast_peak if k == "trainlab-fast"
                                                  else peak["fp32"]) if flops else None)
                     for k, ms in result["step_ms"].items()}
    # Above 1 the peak was measured low (a busy machine): no number, as in trainlab's records.
    result["mfu_unreliable"] = sorted(k for k, v in result["mfu"].items() if unreliable(v))
    result["mfu"] = {k: None if unreliable(v) else v for k, v in result["mfu"].items()}


def matmul_peaks(device: torch.device) -> dict[str, float]:
    """fp32 and bf16 matmul peaks, measured afresh by the engine's own measurement (each also
    raises the process's cached peak, which the engine runs of the suite then divide by)."""
    return {"fp32": sample_peak_flops(device, torch.float32, seconds=1.0),
            "bf16": sample_peak_flops(device, torch.bfloat16, seconds=1.0)}


PREAMBLE = """# Benchmarks

Generated: each section below is written by the script it names (`benchmarks/*.py`), with the
command, date, machine, load average and versions of its run, one block per benchmark and
machine (a run on another machine, a GPU, adds its own block). Nothing here is written by hand;
how each benchmark measures is in docs/benchmarks/index.md.
"""


def _markdown(results: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    fp32, bf16 = machine["peaks_measured"]["fp32"], machine["peaks_measured"]["bf16"]
    names = ["trainlab", "trainlab-fast", "plain", "script", "lightning", "lightning-bar"]
    lines = [
        f"## Against other tools (benchmarks/suite.py): {machine.get('gpu') or machine['cpu']}"
        + ("" if machine.get("gpu") else f", {machine['threads']} threads"), "",
        "Regenerate with the command below on a quiet machine. Each cell: median milliseconds "
        "per training step over the rounds (range in brackets); the ratio to the plain loop "
        "(lower is faster); model FLOPs utilization (MFU) against the matmul peak (the highest "
        "measured in the run).", "",
        f"- command: `{command}`",
        f"- date: {machine['date']}",
        f"- machine: {machine['cpu']}, {machine['threads']} threads; "
        f"{machine.get('gpu') or 'no GPU'}",
        f"- load average (1 min): {machine['load_before'][0]:.2f} at the start, "
        f"{machine['load_after'][0]:.2f} at the end ({os.cpu_count()} CPUs)",
        f"- versions: python {machine['python']}, torch {machine['torch']}, "
        f"lightning {machine.get('lightning')}",
        f"- matmul peak: fp32 {machine['peak_fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {machine['peak_bf16'] / 1e9:.1f} GFLOP/s, the highest of the measurements "
        "at the start and after each workload (fp32 "
        + "-".join(f"{v / 1e9:.0f}" for v in (min(fp32), max(fp32))) + ", bf16 "
        + "-".join(f"{v / 1e9:.0f}" for v in (min(bf16), max(bf16))) + ")",
        "- fast options tried: " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in c.items()) or "defaults"
            for c in machine["candidates"])
        + ("" if any(c.get("train.precision") == "bf16" for c in machine["candidates"])
           else " (not bf16: its matmul peak here is below fp32's)"), "",
        "| workload | " + " | ".join(names) + " | fast options | GFLOP/step |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for r in results:
        cells = []
        for n in names:
            lo, hi = r["range_ms"][n]
            mfu = r["mfu"][n]
            cells.append(f"{r['step_ms'][n]:.3f} [{lo:.3f}-{hi:.3f}]<br>x{r['vs_plain'][n]:.2f}"
                         + (f", MFU {mfu:.1%}" if mfu is not None else "")
                         + (", MFU unreliable" if n in r.get("mfu_unreliable", []) else ""))
        fast = ", ".join(f"{k}={v}" for k, v in r["fast_options"].items()) or "defaults"
        if r["picked_options"] != r["fast_options"]:
            fast += " (picked " + ", ".join(f"{k}={v}" for k, v in r["picked_options"].items()) \
                + ": slower in the main rounds)"
        gflop = f"{r['flops_per_step'] / 1e9:.4f}" if r["flops_per_step"] else "n/a"
        lines.append(f"| {r['workload']} | " + " | ".join(cells) + f" | {fast} | {gflop} |")
    lines += ["", "Interleaved in one run: the engine at its defaults and with the picked options, "
              "each against the plain loop stepped in turn (blocks of ~10 ms of steps, as "
              "`benchmarks/overhead.py`); the median of per-step ratios over up to 5 groups of "
              "epochs [range]. Lower is faster. A pick with its own thread count is not "
              "interleaved (—): the plain loop would run with it too.", "",
              "| workload | trainlab (defaults) / plain | picked options / plain | picked |",
              "|---|---|---|---|"]
    for r in results:
        il = r["interleaved_vs_plain"]
        cells = [f"x{il[k][0]:.3f} [{il[k][1]:.3f}-{il[k][2]:.3f}]" if k in il else "—"
                 for k in ("trainlab", "picked")]
        picked = ", ".join(f"{k}={v}" for k, v in r["picked_options"].items()) or "defaults"
        lines.append(f"| {r['workload']} | {cells[0]} | {cells[1]} | {picked} |")
    if any(r.get("peak_bytes") for r in results):
        lines += _memory_markdown(results, names)
    lines += ["", "trainlab's default optimizer uses fused kernels where they are exact "
              "(`optimizer.fused: auto`), and its LM loss a cross-entropy whose backward needs "
              "no second pass of exponentials; plain, script and Lightning use torch's "
              "defaults (the for-loop optimizer kernels on CPU, `F.cross_entropy`). "
              "`benchmarks/overhead.py` measures the engine's pure overhead with identical "
              "kernels.", ""]
    return "\n".join(lines)


def _memory_markdown(results: list[dict[str, Any]], names: list[str]) -> list[str]:
    """The GPU memory table: each contender's peak allocated MiB (the largest over rounds),
    and trainlab's recorded peak against the allocator's around the same runs."""
    lines = ["", "Peak GPU memory: `torch.cuda.max_memory_allocated` around each contender's "
             "run (reset before it), MiB, the largest over the rounds. The last column checks "
             "trainlab's recorded `peak_memory_bytes` against the allocator's around the same "
             "run: the largest relative difference over the rounds.", "",
             "| workload | " + " | ".join(names) + " | trainlab recorded vs allocator |",
             "|---|" + "---|" * (len(names) + 1)]
    for r in results:
        peaks, pairs = r["peak_bytes"], r["recorded_peak_bytes"]
        worst = max(abs(a - b) / b for a, b in pairs) if pairs else float("nan")
        cells = [f"{peaks[n] / 2**20:.1f}" for n in names]
        lines.append(f"| {r['workload']} | " + " | ".join(cells) + f" | {worst:.2%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = bench_device()
    # Measured at the start and after every workload, the highest kept: a peak measured while
    # the shared machine was slow would overstate every MFU (one run read 98 GFLOP/s at its
    # start; two measurements a minute apart read 138 and 177).
    measured = [matmul_peaks(device)]
    try:
        import lightning as L

        lightning_version = L.__version__
    except ImportError:
        sys.exit("Lightning is not installed: pip install -e '.[bench]'")
    candidates = candidates_for(measured[0])
    machine: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_name(),
        "load_before": list(os.getloadavg()),
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "lightning": lightning_version,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "candidates": candidates,
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            result = measure(name, args.rounds, Path(tmp), candidates)
            results.append(result)
            print(f"{name}: " + ", ".join(f"{k} x{v:.2f}" for k, v in result["vs_plain"].items()),
                  flush=True)
            measured.append(matmul_peaks(device))
    machine["peaks_measured"] = {k: [m[k] for m in measured] for k in measured[0]}
    peak = {k: max(v) for k, v in machine["peaks_measured"].items()}
    machine["peak_fp32"], machine["peak_bf16"] = peak["fp32"], peak["bf16"]
    for result in results:
        add_mfu(result, peak)
    machine["load_after"] = list(os.getloadavg())
    command = "python -m benchmarks.suite " + " ".join(sys.argv[1:])
    # One block per machine: a run elsewhere (a GPU) adds its own section.  The file's head is
    # rewritten; every marked section (other benchmarks', other machines') is kept.
    kept = kept_sections(args.out)
    args.out.write_text(PREAMBLE + ("\n" + kept if kept else ""))
    write_section(args.out, section_name("benchmarks.suite", device),
                  _markdown(results, machine, command.strip()))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
