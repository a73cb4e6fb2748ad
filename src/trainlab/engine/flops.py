"""FLOPs per training step and the device's measured matmul peak, for model FLOPs utilization.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the *meta* device: no
memory, no time, and no effect on the real model or the RNG.  (On the CPU device the counter
misses the LSTM, which runs as a oneDNN op it does not know; on meta the LSTM decomposes into
matmuls it counts.)  The peak is the best rate of a large square matmul on the device, measured
once per process (see :func:`measure_peak_flops`).
"""

from __future__ import annotations

import time

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


_PEAKS: dict[tuple[str, int, str], float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32,
                       seconds: float = 0.3) -> float:
    """The best rate (FLOP/s) of a large square matmul on ``device`` at ``dtype``.

    Measured once per process (about ``seconds``), not cached on disk: a peak measured while
    the machine was busy would understate every later run's MFU, and MFU against the peak
    measured under the same conditions is the fairer ratio.
    """
    key = (str(device), torch.get_num_threads(), str(dtype))
    if key in _PEAKS:
        return _PEAKS[key]
    # A private generator: drawing from the global RNG would shift every later dropout mask.
    gen = torch.Generator().manual_seed(0)
    # Grow the matrices until one product takes ~20 ms (a dtype without fast kernels, such as
    # fp16 on most CPUs, stays small instead of taking minutes).
    n = 256
    while True:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        torch.mm(a, b)
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if time.perf_counter() - start > 0.02 or n >= (8192 if device.type == "cuda" else 2048):
            break
        n *= 2
    best = 0.0
    for _ in range(3):
        torch.mm(a, b)  # warm-up: kernel selection, caches
        synchronize(device)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            torch.mm(a, b)
            reps += 1
        synchronize(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    _PEAKS[key] = best
    return best


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
