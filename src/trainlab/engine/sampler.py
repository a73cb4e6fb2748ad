"""GPU utilization and memory sampled by a background thread through NVML.

The thread only reads NVML (a driver call, no CUDA sync) at ``interval`` seconds and keeps
running aggregates; the engine drains them at epoch ends on its own thread, so the training loop
does no extra work per step.  Without a CUDA device or without ``nvidia-ml-py`` there is no
sampler at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

Reader = Callable[[], tuple[float, float]]  # (utilization %, memory used bytes)


class GpuSampler:
    def __init__(self, read: Reader, interval: float = 0.5) -> None:
        self.read, self.interval = read, interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        self.count, self.util_sum, self.util_max, self.mem_max = 0, 0.0, 0.0, 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="trainlab-gpu-sampler",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                util, mem = self.read()
            except Exception:  # a driver hiccup must never hurt the run
                continue
            with self._lock:
                self.count += 1
                self.util_sum += util
                self.util_max = max(self.util_max, util)
                self.mem_max = max(self.mem_max, mem)

    def drain(self) -> dict[str, float]:
        """Aggregates since the last drain (empty if no sample was taken)."""
        with self._lock:
            if not self.count:
                return {}
            out = {"gpu/utilization_mean": self.util_sum / self.count,
                   "gpu/utilization_max": self.util_max,
                   "gpu/memory_used_bytes_max": self.mem_max,
                   "gpu/samples": float(self.count)}
            self._reset()
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def nvml_ids(index: int) -> tuple[str | None, str | None]:
    """(UUID, PCI bus id) of CUDA device ``index``, in the forms NVML's look-ups take.

    NVML ignores ``CUDA_VISIBLE_DEVICES`` and numbers GPUs in PCI order, so CUDA index 0 of a
    worker that sees only physical GPU 3 is NVML index 0 = physical GPU 0: look the handle up
    by an id of the device itself, never by index.
    """
    props = torch.cuda.get_device_properties(index)
    uuid: str | None = None
    raw = getattr(props, "uuid", None)
    if raw is not None:
        text = str(raw)
        # torch prints the bare 8-4-4-4-12 hex; NVML wants the "GPU-" (or "MIG-") prefix.
        uuid = text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
    bus = getattr(props, "pci_bus_id", None)
    pci: str | None = None
    if bus is not None:
        domain = int(getattr(props, "pci_domain_id", 0) or 0)
        dev = int(getattr(props, "pci_device_id", 0) or 0)
        pci = f"{domain:08X}:{int(bus):02X}:{dev:02X}.0"
    return uuid, pci


def nvml_handle(pynvml: Any, index: int) -> Any | None:
    """The NVML handle of CUDA device ``index`` by UUID, else by PCI bus id, else None."""
    uuid, pci = nvml_ids(index)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:  # an old driver or a MIG slice: try the bus id
            pass
    if pci is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(pci)
        except Exception:
            pass
    return None  # better no gpu/* than another GPU's


def nvml_sampler(device: torch.device, interval: float) -> GpuSampler | None:
    """A sampler for ``device`` when it is a CUDA GPU and NVML is available, else None."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = nvml_handle(pynvml, index)
    except Exception:
        return None
    if handle is None:
        return None

    def read() -> tuple[float, float]:
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return float(util.gpu), float(mem.used)

    return GpuSampler(read, interval)
