"""Predicted memory and time of every run of a sweep, before it runs.

Two methods, named in every estimate:

- ``probe`` (default): a calibration probe per distinct setup (data, model, optimizer,
  fine-tuning, speed options, device) runs a few real steps on the target device and measures
  seconds per step, seconds per evaluation batch and the step's memory (see ``probe.py``);
- ``flops`` (``--no-calibrate``): time from FLOPs per step over the device's measured matmul
  peak (a lower bound: small models reach 10-60 % of it), memory from exact parameter,
  gradient and optimizer-state bytes plus activations traced on the meta device.

Peak memory means what the run will report as ``memory/peak_bytes``: on CUDA the allocator's
peak; on CPU the process's peak resident set size, so the prediction adds the process's
current size (Python, torch, the loaded data) to what the step adds.

The run's own memory (``memory/tensor_peak_bytes``, engine/measure.py: its tensors alone, what
the report compares against) is predicted as ``tensor_peak_bytes``: on CUDA the same number as
the peak (the allocator's peak is the tensors'); on CPU the probe measures one step the way the
run measures its first, and the ``flops`` method adds the data splits' bytes (and the batch as
the engine gathers it) and the optimizer's state to the peak of a forward and backward pass
traced on the meta device (weights, gradients, activations; rougher: on CPU the trace misses
some of a real step's tensors, a third of an LSTM's).

Runs that will train stacked (``train.stack``) are estimated by :mod:`.stacked`: one probe of
the stacked step per stack shape, no solo probe, every run of a stack the stack's time and
memory; ``train.stack: auto`` is capped there by a memory budget.

A probe whose timed steps other work on the machine disturbed (its threads waited for a core,
or the hypervisor stole CPU: the thresholds of ``engine/contention.py``) makes every estimate
it serves ``disturbed``, with the values it measured: its times are the machine's, not the
model's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from trainlab.components import build_finetune, build_model, load_dataset
from trainlab.components.datasets import Split
from trainlab.components.optimizers import is_auto, resolved_lr, with_lr
from trainlab.config.schema import RunConfig
from trainlab.devices import release_cached, resolve_device
from trainlab.engine import contention
from trainlab.engine.allocator import rss_bytes
from trainlab.engine.flops import measure_peak_flops, train_step_flops
from trainlab.engine.measure import storage_bytes
from trainlab.engine.speed import GATHER_BYTES, intra_op_threads
from trainlab.engine.tasks import eval_batch_size
from trainlab.engine.threads import setup_key
from trainlab.errors import ConfigError
from trainlab.estimate.memory import state_bytes, trace
from trainlab.estimate.probe import Probe, probe


@dataclass(frozen=True)
class Estimate:
    """One run's predicted parameters, memory and time."""

    method: str  # probe | flops
    params_total: int
    params_trainable: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int | None  # traced on the meta device
    base_bytes: int  # process RSS / allocated bytes before the model (data included)
    step_bytes: int  # what the model, optimizer and a step add
    peak_bytes: int  # predicted memory/peak_bytes
    flops_per_step: int | None
    peak_flops_per_s: float  # 0.0: not measured (a stack whose step its probe timed)
    step_s: float
    epoch_train_s: float
    epoch_eval_s: float
    run_s: float
    probe_s: float  # the cost of the estimate itself
    note: str | None = None  # why the probe could not be used, when it could not
    # The probe's timed steps were disturbed by other work on the machine (perf/disturbed),
    # with what it measured (engine/contention.py); False with the flops method.
    disturbed: bool = False
    cpu_share: float | None = None  # time/cpu_share
    cpu_wait: float | None = None  # time/cpu_wait
    load: float | None = None  # machine/load
    steal: float | None = None  # machine/steal
    # The intra-op threads the probe timed at: train.threads, or what auto picked for the run.
    threads: int | None = None
    # Predicted memory/tensor_peak_bytes: the run's own tensors (None: not predicted).
    tensor_peak_bytes: int | None = None
    # A run that trains stacked (train.stack, estimate/stacked.py): its stack's number (S1 is
    # 1, as `trainlab plan` numbers them), size and step path; its times and memory are then
    # the stack's.  per_model_bytes: one model's weights, gradients, optimizer state and
    # activations (what train.stack: auto's memory bound counts).
    stack: int | None = None
    stack_size: int | None = None
    stack_step: str | None = None
    per_model_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _setup_key(config: RunConfig) -> str:
    """Runs that differ only in what cannot change step time or memory share a probe (and,
    with ``train.threads: auto``, the thread count it picked: engine/threads.py)."""
    return setup_key(config)


