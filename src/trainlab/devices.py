"""Device facts: which device a config's ``train.device`` means here, whether it exists, how
many DDP processes it allows, and how to wait for its queued work.

Planning, estimating and the engine all ask these questions; they live here so that planning
does not reach into the engine.  Each imports torch when asked, so that importing this module
(planning a finished sweep does) costs nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def device_available(name: str) -> bool:
    if name in ("auto", "cpu"):
        return True
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        index = int(name.split(":")[1]) if ":" in name else 0
        return index < torch.cuda.device_count()
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    return False


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a clock read after this call covers them."""
    if device.type == "cpu":  # nothing queued (and no import statement in a timed step)
        return
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def release_cached(device: torch.device) -> None:
    """Collect garbage and return CUDA's cached blocks to the driver (CUDA only).

    The caching allocator keeps freed blocks reserved: an earlier run's, a probe's or the peak
    measurement's.  ``mem_get_info`` counts them as used, and ``reset_peak_memory_stats`` resets
    the reserved peak to what is reserved now, so without this the data-on-device decision and
    ``memory/reserved_bytes`` depend on what ran before in the process.  Called before the
    decision, before the peak reset and after an out-of-memory error.
    """
    if device.type != "cuda":
        return
    import gc

    import torch

    gc.collect()  # tensors only a reference cycle (a traceback's frames) still holds
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def nproc_limit(device: str) -> tuple[int, str]:
    """How many DDP processes ``device`` allows here, and what limits it.

    CUDA: one process per GPU.  CPU: one per core (gloo ranks share the cores; more would
    only slow each step down).
    """
    import torch

    kind = resolve_device(device).type
    if kind == "cuda":
        count = torch.cuda.device_count()
        return count, f"{count} GPU(s) visible"
    if kind == "mps":
        return 1, "Apple MPS has no multi-process backend"
    cores = usable_cpus()
    return cores, f"{cores} CPU core(s): on CPU trainlab allows one gloo process per core"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
