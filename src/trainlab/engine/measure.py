"""Measurements that do not disturb what they measure.

Rules followed here: synchronise an accelerator before reading a clock; read memory peaks, not
current values; nothing in this module is called per training step.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainlab.engine import allocator

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (Linux) in bytes, or None where there is none."""
    try:
        match = re.search(rf"{field}:\s+(\d+)\s+kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def rss_peak_bytes() -> int:
    """The process's peak resident set size (since the last reset, on Linux)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def rss_bytes() -> int:
    """The process's current resident set size."""
    current = _status_bytes("VmRSS")
    if current is not None:
        return current
    import psutil

    return int(psutil.Process().memory_info().rss)


def grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients, left on the device (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
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