def estimate_run(config: RunConfig, *, calibrate: bool = True,
                 cache: dict[str, Any] | None = None) -> Estimate:
    """Predict ``config``'s peak memory and time (``cache`` shares probes between runs)."""
    cache = {} if cache is None else cache
    if is_auto(config.optimizer):
        # Step time and memory do not depend on the LR: estimate before the range test picks it.
        config = replace(config, optimizer=with_lr(config.optimizer, 1e-3))
    device = resolve_device(config.train.device)
    data = load_dataset(config.data, config.model,
                        steps_per_epoch=config.train.steps_per_epoch)
    bs = config.data.batch_size
    key = _setup_key(config)  # train.nproc is part of it
    if key not in cache:
        # A DDP rank steps its share of the global batch (data.batch_size): probed, traced and
        # sized as one rank, per GPU, not as one process at the global batch.  The all-reduce
        # is not in the prediction.
        rank_bs = math.ceil(bs / config.train.nproc)
        measured_config = (config if config.train.nproc == 1 else replace(
            config, data=config.data.model_copy(update={"batch_size": rank_bs})))
        cache[key] = _measure_setup(measured_config, device, calibrate)
    parts, measured, note = cache[key]
    steps_per_epoch = math.ceil(len(data.train) / bs)
    default_eval = bs if data.info.task == "lm" else max(bs, 256)
    eval_bs = config.data.eval_batch_size or default_eval
    # As the engine batches them: a split that fits the evaluation batch is one forward.
    eval_batches, test_batches = (math.ceil(len(s) / eval_batch_size(
        data.info.task, bs, config.data.eval_batch_size, len(s))) for s in (data.valid, data.test))
    if measured is not None:
        step_s, eval_batch_s = measured.step_s, measured.eval_batch_s
        base, step_bytes, probe_s = measured.base_bytes, measured.step_bytes, measured.seconds
    else:
        rate = parts["peak_flops"]
        flops = parts["flops"] or 0
        step_s = flops / rate
        eval_batch_s = flops / 3 * eval_bs / bs / rate  # forward is about a third of a step
        base = parts["base"]
        step_bytes = parts["state"].total + (parts["trace"] or {}).get("activations", 0)
        probe_s = 0.0
    epoch_train = steps_per_epoch * step_s
    epoch_eval = eval_batches * eval_batch_s
    epochs = config.train.epochs
    state = parts["state"]
    busy = measured.busy if measured is not None else {}
    return Estimate(
        method="probe" if measured is not None else "flops",
        params_total=parts["params_total"], params_trainable=parts["params_trainable"],
        param_bytes=state.params, grad_bytes=state.grads, optimizer_bytes=state.optimizer,
        activation_bytes=(parts["trace"] or {}).get("activations"),
        base_bytes=base, step_bytes=step_bytes, peak_bytes=base + step_bytes,
        flops_per_step=parts["flops"], peak_flops_per_s=parts["peak_flops"], step_s=step_s,
        epoch_train_s=epoch_train, epoch_eval_s=epoch_eval,
        run_s=epochs * (epoch_train + epoch_eval) + test_batches * eval_batch_s,
        probe_s=probe_s, note=note, disturbed=measured is not None and measured.disturbed,
        cpu_share=busy.get(contention.CPU_SHARE_KEY), cpu_wait=busy.get(contention.CPU_WAIT_KEY),
        load=busy.get(contention.LOAD_KEY), steal=busy.get(contention.STEAL_KEY),
        threads=measured.threads if measured is not None else None,
        tensor_peak_bytes=_tensor_peak(device, base + step_bytes, parts, measured))


