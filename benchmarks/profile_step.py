"""Where a workload's training step spends its time: torch.profiler over plain-loop steps.

Usage (from the repository root):  python -m benchmarks.profile_step gpt-lm [--steps 20]
                                   [--out BENCHMARKS.md] [--no-write]

It trains the workload's model with trainlab's optimizer (the plain loop of
``benchmarks/overhead.py``: no engine, nothing measured), skips 5 warm-up steps, profiles the
next ``--steps`` and prints the operators by self CPU time.  The profiler slows every operator,
so read the shares, not the milliseconds.  It runs under the steady heap trainlab trains with
(glibc's mmap and trim thresholds raised): under the defaults, fresh logits-sized buffers
page-fault, and the LM cross-entropy's share was twice what training pays.

It writes the table as its dated section of BENCHMARKS.md, one per workload and machine
(--out; --no-write to print only).
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.profile_step")

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import WORKLOADS, _prepare, command_line, write_result
from trainlab.engine.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="the results file whose section (workload, machine) this rewrites")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = os.getloadavg()
    raw = copy.deepcopy(WORKLOADS[args.workload])
    raw["train"] = {"epochs": 1, "seed": 0}
    config, data, model, opt = _prepare(raw, True)
    loss_fn = TASKS[data.info.task].loss
    x_all, y_all = data.train.inputs, data.train.targets
    bs = config.data.batch_size

    def step(i: int) -> None:
        idx = torch.arange(i * bs, (i + 1) * bs) % len(x_all)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x_all[idx]), y_all[idx]).backward()
        opt.step()

    for i in range(5):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            step(5 + i)
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows,
                         max_name_column_width=40))
    if not args.no_write:
        write_result(args.out, f"benchmarks.profile_step.{args.workload}",
                     f"Where a {args.workload} step spends its time (benchmarks/profile_step.py)",
                     command_line("benchmarks.profile_step"), load,
                     markdown(averages, args.workload, args.steps, args.rows))


def markdown(averages: Any, workload: str, steps: int, rows: int) -> str:
    """The ``rows`` operators with the most self CPU time, with their share of the total."""
    events = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    matmul = sum(e.self_cpu_time_total for e in events
                 if e.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul"))
    lines = [f"torch.profiler (CPU activity) over {steps} plain-loop steps of `{workload}` "
             "(trainlab's optimizer and loss, after 5 warm-up steps, under the steady heap); "
             "operators by self CPU time. The profiler slows every operator: read the shares, "
             f"not the milliseconds. Matrix multiplies (mm, bmm, addmm: what MFU counts) "
             f"take {matmul / total:.1%} of the self CPU time.", "",
             "| operator | self CPU % | self CPU ms per step | calls per step |",
             "|---|---|---|---|"]
    for e in events[:rows]:
        lines.append(f"| `{e.key}` | {e.self_cpu_time_total / total:.1%} | "
                     f"{e.self_cpu_time_total / 1e3 / steps:.3f} | {e.count / steps:g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
