"""Search against the full grid: TPE with ASHA pruning vs every point of the same space.

    python -m benchmarks.search [--epochs 8] [--trials 16] [--noise-seeds 3]

On scikit-learn's digits (an MLP), the space is a grid of learning rate x width x optimizer.
The grid trains every point once; the search (TPE + ASHA, one study) trains ``--trials``
trials of the same space.  Each side's best validation accuracy and the compute it spent (the
seconds from each run's start to its last validation, training and evaluation, summed over
runs) are compared; the grid's best configuration is then trained with ``--noise-seeds`` more
seeds for its seed noise.  The goal: the search reaches the grid's best within that noise for
at most a third of its compute.  Results go to BENCHMARKS.md (section benchmarks.search).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import trainlab
from benchmarks.common import section_name, write_section
from trainlab.store import open_store

LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
WIDTHS = [16, 32, 64, 128]
OPTIMIZERS = ["sgd", "adam"]


def base(epochs: int) -> dict[str, Any]:
    return {"data": {"name": "digits", "batch_size": 32},
            "model": {"name": "mlp", "hidden_dim": 32},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "train": {"epochs": epochs, "seed": 0, "monitor": "valid/accuracy",
                      "log_every": 100, "checkpoint_every_s": 0, "threads": 1}}


def _measure(store_root: Path, sweep: str) -> dict[str, Any]:
    """Per run: its best valid/accuracy, compute seconds, status and settings."""
    with open_store(store_root, create=False) as st:
        runs = st.runs(sweep)
        long = st.metrics(list(runs["run_id"]))
    out = []
    for run in runs.to_dict(orient="records"):
        mine = long[long["run_id"] == run["run_id"]]
        acc = mine[mine["key"] == "valid/accuracy"]["value"]
        out.append({"run_id": run["run_id"], "status": run["status"],
                    "overrides": run["overrides"], "best": float(acc.max()) if len(acc) else
                    float("nan"), "compute": float(mine["time"].max()) if len(mine) else 0.0,
                    "epochs": int(mine["epoch"].max()) if len(mine) else 0})
    return {"runs": out, "compute": sum(r["compute"] for r in out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--noise-seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        grid = {"name": "grid", **base(args.epochs), "grid": {
            "optimizer.lr": LRS, "model.hidden_dim": WIDTHS, "optimizer.name": OPTIMIZERS}}
        trainlab.run(grid, store=root, estimate=False)
        g = _measure(root, "grid")
        best = max(g["runs"], key=lambda r: r["best"])
        noise_cfg = {"name": "noise", **base(args.epochs),
                     "seeds": list(range(1, args.noise_seeds + 1))}
        for key, value in best["overrides"].items():
            section, field = key.split(".", 1)
            noise_cfg[section] = {**noise_cfg[section], field: value}
        trainlab.run(noise_cfg, store=root, estimate=False)
        noise = _measure(root, "noise")
        seed_values = [best["best"], *[r["best"] for r in noise["runs"]]]
        std = statistics.stdev(seed_values)
        search = {"name": "search", **base(args.epochs), "search": {
            "method": "tpe", "trials": args.trials, "metric": "valid/accuracy",
            "space": {"optimizer.lr": {"choice": LRS}, "model.hidden_dim": {"choice": WIDTHS},
                      "optimizer.name": {"choice": OPTIMIZERS}},
            "prune": {"method": "asha", "min_epochs": 1}}}
        # Its own store: in the grid's, every trial would be a finished grid run (same
        # config, same run id) and nothing would train or be pruned.
        trainlab.run(search, store=Path(tmp) / "search-store")
        s = _measure(Path(tmp) / "search-store", "search")
    s_best = max(s["runs"], key=lambda r: r["best"] if r["status"] == "ok" else -1.0)
    gap = best["best"] - s_best["best"]
    results = {
        "grid": {"runs": len(g["runs"]), "best": best["best"], "best_config": best["overrides"],
                 "compute_s": g["compute"], "seed_values": seed_values, "seed_std": std},
        "search": {"runs": len(s["runs"]), "pruned": sum(r["status"] == "pruned"
                                                           for r in s["runs"]),
                   "best": s_best["best"], "best_config": s_best["overrides"],
                   "compute_s": s["compute"],
                   "epochs_trained": sum(r["epochs"] for r in s["runs"])},
        "gap": gap, "within_noise": gap <= 2 * std,
        "compute_ratio": s["compute"] / g["compute"], "wall_s": time.time() - t0,
        "load_before": list(load), "load_after": list(os.getloadavg())}
    r = results
    lines = ["| | runs | epochs trained | best valid accuracy | compute s |",
             "|---|---|---|---|---|",
             f"| full grid | {r['grid']['runs']} | {r['grid']['runs'] * args.epochs} | "
             f"{r['grid']['best']:.4f} | {r['grid']['compute_s']:.1f} |",
             f"| TPE + ASHA | {r['search']['runs']} ({r['search']['pruned']} pruned) | "
             f"{r['search']['epochs_trained']} | {r['search']['best']:.4f} | "
             f"{r['search']['compute_s']:.1f} |", "",
             f"Grid best {json.dumps(r['grid']['best_config'])}; its valid accuracy over "
             f"{len(seed_values)} seeds: {', '.join(f'{v:.4f}' for v in seed_values)} (std "
             f"{std:.4f}). Search best {json.dumps(r['search']['best_config'])}.",
             f"Gap grid - search {gap:+.4f} ({'within' if r['within_noise'] else 'beyond'} 2 "
             f"seed std); search compute / grid compute {r['compute_ratio']:.2f} (goal: "
             "within the noise for at most 0.33).",
             "", f"Load average before {load[0]:.2f}, after {r['load_after'][0]:.2f}; "
             f"benchmark wall time {r['wall_s']:.0f} s."]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        head = (f"## Search vs the full grid (benchmarks/search.py)\n\nWritten by "
                f"`python -m benchmarks.search --epochs {args.epochs} --trials {args.trials} "
                f"--noise-seeds {args.noise_seeds}`, {date.today()}, {platform.machine()}, "
                f"{os.cpu_count()} CPUs. Digits MLP, {args.epochs} epochs; space: lr "
                f"{LRS} x hidden_dim {WIDTHS} x optimizer {OPTIMIZERS} "
                f"({len(LRS) * len(WIDTHS) * len(OPTIMIZERS)} points). Compute: each run's "
                "seconds from start to its last validation (training and evaluation), summed; "
                "one seed per run, sampler seed 0; the search in a store of its own.\n\n")
        write_section(args.out, section_name("benchmarks.search"), head + table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