def _tensor_peak(device: torch.device, peak: int, parts: dict[str, Any],
                 measured: Probe | None) -> int | None:
    """The predicted ``memory/tensor_peak_bytes`` (see the module docstring)."""
    if device.type == "cuda":
        return peak
    if measured is not None:
        return measured.tensor_peak_bytes
    if parts["trace"] is None:
        return None
    # The trace's peak holds the weights, gradients and activations of one forward and
    # backward pass; a steady step holds the optimizer's state besides.
    return parts["data_bytes"] + parts["state"].optimizer + parts["trace"]["peak"]


def _batch_bytes(train: Any, bs: int) -> int:
    """Bytes of the batch a CPU run holds, as the engine gathers it (with the batches after it:
    ``engine.speed.gathered``), and of the epoch's order."""
    if not isinstance(train, Split):
        return 0
    n = len(train)
    row = math.prod(train.inputs.shape[1:]) * train.inputs.element_size()
    per_chunk = GATHER_BYTES // max(1, row * bs)
    rows = min(n, bs * per_chunk if per_chunk >= 4 else bs)
    target = math.prod(train.targets.shape[1:]) * train.targets.element_size()
    return rows * (row + target) + 8 * n


def _measure_setup(config: RunConfig, device: torch.device,
                   calibrate: bool) -> tuple[dict[str, Any], Probe | None, str | None]:
    parts = _parts(config, device)
    measured, note = None, None
    if calibrate:
        try:
            measured = probe(config)
        except torch.cuda.OutOfMemoryError:
            note = "the probe ran out of memory: the traced estimate says by how much"
        except Exception as exc:  # the run itself will fail and be stored with its error
            note = f"the probe failed ({type(exc).__name__}: {exc}); predicted from FLOPs"
        # Out of the except clause (its traceback holds the failed step's tensors): the run
        # must not find the probe's cached blocks, whatever the probe ended with.
        release_cached(device)
    # The matmul peak at the threads the run will train with (the probe's, which train.threads:
    # auto picks there; the process's without a probe): the run's start then finds it measured
    # a moment ago and does not measure again (flops.PEAK_FRESH_S), about 0.5 s on a CPU.
    parts["peak_flops"] = _peak_flops(config, device, measured.threads
                                      if measured is not None and measured.threads else None)
    return parts, measured, note


