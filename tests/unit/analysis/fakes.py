"""Hand-made stores whose right answers are known: records written directly, no training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trainlab.records import MetricRecord
from trainlab.store import Store

MiB = 2**20


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {"data": {"name": "fake"}, "model": {"name": "mlp"},
                            "optimizer": {"name": "adam"}, "train": {"seed": 0}}
    for key, value in values.items():
        section, field = key.split(".", 1)
        tree.setdefault(section, {})[field] = value
    return tree


def add_sweep(store: Store, name: str, varied: list[str], runs: Sequence[dict[str, Any]],
              metric: str = "perplexity") -> list[str]:
    """Write a sweep: each run gives ``values`` (varied key -> value), per-epoch ``train`` and
    ``valid`` metric lists, per-epoch cumulative training ``time``; optional ``status``,
    ``memory`` (MiB), ``params``, ``test``, ``error``, ``seed``, ``disturbed`` (per-epoch
    perf/disturbed flags), ``data_wait`` (per-epoch time/data_wait_frac), ``workers``
    (data.loader.workers of a run that loaded a Dataset's items), ``splits`` (the summary's
    data splits), ``extra`` (metric name ->
    per-epoch validation values, F1 and MCC say) and ``extra_test`` (metric name -> test)."""
    rows = []
    for i, run in enumerate(runs, 1):
        values = dict(run["values"])
        if "seed" in run:
            values["train.seed"] = run["seed"]
        run_id = f"{name[:4]}{i:04d}" + "0" * 4
        rows.append((run_id, i, {k: values[k] for k in varied if k in values}, _nest(values)))
    store.register_sweep(name, {"name": name}, varied, rows)
    ids = []
    for (run_id, *_), run in zip(rows, runs):
        ids.append(run_id)
        status = run.get("status", "ok")
        if status == "pending":
            continue
        store.start_run(run_id, {"device": "cpu"})
        records = [MetricRecord(run_id, "params/total", 0, 0, 0.0, run.get("params", 1000)),
                   MetricRecord(run_id, "params/trainable", 0, 0, 0.0, run.get("params", 1000))]
        times = run["time"]
        for e, (tr, va, t) in enumerate(zip(run["train"], run["valid"], times), 1):
            step = 10 * e
            wall = t + 0.5 * e  # eval adds half a second per epoch
            loss = (lambda v: math.log(v)) if metric == "perplexity" else (lambda v: 1 - v)
            epoch_time = t - (times[e - 2] if e > 1 else 0.0)
            records += [
                MetricRecord(run_id, "train/step_loss", step - 5, e, wall - 0.3, loss(tr)),
                MetricRecord(run_id, f"valid/{metric}", step, e, wall - 0.1, va),
                MetricRecord(run_id, "valid/loss", step, e, wall - 0.1, loss(va)),
                MetricRecord(run_id, "time/eval", step, e, wall - 0.1, 0.5),
                MetricRecord(run_id, f"train/{metric}", step, e, wall, tr),
                MetricRecord(run_id, "train/loss", step, e, wall, loss(tr)),
                MetricRecord(run_id, "time/train", step, e, wall, t),
                MetricRecord(run_id, "time/epoch_train", step, e, wall, epoch_time),
                MetricRecord(run_id, "throughput/samples_per_s", step, e, wall,
                             100.0 / epoch_time),
                MetricRecord(run_id, "memory/peak_bytes", step, e, wall,
                             run.get("memory", 100) * MiB),
            ]
            if "disturbed" in run:  # per epoch: 1.0 where other work disturbed its timing
                records.append(MetricRecord(run_id, "perf/disturbed", step, e, wall,
                                            run["disturbed"][e - 1]))
            for key, values in run.get("extra", {}).items():  # valid-only metrics (f1, mcc)
                records.append(MetricRecord(run_id, f"valid/{key}", step, e, wall - 0.1,
                                            values[e - 1]))
            if "data_wait" in run:  # per epoch: the share of training time spent waiting
                records.append(MetricRecord(run_id, "time/data_wait_frac", step, e, wall,
                                            run["data_wait"][e - 1]))
        store.write(records)
        valid = run["valid"]
        if valid:
            pick = max if metric == "accuracy" else min
            best = valid.index(pick(valid)) + 1
            summary: dict[str, Any] = {
                "best_epoch": best, f"best_valid_{metric}": valid[best - 1],
                "best_valid_loss": (math.log(valid[best - 1]) if metric == "perplexity"
                                    else 1 - valid[best - 1]),
                "train_time": times[-1], "params_total": run.get("params", 1000),
                "params_trainable": run.get("params", 1000), "device": "cpu",
                "peak_memory_bytes": run.get("memory", 100) * MiB, "epochs": len(valid)}
            if "test" in run:
                summary[f"test_{metric}"] = run["test"]
            for key, values in run.get("extra", {}).items():  # at the best epoch, as the engine
                summary[f"best_valid_{key}"] = values[best - 1]
            for key, value in run.get("extra_test", {}).items():
                summary[f"test_{key}"] = value
            if "disturbed" in run:  # as the engine summarises perf/disturbed
                summary["disturbed_epochs"] = int(sum(run["disturbed"]))
                summary["timing_trusted"] = not any(run["disturbed"])
            if "splits" in run:  # sizes and sources, as the engine records them
                summary["splits"] = run["splits"]
            if "stacked" in run:  # trained in a stack of this many runs (train.stack)
                summary["stacked"] = run["stacked"]
            if "workers" in run:  # the run loaded a Dataset's items through a DataLoader
                summary["speed"] = {"loader": {"workers": run["workers"]}}
        else:
            summary = {}
        if status != "running":
            store.finish_run(run_id, status, run.get("error"), summary)
    return ids


def lm_runs() -> list[dict[str, Any]]:
    """A small lm-optimizers: lstm/gpt x adam/sgd at 1 layer, plus adam at 2 layers each.

    Known answers: best valid PPL per architecture: lstm run 5 (2 layers, 90), gpt run 3
    (adam, 80).  Target 88 (10 % over 80): run 3 reaches it first (epoch 2, 4 s), run 6 next
    (epoch 4, 16 s), no other run does.  At the shortest run's budget (run 4: 4 s) run 3 is
    best (85), run 6 second (140), run 5 has no validation yet.  Generalization: of runs 3 and
    6 (within 10 %), run 3 has the smaller gap (80/70); runs 2 and 4 have smaller gaps but bad
    PPL.  Pareto fronts (time and memory): runs 4 then 3.  Overfitting: run 5, epochs 2 to 4.
    """
    return [
        {"values": {"model.name": "lstm", "model.layers": 1, "optimizer.name": "adam"},
         "train": [300, 150, 110, 95], "valid": [260, 160, 120, 100], "time": [3, 6, 9, 12],
         "memory": 300, "params": 5000, "test": 105},
        {"values": {"model.name": "lstm", "model.layers": 1, "optimizer.name": "sgd"},
         "train": [900, 700, 600, 550], "valid": [880, 690, 610, 560], "time": [2, 4, 6, 8],
         "memory": 280, "params": 5000, "test": 570},
        {"values": {"model.name": "gpt", "model.layers": 1, "optimizer.name": "adam"},
         "train": [200, 100, 70, 60], "valid": [150, 85, 80, 81], "time": [2, 4, 6, 8],
         "memory": 250, "params": 3000, "test": 82},
        {"values": {"model.name": "gpt", "model.layers": 1, "optimizer.name": "sgd"},
         "train": [800, 500, 400, 380], "valid": [790, 495, 400, 379], "time": [1, 2, 3, 4],
         "memory": 240, "params": 3000, "test": 390},
        {"values": {"model.name": "lstm", "model.layers": 2, "optimizer.name": "adam"},
         "train": [250, 120, 80, 60], "valid": [200, 90, 95, 99], "time": [6, 12, 18, 24],
         "memory": 400, "params": 9000, "test": 92},
        {"values": {"model.name": "gpt", "model.layers": 2, "optimizer.name": "adam"},
         "train": [190, 95, 75, 70], "valid": [140, 95, 90, 87], "time": [4, 8, 12, 16],
         "memory": 320, "params": 6000, "test": 91},
    ]


LM_VARIED = ["model.name", "model.layers", "optimizer.name"]
