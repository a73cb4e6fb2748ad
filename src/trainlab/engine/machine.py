"""Readings of the machine for :mod:`trainlab.engine.contention`: this process's CPU time, its
threads' scheduler statistics, the machine's steal ticks and load average.

No torch: the CLI reads the load before training without importing it.  Every reader returns
None where its source does not exist (``/proc`` is Linux only) and never raises for that.
Each costs microseconds (a few small file reads) and is called at epoch ends only.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from trainlab.engine.contention import Reading

_TASKS = Path("/proc/self/task")
_STAT = Path("/proc/stat")
_LOADAVG = Path("/proc/loadavg")
_STAT_PATH, _TASK_PREFIX = str(_STAT), f"{_TASKS}/"


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


# Files read at every epoch's ends, kept open: a ``pread`` at offset 0 of a /proc seq_file
# regenerates its text (the kernel resets the iterator at offset 0), the same bytes a fresh
# open reads, without the open and close (~15 of /proc/stat's ~23 us; ~1 of a thread's
# schedstat's ~4 us).  Keyed by path; owned by the process that opened them (a forked child
# starts afresh) and closed when a thread's file stops being listed or stops reading.
_OPEN: dict[str, int] = {}
_OPEN_PID = [0]


def _pread_proc(path: str, size: int) -> bytes:
    """:func:`_read_proc` through a kept descriptor (opened on first use)."""
    if _OPEN_PID[0] != os.getpid():  # a fork's copies read the parent's threads: closed
        for kept in list(_OPEN):
            _forget(kept)
        _OPEN_PID[0] = os.getpid()
    fd = _OPEN.get(path)
    if fd is not None:
        try:
            data = os.pread(fd, size, 0)
        except OSError:
            data = b""
        if data:
            return data
        _forget(path)  # that thread ended (its tid may be another thread's now): reopen
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, size, 0)
    except BaseException:
        os.close(fd)
        raise
    _OPEN[path] = fd
    return data


def _forget(path: str) -> None:
    fd = _OPEN.pop(path, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def thread_schedstat() -> dict[int, tuple[int, int]] | None:
    """Per thread of this process: (nanoseconds on a core, nanoseconds runnable but waiting for
    one), from ``/proc/self/task/<tid>/schedstat``; None where the kernel does not expose it."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    out: dict[int, tuple[int, int]] = {}
    paths = set()
    for tid in tids:
        path = f"{_TASKS}/{tid}/schedstat"
        paths.add(path)
        try:
            fields = _pread_proc(path, 128).split()
            out[int(tid)] = (int(fields[0]), int(fields[1]))
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    for path in [p for p in _OPEN if p.startswith(_TASK_PREFIX) and p not in paths]:
        _forget(path)  # threads that ended since the last reading
    return out or None


def cpu_steal_ticks() -> tuple[int, int] | None:
    """(steal ticks, total ticks) of all CPUs since boot, from the first line of /proc/stat."""
    try:
        fields = _pread_proc(_STAT_PATH, 256).split(b"\n", 1)[0].split()
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
