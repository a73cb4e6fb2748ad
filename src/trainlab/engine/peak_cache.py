"""The machine's matmul peak kept across processes, so that a run does not measure it (~0.25 s
on a CPU) in every process.

One small JSON file in the user's cache directory (``$TRAINLAB_CACHE_DIR``, else
``$XDG_CACHE_HOME/trainlab``, else ``~/.cache/trainlab``), one entry per key: the device (the
CPU's model name and the cores this process may use, or the GPU's name), intra-op threads,
dtype (with TF32) and torch version.  An entry is used while younger than :data:`MAX_AGE_S`
and measured on a quiet machine; one measured while other work disturbed the measurement
(:mod:`trainlab.engine.contention`'s rule) is only a floor: the next process measures again
and keeps the higher.  A run that beats the peak raises the entry too (the peak was low).

No torch here; every failure to read or write the file is silent (a cache, never an error).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainlab.engine import machine

MAX_AGE_S = 24 * 3600.0  # a day: a machine's peak drifts with firmware, drivers and torch
FILE = "peak_flops.json"


def cache_path() -> Path:
    root = os.environ.get("TRAINLAB_CACHE_DIR")
    if root:
        return Path(root) / FILE
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "trainlab" / FILE


def disk_key(device_name: str, threads: int, dtype: str, torch_version: str) -> str:
    """The entry's key: the same numbers on the same machine and software, nothing else."""
    return f"{device_name}|threads={threads}|{dtype}|torch={torch_version}"


def cpu_name() -> str:
    """The CPU's model name and the cores this process may use (its affinity mask)."""
    model = "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        import platform

        model = platform.processor() or platform.machine() or "cpu"
    return f"{model}|cores={machine.usable_cores()}"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(key: str, *, now: float | None = None) -> tuple[float, bool] | None:
    """(peak FLOP/s, trusted) of a fresh entry, or None (absent, old or unreadable).
    ``trusted``: measured on a quiet machine, or raised by a run that achieved it."""
    entry = _read(cache_path()).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        peak, at = float(entry["peak"]), float(entry["at"])
    except (KeyError, TypeError, ValueError):
        return None
    age = (time.time() if now is None else now) - at
    if peak <= 0 or not 0 <= age < MAX_AGE_S:
        return None
    return peak, not bool(entry.get("disturbed", False))


def store(key: str, peak: float, *, disturbed: bool) -> None:
    """Keep ``peak`` for ``key`` (atomically; a concurrent writer's other keys survive unless
    both write at once, when one update is lost: it is measured again)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = {"peak": peak, "at": time.time(), "disturbed": disturbed}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


__all__ = ["MAX_AGE_S", "cache_path", "cpu_name", "disk_key", "load", "store"]
