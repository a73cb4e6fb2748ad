"""A steady host heap for CPU training (glibc only).

With glibc's default thresholds, the large transient tensors of each CPU training step are
allocated with ``mmap`` and given back with ``munmap`` (or the heap top is trimmed) at the end
of the step, so the next step page-faults the same memory in again and the kernel zeroes it:
hundreds to thousands of page faults a step on the small models here, and step times with a
long right tail.  Raising the mmap and trim thresholds (what ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` do, set from inside the process) keeps those pages in the heap.

Measured on the benchmark LMs (2-core VM, 3 epochs, steady vs glibc's defaults): minor page
faults per step 105 vs 1,015-1,432 (GPT) and 139 vs 2,174 (LSTM); the 90th-percentile step
23.7-25.3 vs 27.3-29.1 ms (GPT) and 28.2 vs 34.2 ms (LSTM); the median step unchanged.

The cost is that freed memory stays resident until it is trimmed; :func:`trim` hands it back,
and the engine calls it before each run resets its peak-memory mark, so a run's peak RSS is its
own and not the retained heap of a larger run before it in the same process.  It trims only
when the process has grown by more than 64 MiB since it last trimmed: trimming gives a run
fresh pages to fault in, and in one process that slowed the next run's steady steps by 4-5 %
on the fmnist MLP at batch 256 (paired against a plain loop, 10 rounds, twice), so a run that
follows one of about its size (which leaves little behind) does not pay for it.

``TRAINLAB_MALLOC=system`` leaves glibc's defaults alone.  Elsewhere (macOS, musl, Windows)
both functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from functools import cache
from pathlib import Path

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_STATUS = Path("/proc/self/status")
_THRESHOLD = 1 << 30  # 1 GiB: no step of a model that trains on a CPU allocates more at once


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc has it; musl does not)
    except (OSError, AttributeError):
        return None
    return libc


_steady = False  # the thresholds are set in this process
_trimmed_at: int | None = None  # the process's RSS right after the last trim


def steady() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they are set."""
    global _steady
    if not _steady and os.environ.get("TRAINLAB_MALLOC", "steady") != "system":
        libc = _glibc()
        _steady = libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
                                            and libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return _steady


def is_steady() -> bool:
    """Whether :func:`steady` set the thresholds in this process (for the run's summary)."""
    return _steady


def trim(min_growth: int = 64 << 20) -> bool:
    """Give the heap's free memory back to the system (glibc's ``malloc_trim``) if the
    process's RSS grew by more than ``min_growth`` bytes since the last trim; True if it did."""
    global _trimmed_at
    libc = _glibc()
    if libc is None:
        return False
    rss = rss_bytes()
    if _trimmed_at is not None and rss - _trimmed_at <= min_growth:
        return False
    libc.malloc_trim(0)
    _trimmed_at = rss_bytes()
    return True


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (Linux) in bytes, or None where there is none.

    Read at every epoch end (``memory/rss_peak_bytes``): one ``open``/``read``/``close`` and a
    search of the bytes, where ``Path.read_text`` and a regular expression over the decoded
    text cost twice as much (33 vs 16 us a read, alternating, load 4.9).  ``getrusage``'s
    ``ru_maxrss`` is no substitute: it also counts the image the process was exec'd from (a
    large parent's peak, for a spawned worker), is not reset by ``clear_refs``, and read
    200 KiB under VmHWM in one process here (Linux 6.18)."""
    try:
        fd = os.open(_STATUS, os.O_RDONLY)
        try:
            text = os.read(fd, _STATUS_SIZE)
        finally:
            os.close(fd)
    except OSError:
        return None
    return parse_status(text, field)


_STATUS_SIZE = 16384  # /proc/self/status is ~1.5 KB; one read takes all of it


def parse_status(text: bytes, field: str) -> int | None:
    """``field`` (``VmHWM``, ``VmRSS``: "NAME:<spaces>N kB") of a /proc status text, in bytes."""
    start = text.find(b"\n" + field.encode() + b":")
    if start < 0:
        if not text.startswith(field.encode() + b":"):
            return None
        start = -1
    end = text.find(b"\n", start + 1)
    line = text[start + len(field) + 2:end if end >= 0 else len(text)].split()
    if len(line) != 2 or line[1] != b"kB" or not line[0].isdigit():
        return None
    return int(line[0]) * 1024


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
