"""The estimate of runs that train stacked (``train.stack``), and the memory bound of ``auto``.

A run in a stack trains as one model with the stack's other runs: its wall-clock and its memory
are the stack's.  So the estimate groups the runs as the executor will
(:func:`trainlab.stacks.plan_stacks`) and, for each distinct stack shape (setup and size),
times a few real steps of the stacked step itself on a stack of that size
(:func:`trainlab.engine.stack_probe.probe_stack`) instead of the solo probe: each run of a
stack is predicted the stack's step, epoch and run time and the stack's memory (all its models
together), and says so (``stack``, ``stack_size``, ``stack_step``).  No torch optimizer is
built for a stacked run, so the estimate of a stacked sweep does not import ``torch._dynamo``
(about 1 s a process).  A model the stacked step cannot batch falls back to the solo probe, and
its runs' notes say why (the executor trains them alone).  With ``--no-calibrate`` a stack's
step is N models' FLOPs over the matmul peak, its memory N models' state and activations.

``train.stack: auto`` stacks up to :data:`~trainlab.stacks.AUTO_STACK` runs *and* no more than
a memory budget holds: one model's weights, gradients, optimizer state and activations at the
batch size (exact bytes and a traced pass, :mod:`trainlab.estimate.memory`: for real on the CPU
for a small model, whose meta-device trace would import sympy, 1-2 s; no FLOP count) times the
stack's size must fit half the available RAM on a CPU (a container's limit counted) or half
the GPU's free memory (``TRAINLAB_STACK_MEMORY`` sets the budget: ``512MB``, ``2GiB``, bytes).
A group capped that way splits into stacks as even as the cap allows, and ``trainlab plan``
and ``trainlab estimate`` say so.  An explicit ``train.stack: N`` is kept as given; the
estimate and the plan warn when N models would not fit the budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import torch

from trainlab.components import load_dataset
from trainlab.config.schema import RunConfig
from trainlab.devices import release_cached, resolve_device
from trainlab.engine import contention
from trainlab.engine.threads import setup_key
from trainlab.estimate import Estimate, _flops, _parts, _peak_flops, memory_budget
from trainlab.stacks import StackCap, StackPlan, plan_stacks, remember_caps, stack_key

if TYPE_CHECKING:
    from trainlab.engine.stack_probe import StackProbe
    from trainlab.plan import PlannedRun

BUDGET_ENV = "TRAINLAB_STACK_MEMORY"  # the budget of train.stack: auto, instead of half of free
BUDGET_SHARE = 0.5  # of the available RAM (CPU) or the GPU's free memory


def stack_budget(device: torch.device) -> tuple[int, str]:
    """The bytes N stacked models may take, and where the number comes from."""
    text = os.environ.get(BUDGET_ENV)
    if text:
        return memory_budget(text, device), f"{BUDGET_ENV}={text}"
    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
        return int(free * BUDGET_SHARE), "half the GPU's free memory"
    from trainlab.components.arrow_data import available_memory

    return int(available_memory() * BUDGET_SHARE), "half the available RAM"


def per_model_bytes(parts: Mapping[str, Any]) -> int:
    """One model's weights, gradients, optimizer state and activations at the batch size."""
    return int(parts["state"].total + (parts["trace"] or {}).get("activations", 0))


def _size(n: float) -> str:
    from trainlab.analysis.fmt import format_bytes

    return format_bytes(int(n))


@dataclass
class StackLayout:
    """The stacks of a set of runs within the memory budget; ``warnings`` by run id (an explicit
    ``train.stack: N`` over the budget); ``per_model`` bytes by stack key; ``fallback``: the
    runs of a stack whose stacked step cannot batch the model, and why (estimated alone)."""

    plan: StackPlan
    caps: dict[str, StackCap] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    per_model: dict[str, int] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Planned:
    """What :func:`trainlab.stacks.plan_stacks` reads of a planned run."""

    run_id: str
    run: Any  # has .config


@dataclass(frozen=True)
class _Run:
    config: RunConfig


