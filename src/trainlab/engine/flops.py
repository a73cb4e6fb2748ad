"""FLOPs per training step and the device's measured matmul peak, for model FLOPs utilization.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the *meta* device: no
memory, no time, and no effect on the real model or the RNG.  (On the CPU device the counter
misses the LSTM, which runs as a oneDNN op it does not know; on meta the LSTM decomposes into
matmuls it counts.)  The peak is the best rate of a large square matmul on the device, measured
per process as the best of short measurements and kept, raised by any later one that beats it,
and shared across processes through a small cache file (see :func:`measure_peak_flops`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainlab.components import DataInfo, build_finetune, build_model
from trainlab.components.finetune.base import FinetuneSpec
from trainlab.components.models import ModelSpec
from trainlab.components.optimizers import no_dynamo_import
from trainlab.devices import synchronize
from trainlab.engine import contention, machine, peak_cache


def train_step_flops(model_spec: ModelSpec, info: DataInfo, batch_size: int,
                     finetune: FinetuneSpec | None = None, lr: float = 1.0) -> int | None:
    """FLOPs of one forward and backward pass on a batch, or None when they cannot be traced.

    With ``finetune`` the strategy is applied first: frozen weights need no weight gradients,
    so adapter or LoRA steps cost less than full fine-tuning.
    """
    try:
        # no_dynamo_import: the meta kernels and the counter's dispatch are marked
        # not-to-compile, which would import torch._dynamo (about 1 s) for nothing.
        with no_dynamo_import(), torch.device("meta"):
            model = build_model(model_spec, info)
            if finetune is not None:
                model = build_finetune(finetune, model, lr).model or model
            x = info.example_batch(batch_size)
        counter = FlopCounterMode(display=False)
        with no_dynamo_import(), counter:
            out = model(x)
            out.float().sum().backward()
        return int(counter.get_total_flops())
    except Exception:  # an op without a meta kernel: report no MFU rather than fail the run
        return None


# The process's best peak per (device, intra-op threads, dtype): the threads belong to the
# device on a CPU (one thread of two cores reaches about half the rate).
_PEAKS: dict[tuple[str, int, str], float] = {}
_SIZES: dict[tuple[str, int, str], int] = {}  # the matrix size found for each key
_MEASURED_AT: dict[tuple[str, int, str], float] = {}  # perf_counter of each key's last one
# A run's start refreshes the peak unless it was measured this recently (the estimate of
# `trainlab run` measured it a moment before): measure_peak_flops(refresh=PEAK_FRESH_S).
PEAK_FRESH_S = 30.0

Sampler = Callable[[torch.device, torch.dtype, float], float]


def _key(device: torch.device, dtype: torch.dtype,
         tf32: bool = False) -> tuple[str, int, str]:
    # A TF32 fp32 peak is a different (about 8x higher on an A100) number from an IEEE one.
    tf32 = tf32 and device.type == "cuda" and dtype == torch.float32
    return (str(device), torch.get_num_threads(), str(dtype) + ("+tf32" if tf32 else ""))


def tf32_flags() -> dict[str, bool]:
    """The process's TF32 switches: cuBLAS matmuls and cuDNN convolutions (torch defaults:
    off and on).  Read as the run left them: a user's code may have set either."""
    try:
        return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                "cudnn": bool(torch.backends.cudnn.allow_tf32)}
    except Exception:  # the newer fp32_precision API set in a way the old getters refuse
        return {"matmul": torch.get_float32_matmul_precision() != "highest", "cudnn": True}


def run_uses_tf32(model: torch.nn.Module, flags: dict[str, bool] | None = None) -> bool:
    """Whether an fp32 run of ``model`` may compute in TF32: its matmuls under the cuBLAS flag,
    its convolutions under the cuDNN one (on by default).  The fp32 peak is then the TF32
    peak, or a CNN's MFU is measured against a peak its convolutions beat."""
    flags = flags or tf32_flags()
    if flags["matmul"]:
        return True
    convs = (torch.nn.modules.conv._ConvNd,)
    return flags["cudnn"] and any(isinstance(m, convs) for m in model.modules())


def _matmul_tf32_now(device: torch.device) -> bool:
    return device.type == "cuda" and tf32_flags()["matmul"]


