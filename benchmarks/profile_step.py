"""Where a workload's training step spends its time: torch.profiler over plain-loop steps.

Usage (from the repository root):  python -m benchmarks.profile_step gpt-lm [--steps 20]

It trains the workload's model with trainlab's optimizer (the plain loop of
``benchmarks/overhead.py``: no engine, nothing measured), skips 5 warm-up steps, profiles the
next ``--steps`` and prints the operators by self CPU time.  The profiler slows every operator,
so read the shares, not the milliseconds.  It runs under the steady heap trainlab trains with
(glibc's mmap and trim thresholds raised): under the defaults, fresh logits-sized buffers
page-fault, and the LM cross-entropy's share was twice what training pays.
"""

from __future__ import annotations

from benchmarks.common import steady_allocator

if __name__ == "__main__":
    steady_allocator("benchmarks.profile_step")

import argparse
import copy

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import WORKLOADS, _prepare
from trainlab.engine.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
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
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                    max_name_column_width=40))


if __name__ == "__main__":
    main()