def _peak_flops(config: RunConfig, device: torch.device, threads: int | None) -> float:
    """The device's matmul peak at the run's precision, at ``threads`` (None: the process's)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision,
                                                                   torch.float32)
    with torch.random.fork_rng(devices=[]), intra_op_threads(threads):
        return measure_peak_flops(device, dtype)


LIGHT_TRACE_PARAMS = 1 << 20  # light parts: a model this small is traced for real on the CPU


def _flops(config: RunConfig, info: Any) -> int | None:
    """FLOPs of one training step (counted on the meta device)."""
    return train_step_flops(config.model, info, config.data.batch_size, config.finetune,
                            resolved_lr(config.optimizer))


def _parts(config: RunConfig, device: torch.device, *, light: bool = False) -> dict[str, Any]:
    """What the estimate knows of a setup without running it: parameter counts, exact state
    bytes, the meta-device trace, FLOPs per step, the process's memory now and the data's.

    ``light`` (a stacked setup, whose step the stacked probe times): no FLOP count (None, for
    :func:`_flops` to count when needed) and a model of at most :data:`LIGHT_TRACE_PARAMS`
    parameters traced for real on the CPU: the meta device's kernels import sympy (1-2 s of a
    process), which a stacked run never does."""
    data = load_dataset(config.data, config.model,
                        steps_per_epoch=config.train.steps_per_epoch)
    bs = config.data.batch_size
    lr = resolved_lr(config.optimizer)
    with torch.device("meta"):
        model = build_model(config.model, data.info)
        tuning = build_finetune(config.finetune, model, lr)
        model = tuning.model or model  # adapters / PEFT wrap or extend it
    trainable = [p for g in tuning.param_groups for p in g["params"] if p.requires_grad]
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    with torch.random.fork_rng(devices=[]):
        parts: dict[str, Any] = {
            "params_total": total,
            "params_trainable": sum(p.numel() for p in trainable),
            "state": state_bytes(model, config.optimizer, trainable),
            "trace": trace(config.model, config.finetune, data.info, bs, lr,
                           "cpu" if light and total <= LIGHT_TRACE_PARAMS else "meta"),
            "flops": None if light else _flops(config, data.info),
            "base": (torch.cuda.memory_allocated(device) if device.type == "cuda"
                     else rss_bytes()),
            # The data splits a CPU run keeps in memory (memory/tensor_peak_bytes counts them).
            "data_bytes": storage_bytes(
                (getattr(split, name, None) for split in (data.train, data.valid, data.test)
                 for name in ("inputs", "targets")), torch.device("cpu"))
            + _batch_bytes(data.train, bs),
        }
    return parts


def largest_fitting_batch(config: RunConfig, budget: int, estimate: Estimate) -> int | None:
    """The largest batch size whose predicted peak fits ``budget`` bytes (None: not even 1).

    Activation memory grows linearly with the batch; the probe's (or trace's) step memory at
    the configured batch gives the slope, the state (parameters, gradients, optimizer) the
    intercept.
    """
    bs = config.data.batch_size
    fixed = estimate.base_bytes + estimate.param_bytes + estimate.grad_bytes + \
        estimate.optimizer_bytes
    per_example = max(estimate.peak_bytes - fixed, 0) / bs
    if fixed >= budget:
        return None
    if per_example == 0:
        return bs
    return max(0, int((budget - fixed) // per_example)) or None


def memory_budget(value: str, device: torch.device) -> int:
    """``--fit-memory``: a byte count (``8e9``, ``16GiB``, ``512MB``) or ``auto``."""
    if value == "auto":
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[1])
        import psutil

        return int(psutil.virtual_memory().available)
    units = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10,
             "mib": 2**20, "gib": 2**30, "tib": 2**40}
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number):]
    try:
        if unit not in units:
            raise ValueError
        return int(float(number) * units[unit])
    except ValueError:
        raise ConfigError(f"`--fit-memory`: {value!r} is not a size; give bytes (8e9), a size "
                          "with a unit (16GiB, 512MB) or auto", field="--fit-memory") from None


__all__ = ["Estimate", "estimate_run", "largest_fitting_batch", "memory_budget"]


def estimate_runs(configs: dict[str, RunConfig], *, calibrate: bool = True,
                  on_setup: Any = None, stack_budget: int | None = None
                  ) -> dict[str, Estimate]:
    """Estimates for several runs (keyed by run id), one probe per distinct setup.

    Runs that will train stacked (``train.stack``, grouped as the executor groups them) get
    their stack's estimate, from one probe of the stacked step per distinct stack shape
    (:mod:`trainlab.estimate.stacked`), and no solo probe; ``stack_budget``: the bytes a
    ``train.stack: auto`` stack may take (default: half the available memory).
    ``on_setup(done, total)`` is called as setups are measured (for a progress display).
    """
    cache: dict[Any, Any] = {}
    out: dict[str, Estimate] = {}
    alone: dict[str, str] = {}
    if any(c.train.stack != "off" for c in configs.values()):
        from trainlab.estimate.stacked import estimate_stacked

        stacked, found = estimate_stacked(configs, calibrate=calibrate, cache=cache,
                                          budget=stack_budget)
        out.update(stacked)
        alone = found.fallback
    solo = {k: c for k, c in configs.items() if k not in out}
    keys = {_setup_key(c) for c in solo.values()}
    for run_id, config in solo.items():
        est = estimate_run(config, calibrate=calibrate, cache=cache)
        if run_id in alone:
            est = replace(est, note="; ".join(x for x in (alone[run_id], est.note) if x))
        out[run_id] = est
        if on_setup is not None:
            on_setup(len([k for k in cache if isinstance(k, str)]), len(keys))
    return {k: out[k] for k in configs}


__all__ += ["estimate_runs"]