@contextmanager
def _matmul_tf32(device: torch.device, on: bool) -> Iterator[None]:
    """cuBLAS fp32 matmuls in TF32 (``on``) or IEEE for the block, restored after."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if on else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


# On CUDA the peak is timed by CUDA events over a fixed number of products: a host clock
# stopped after a fixed time can leave seconds of matmuls queued (per process and per rank).
CUDA_PRODUCTS = 10


def _cuda_rate(a: torch.Tensor, b: torch.Tensor, n: int, rounds: int) -> float:
    """Best FLOP/s of ``rounds`` rounds of CUDA_PRODUCTS products, each timed by events."""
    best = 0.0
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(CUDA_PRODUCTS):
            torch.mm(a, b)
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        if ms > 0:
            best = max(best, CUDA_PRODUCTS * 2 * n**3 / (ms / 1e3))
    return best


def sample_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32,
                      seconds: float = 0.25) -> float:
    """Measure now: the best rate (FLOP/s) of single large square matmuls on ``device`` at
    ``dtype`` over about ``seconds``; the process's cached peak is raised to it if it beats it.

    Each product (~20 ms) is timed alone and the fastest counts: on a shared machine another
    process steals the cores in bursts, and a single 0.3 s window (as before) read the busy
    rate whenever a burst covered it; the best of ~12 short windows finds the free moments.
    On CUDA the products are timed by CUDA events over a fixed count (5 rounds of
    ``CUDA_PRODUCTS``, 2 for a short ``seconds``), under the process's TF32 matmul flag.
    """
    key = _key(device, dtype, _matmul_tf32_now(device))
    # A private generator: drawing from the global RNG would shift every later dropout mask.
    gen = torch.Generator().manual_seed(0)
    n = _SIZES.get(key, 256)
    # Grow the matrices until one product takes ~20 ms (a dtype without fast kernels, such as
    # fp16 on most CPUs, stays small instead of taking minutes); found once per key.
    while True:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up: kernel selection, caches
        synchronize(device)
        if key in _SIZES:
            break
        took = math.inf
        for _ in range(2):  # the faster of two: one stalled product must not stop the growth
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            took = min(took, time.perf_counter() - start)
        if took > 0.02 or n >= (8192 if device.type == "cuda" else 2048):
            break
        n *= 2
    _SIZES[key] = n
    if device.type == "cuda":
        best = _cuda_rate(a, b, n, rounds=5 if seconds >= 0.1 else 2)
        _PEAKS[key] = max(_PEAKS.get(key, 0.0), best)
        return best
    best, begin = 0.0, time.perf_counter()
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)  # sync before reading the clock
        now = time.perf_counter()
        best = max(best, 2 * n**3 / (now - start))
        if now - begin >= seconds:
            break
    _PEAKS[key] = max(_PEAKS.get(key, 0.0), best)
    return best


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32,
                       seconds: float = 0.25, *, refresh: bool | float = False,
                       sample: Sampler | None = None, tf32: bool | None = None) -> float:
    """The process's matmul peak (FLOP/s) on ``device`` at ``dtype``: the best measured so far.

    The first call measures (about ``seconds``); later calls reuse it, and with ``refresh`` take
    one more short measurement (``seconds / 4``) that replaces it where it is higher, so the
    runs of a sweep in one process share a peak that only rises.  A number for ``refresh``
    takes that measurement only when the last one is older than that many seconds: the run
    that `trainlab run` starts right after its estimate measured gains nothing from another.
    Kept on disk across processes (:mod:`trainlab.engine.peak_cache`: a day, per CPU model or
    GPU, threads, dtype and torch version): a process's first call reuses a fresh peak measured
    on a quiet machine instead of measuring, and one measured while the machine was busy only
    as a floor under a new measurement.  ``sample`` (default :func:`sample_peak_flops`)
    measures once; a sampler other than the real one never touches the disk.

    ``tf32`` (CUDA fp32 only; default: the process's cuBLAS TF32 flag) measures and keeps the
    peak with TF32 matmuls on or off: the run's own setting (see :func:`run_uses_tf32`).
    """
    tf32 = _matmul_tf32_now(device) if tf32 is None else tf32
    key = _key(device, dtype, tf32)
    measure = sample or sample_peak_flops
    # Only real measurements go to and come from the disk cache (engine/peak_cache.py).
    disk = _disk_key(device, key) if measure is _REAL_SAMPLER else None
    floor = 0.0
    if disk is not None and key not in _PEAKS:
        cached = peak_cache.load(disk)
        if cached is not None and cached[1]:  # fresh and measured on a quiet machine
            _PEAKS[key], _MEASURED_AT[key] = cached[0], time.perf_counter()
            return _PEAKS[key]
        floor = cached[0] if cached is not None else 0.0  # disturbed: measured again
    if refresh is not True and refresh is not False and key in _PEAKS:
        refresh = time.perf_counter() - _MEASURED_AT.get(key, -math.inf) >= refresh
    if key not in _PEAKS or refresh:
        before = _reading() if disk is not None else None
        with _matmul_tf32(device, tf32):
            rate = measure(device, dtype, seconds if key not in _PEAKS else seconds / 4)
        _PEAKS[key] = max(_PEAKS.get(key, 0.0), rate, floor)
        _MEASURED_AT[key] = time.perf_counter()
        if disk is not None and before is not None:
            # Disturbed by the rule epochs are flagged by (contention.py): kept as a floor only.
            flags = contention.epoch_contention(before, _reading(), key[1],
                                                cpu_bound=device.type == "cpu")
            peak_cache.store(disk, _PEAKS[key],
                             disturbed=flags.get(contention.DISTURBED_KEY, 0.0) > 0)
    return _PEAKS[key]


def _reading() -> contention.Reading:
    """The machine's contention signals around a measurement (the load average aside: the
    disturbed rule does not use it), read apart from the probe's and the epochs' readings."""
    return contention.Reading(wall=time.perf_counter(), cpu=machine.process_cpu_seconds(),
                              threads=machine.thread_schedstat(), stat=machine.cpu_steal_ticks())


def _disk_key(device: torch.device, key: tuple[str, int, str]) -> str | None:
    """The peak's key across processes (None for devices other than CPU and CUDA)."""
    if device.type == "cpu":
        name = peak_cache.cpu_name()
    elif device.type == "cuda":
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            name = f"cuda|{torch.cuda.get_device_name(index)}"
        except Exception:
            return None
    else:
        return None
    return peak_cache.disk_key(name, key[1], key[2], torch.__version__)


