"""Measurements that do not disturb what they measure.

Rules followed here: synchronise an accelerator before reading a clock; read memory peaks, not
current values; nothing in this module is called per training step.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainlab.devices import synchronize
from trainlab.engine import allocator
from trainlab.engine.allocator import rss_peak_bytes

_CLEAR_REFS = Path("/proc/self/clear_refs")


class Clock:
    """Wall-clock seconds with an accelerator sync before each read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()


class PeakMemory:
    """Peak memory of the current run.

    CUDA: the allocator's peak allocated and reserved bytes (reset at run start).
    CPU: the process's peak resident set size.  Linux lets a process reset its high-water mark
    (writing 5 to /proc/self/clear_refs), so each run of a sweep gets its own peak; elsewhere
    it is the process's lifetime peak (``getrusage``), which can include earlier runs.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.per_run = True

    def reset(self) -> None:
        # Freed heap a larger run (or a probe) left resident would count in this run's peak.
        allocator.trim()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.per_run = False

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {"memory/rss_peak_bytes": float(rss_peak_bytes())}
        if self.device.type == "cuda":
            out["memory/peak_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
            out["memory/reserved_bytes"] = float(torch.cuda.max_memory_reserved(self.device))
        else:
            out["memory/peak_bytes"] = out["memory/rss_peak_bytes"]
        return out


def grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients, left on the device (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: the public API
        # error_if_nonfinite=False: no check of the value, hence no host sync.
        return torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False)
    # torch 2.4 and 2.5: what get_total_norm does for tensors of one device and dtype.
    norms = torch._foreach_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def git_commit(cwd: str | None = None) -> str | None:
    """The commit of the git checkout the user runs in (``+dirty`` when modified)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a run ran: versions, device, host, git commit."""
    import numpy

    from trainlab import __version__

    env: dict[str, Any] = {
        "trainlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        # Which physical GPUs this process was given (a --jobs worker gets its own share).
        env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env
