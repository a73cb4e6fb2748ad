"""Readings of the machine for :mod:`trainlab.engine.contention`: this process's CPU time, its
threads' scheduler statistics, the machine's steal ticks and load average.

No torch: the CLI reads the load before training without importing it.  Every reader returns
None where its source does not exist (``/proc`` is Linux only) and never raises for that.
Each costs microseconds (a few small file reads) and is called at epoch ends only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from trainlab.engine.contention import Reading

_TASKS = Path("/proc/self/task")
_STAT = Path("/proc/stat")
_LOADAVG = Path("/proc/loadavg")


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads (ended ones included)."""
    t = os.times()
    return t.user + t.system


def _read_proc(path: str, size: int = 128) -> bytes:
    """The first ``size`` bytes of a /proc file, read with one system call: read at every
    epoch's ends, where Path.read_text cost ~6x more (~1 ms for 4 threads on a busy machine)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def thread_schedstat() -> dict[int, tuple[int, int]] | None:
    """Per thread of this process: (nanoseconds on a core, nanoseconds runnable but waiting for
    one), from ``/proc/self/task/<tid>/schedstat``; None where the kernel does not expose it."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    out: dict[int, tuple[int, int]] = {}
    for tid in tids:
        try:
            fields = _read_proc(f"{_TASKS}/{tid}/schedstat").split()
            out[int(tid)] = (int(fields[0]), int(fields[1]))
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return out or None


def cpu_steal_ticks() -> tuple[int, int] | None:
    """(steal ticks, total ticks) of all CPUs since boot, from the first line of /proc/stat."""
    try:
        fields = _read_proc(str(_STAT), 256).split(b"\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu" or len(fields) < 9:
        return None
    try:
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        ticks = [int(v) for v in fields[1:9]]
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def load_average() -> float | None:
    """The 1-minute load average (running plus runnable tasks, this process's included)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def running_elsewhere() -> int | None:
    """Threads of other processes on a CPU or waiting for one right now: the machine's
    runnable count (``/proc/loadavg``'s fourth field, this reader included) less this
    process's threads in state R.  None where unknown.  One instant: callers sample it."""
    try:
        running = int(_LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    own = 0
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        tids = []
    for tid in tids:
        try:
            stat = (_TASKS / tid / "stat").read_text()
            # The state follows the command name, in parentheses that may hold anything.
            own += stat[stat.rindex(")") + 2] == "R"
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return max(0, running - max(own, 1))  # this reader is running, whatever the race


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read() -> Reading:
    """One snapshot for :func:`trainlab.engine.contention.epoch_contention`."""
    return Reading(wall=time.perf_counter(), cpu=process_cpu_seconds(),
                   threads=thread_schedstat(), stat=cpu_steal_ticks(), load=load_average())


__all__ = ["cpu_steal_ticks", "load_average", "process_cpu_seconds", "read", "running_elsewhere",
           "thread_schedstat", "usable_cores"]