def raise_peak_flops(device: torch.device, dtype: torch.dtype, achieved: float,
                     tf32: bool | None = None) -> bool:
    """Raise the process's cached peak to a rate a run achieved above it (True if it did).

    A run cannot beat the device's matmul peak, so a higher achieved rate proves the peak was
    measured low (the machine was busy); later runs in this process divide by at least it.
    """
    key = _key(device, dtype, _matmul_tf32_now(device) if tf32 is None else tf32)
    if achieved > _PEAKS.get(key, 0.0):
        _PEAKS[key] = achieved
        disk = _disk_key(device, key)
        if disk is not None:  # a floor for the next process, which measures again: a rate
            # a run achieved is no matmul peak (and the peak it beat may have been a fake's)
            peak_cache.store(disk, achieved, disturbed=True)
        return True
    return False


_REAL_SAMPLER = sample_peak_flops  # what measure_peak_flops may keep on disk


def slow_precision(device: torch.device, precision: str) -> str | None:
    """Why ``train.precision`` would slow training on ``device``, or None.

    On a CPU without native bf16 or fp16 instructions, autocast emulates the matmuls: on a
    Zen 3 EPYC bf16 ran at 1.3 GFLOP/s against 120 in fp32.  Measured (about 0.6 s, once per
    process), not guessed from the CPU's name.  On a GPU: bf16 without native support
    (compute capability below 8.0: V100, T4), which ``torch.cuda.is_bf16_supported()`` counts
    as supported when it can emulate it; fp16 is native on every GPU torch supports.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return None
    if device.type == "cuda":
        return _slow_gpu_precision(device, precision)
    if device.type != "cpu":
        return None
    reduced, full = measure_peak_flops(device, dtype), measure_peak_flops(device)
    if reduced >= full:
        return None
    return (f"`train.precision: {precision}` on this CPU: matmuls measured "
            f"{reduced / 1e9:.1f} GFLOP/s in {precision} against {full / 1e9:.1f} in fp32 "
            f"(no native {precision} instructions), so these runs train slower than in fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes bf16 natively (not emulated)."""
    if not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index == torch.cuda.current_device():
        try:  # torch >= 2.3 (it asks the current device): emulation counts unless told not to
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:
            pass
    return torch.cuda.get_device_capability(index)[0] >= 8


def _slow_gpu_precision(device: torch.device, precision: str) -> str | None:
    if precision != "bf16" or native_bf16(device):
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    return (f"`train.precision: bf16` on {name} (compute capability {major}.{minor}): no "
            "native bf16 (it needs 8.0, Ampere or newer), so torch emulates it and these runs "
            "train slower than in fp32; use train.precision: fp16 on this GPU")