def layout(runs: Sequence[PlannedRun] | Mapping[str, RunConfig], *,
           budget: int | None = None, cache: dict[Any, Any] | None = None,
           remember: bool = False) -> StackLayout:
    """Group ``runs`` (planned runs, or configs by run id) into stacks as the executor will,
    ``train.stack: auto`` groups capped by the memory budget (``budget`` bytes; default
    :func:`stack_budget`).  ``remember``: keep the caps for the executor's own
    :func:`~trainlab.stacks.plan_stacks` in this process (``trainlab run``)."""
    cache = {} if cache is None else cache
    items: list[Any] = (list(runs) if not isinstance(runs, Mapping) else
                        [_Planned(rid, _Run(c)) for rid, c in runs.items()])
    planned = cast("list[PlannedRun]", items)
    out = StackLayout(plan_stacks(planned, limit_for=lambda c: None))  # no cap: the groups
    grouped = {p.run_id for s in out.plan.stacks for p in s}
    seen: dict[str, RunConfig] = {}
    for p in planned:
        if p.run_id in grouped:
            seen.setdefault(stack_key(p.run.config), p.run.config)
    for key, config in seen.items():
        device = resolve_device(config.train.device)
        try:
            bytes_one = per_model_bytes(_cached_parts(config, device, cache))
        except Exception:  # the run will fail with its own error; no cap to decide here
            continue
        out.per_model[key] = bytes_one
        limit, source = (budget, "given") if budget is not None else stack_budget(device)
        if config.train.stack == "auto":
            size = max(1, int(limit // max(bytes_one, 1)))
            out.caps[key] = StackCap(size, f"{_size(bytes_one)} a model for weights, "
                                           f"gradients, optimizer state and activations, "
                                           f"within {_size(limit)}, {source}")
            continue
        # An explicit size: kept, with a warning when its largest stack would not fit.
        n = max(len(s) for s in out.plan.stacks if stack_key(s[0].run.config) == key)
        if n * bytes_one > limit:
            line = (f"train.stack: {config.train.stack} kept as given, but {n} models take about "
                    f"{_size(n * bytes_one)} ({_size(bytes_one)} each), over the memory "
                    f"budget of {_size(limit)} ({source}); train.stack: auto would stack "
                    f"{max(1, int(limit // max(bytes_one, 1)))}")
            out.warnings.update((p.run_id, line) for p in planned
                                if stack_key(p.run.config) == key)
    out.plan = plan_stacks(planned, limit_for=lambda c: out.caps.get(stack_key(c)))
    if remember:
        remember_caps(out.caps)
    return out


def _cached_parts(config: RunConfig, device: torch.device, cache: dict[Any, Any]
                  ) -> dict[str, Any]:
    key = ("parts", setup_key(config))
    if key not in cache:  # light: no FLOP count, a small model traced for real (no sympy)
        cache[key] = _parts(config, device, light=True)
    parts: dict[str, Any] = cache[key]
    return parts


def estimate_stack(configs: Sequence[RunConfig], *, calibrate: bool,
                   cache: dict[Any, Any]) -> Estimate | str:
    """The estimate every run of one stack gets (the stack's time and memory), or why the
    stacked step cannot train them (then they train, and are estimated, alone)."""
    config, n = configs[0], len(configs)
    device = resolve_device(config.train.device)
    parts = _cached_parts(config, device, cache)
    key = ("stack", setup_key(config), n)
    if key not in cache:
        measured: StackProbe | None = None
        note = unsupported = None
        if calibrate:
            from trainlab.engine.stack import StackUnsupported, is_out_of_memory
            from trainlab.engine.stack_probe import probe_stack

            try:
                measured = probe_stack(configs)
            except StackUnsupported as exc:
                unsupported = exc.reason
            except Exception as exc:  # the stack itself will split or fail with its error
                what = ("ran out of memory" if is_out_of_memory(exc)
                        else f"failed ({type(exc).__name__}: {str(exc)[:200]})")
                note = f"the stacked probe {what}; predicted from FLOPs and the trace"
            release_cached(device)  # out of the except clause, as the solo probe's
        if unsupported is not None:
            cache[key] = unsupported
        else:
            cache[key] = (measured, note)
    if isinstance(cache[key], str):
        return str(cache[key])
    measured, note = cache[key]
    # The matmul peak only where the step is predicted from FLOPs (a stacked run does not
    # measure it; about 0.4 s on a busy CPU): 0.0 for a probed stack.
    peak = ("peak", setup_key(config))
    if measured is None and peak not in cache:
        cache[peak] = _peak_flops(config, device, None)
    return _stack_estimate(configs, parts, cache.get(peak, 0.0) if measured is None else 0.0,
                           measured, note)


def _stack_estimate(configs: Sequence[RunConfig], parts: dict[str, Any], peak_flops: float,
                    measured: StackProbe | None, note: str | None) -> Estimate:
    config, n = configs[0], len(configs)
    device = resolve_device(config.train.device)
    data = load_dataset(config.data, config.model)
    bs = config.data.batch_size
    eval_bs = config.data.eval_batch_size or max(bs, 256)  # as the stacked trainer evaluates
    steps = math.ceil(len(data.train) / bs)
    eval_batches, test_batches = (math.ceil(len(s) / eval_bs) for s in (data.valid, data.test))
    state, traced = parts["state"], parts["trace"] or {}
    if measured is None and parts["flops"] is None:  # the flops method needs them after all
        parts["flops"] = _flops(config, data.info)
    flops = parts["flops"]
    if measured is not None:
        step_s, eval_batch_s = measured.step_s, measured.eval_batch_s
        base, step_bytes = measured.base_bytes, measured.step_bytes
        tensor_peak = (base + step_bytes if device.type == "cuda"
                       else measured.tensor_peak_bytes)
    else:  # N models' work per step; N models' state and activations
        step_s = n * (flops or 0) / peak_flops
        eval_batch_s = n * (flops or 0) / 3 * eval_bs / bs / peak_flops
        base, step_bytes = parts["base"], n * per_model_bytes(parts)
        tensor_peak = (base + step_bytes if device.type == "cuda" else
                       None if parts["trace"] is None else
                       parts["data_bytes"] + n * (state.optimizer + traced["peak"]))
    epoch_train, epoch_eval = steps * step_s, eval_batches * eval_batch_s
    busy = measured.busy if measured is not None else {}
    return Estimate(
        method="probe" if measured is not None else "flops",
        params_total=parts["params_total"], params_trainable=parts["params_trainable"],
        param_bytes=n * state.params, grad_bytes=n * state.grads,
        optimizer_bytes=n * state.optimizer,
        activation_bytes=n * traced["activations"] if "activations" in traced else None,
        base_bytes=base, step_bytes=step_bytes, peak_bytes=base + step_bytes,
        flops_per_step=n * flops if flops is not None else None, peak_flops_per_s=peak_flops,
        step_s=step_s, epoch_train_s=epoch_train, epoch_eval_s=epoch_eval,
        run_s=config.train.epochs * (epoch_train + epoch_eval) + test_batches * eval_batch_s,
        probe_s=measured.seconds if measured is not None else 0.0, note=note,
        disturbed=measured is not None and measured.disturbed,
        cpu_share=busy.get(contention.CPU_SHARE_KEY), cpu_wait=busy.get(contention.CPU_WAIT_KEY),
        load=busy.get(contention.LOAD_KEY), steal=busy.get(contention.STEAL_KEY),
        threads=measured.threads if measured is not None else None,
        tensor_peak_bytes=tensor_peak, stack_size=n,
        stack_step=measured.stack_step if measured is not None else None,
        per_model_bytes=per_model_bytes(parts))


def estimate_stacked(configs: Mapping[str, RunConfig], *, calibrate: bool,
                     cache: dict[Any, Any], budget: int | None = None
                     ) -> tuple[dict[str, Estimate], StackLayout]:
    """Estimates of the runs of ``configs`` that train stacked (keyed by run id), and the
    layout (the others are left to the solo estimate: those of a stack the stacked step cannot
    batch with the reason in ``layout.fallback``).  Remembers the caps for the executor."""
    found = layout(configs, budget=budget, cache=cache, remember=True)
    out: dict[str, Estimate] = {}
    for number, stack in enumerate(found.plan.stacks, 1):
        got = estimate_stack([p.run.config for p in stack], calibrate=calibrate, cache=cache)
        if isinstance(got, str):
            found.fallback.update((p.run_id, f"the stacked step cannot batch this model "
                                                f"({got}): estimated, and trained, alone")
                                  for p in stack)
            continue
        for p in stack:
            notes = [x for x in (got.note, found.plan.capped.get(p.run_id),
                                 found.warnings.get(p.run_id)) if x]
            out[p.run_id] = replace(got, stack=number, note="; ".join(notes) or None)
    return out, found


def sweep_seconds(estimates: Mapping[str, Estimate]) -> float:
    """The sweep's predicted time: each stack's once (its runs share its wall-clock)."""
    stacks = {e.stack: e.run_s for e in estimates.values() if e.stack is not None}
    return sum(e.run_s for e in estimates.values() if e.stack is None) + sum(stacks.values())


__all__ = ["BUDGET_ENV", "StackLayout", "estimate_stack", "estimate_stacked", "layout",
           "per_model_bytes", "stack_budget", "sweep_seconds"]
