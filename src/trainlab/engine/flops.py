"""FLOPs per training step and the device's measured matmul peak, for model FLOPs utilization.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the *meta* device: no
memory, no time, and no effect on the real model or the RNG.  (On the CPU device the counter
misses the LSTM, which runs as a oneDNN op it does not know; on meta the LSTM decomposes into
matmuls it counts.)  The peak is the best rate of a large square matmul on the device, measured
per process as the best of short measurements and kept, raised by any later one that beats it
(see :func:`measure_peak_flops`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainlab.components import DataInfo, build_finetune, build_model
from trainlab.components.finetune.base import FinetuneSpec
from trainlab.components.models import ModelSpec
from trainlab.devices import synchronize


def train_step_flops(model_spec: ModelSpec, info: DataInfo, batch_size: int,
                     finetune: FinetuneSpec | None = None, lr: float = 1.0) -> int | None:
    """FLOPs of one forward and backward pass on a batch, or None when they cannot be traced.

    With ``finetune`` the strategy is applied first: frozen weights need no weight gradients,
    so adapter or LoRA steps cost less than full fine-tuning.
    """
    try:
        with torch.device("meta"):
            model = build_model(model_spec, info)
            if finetune is not None:
                model = build_finetune(finetune, model, lr).model or model
            x = info.example_batch(batch_size)
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(x)
            out.float().sum().backward()
        return int(counter.get_total_flops())
    except Exception:  # an op without a meta kernel: report no MFU rather than fail the run
        return None


# The process's best peak per (device, intra-op threads, dtype): the threads belong to the
# device on a CPU (one thread of two cores reaches about half the rate).
_PEAKS: dict[tuple[str, int, str], float] = {}
_SIZES: dict[tuple[str, int, str], int] = {}  # the matrix size found for each key

Sampler = Callable[[torch.device, torch.dtype, float], float]


def _key(device: torch.device, dtype: torch.dtype) -> tuple[str, int, str]:
    return (str(device), torch.get_num_threads(), str(dtype))


def sample_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32,
                      seconds: float = 0.25) -> float:
    """Measure now: the best rate (FLOP/s) of single large square matmuls on ``device`` at
    ``dtype`` over about ``seconds``; the process's cached peak is raised to it if it beats it.

    Each product (~20 ms) is timed alone and the fastest counts: on a shared machine another
    process steals the cores in bursts, and a single 0.3 s window (as before) read the busy
    rate whenever a burst covered it; the best of ~12 short windows finds the free moments.
    """
    key = _key(device, dtype)
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
                       seconds: float = 0.25, *, refresh: bool = False,
                       sample: Sampler | None = None) -> float:
    """The process's matmul peak (FLOP/s) on ``device`` at ``dtype``: the best measured so far.

    The first call measures (about ``seconds``); later calls reuse it, and with ``refresh`` take
    one more short measurement (``seconds / 4``) that replaces it where it is higher, so the
    runs of a sweep in one process share a peak that only rises.  Not cached on disk: a peak is
    this machine's, now.  ``sample`` (default :func:`sample_peak_flops`) measures once.
    """
    key = _key(device, dtype)
    measure = sample or sample_peak_flops
    if key not in _PEAKS:
        _PEAKS[key] = max(_PEAKS.get(key, 0.0), measure(device, dtype, seconds))
    elif refresh:
        _PEAKS[key] = max(_PEAKS[key], measure(device, dtype, seconds / 4))
    return _PEAKS[key]


def raise_peak_flops(device: torch.device, dtype: torch.dtype, achieved: float) -> bool:
    """Raise the process's cached peak to a rate a run achieved above it (True if it did).

    A run cannot beat the device's matmul peak, so a higher achieved rate proves the peak was
    measured low (the machine was busy); later runs in this process divide by at least it.
    """
    key = _key(device, dtype)
    if achieved > _PEAKS.get(key, 0.0):
        _PEAKS[key] = achieved
        return True
    return False


def slow_precision(device: torch.device, precision: str) -> str | None:
    """Why ``train.precision`` would slow training on ``device``, or None.

    On a CPU without native bf16 or fp16 instructions, autocast emulates the matmuls: on a
    Zen 3 EPYC bf16 ran at 1.3 GFLOP/s against 120 in fp32.  Measured (about 0.6 s, once per
    process), not guessed from the CPU's name; GPUs are not checked.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None or device.type != "cpu":
        return None
    reduced, full = measure_peak_flops(device, dtype), measure_peak_flops(device)
    if reduced >= full:
        return None
    return (f"`train.precision: {precision}` on this CPU: matmuls measured "
            f"{reduced / 1e9:.1f} GFLOP/s in {precision} against {full / 1e9:.1f} in fp32 "
            f"(no native {precision} instructions), so these runs train slower than in fp32")
