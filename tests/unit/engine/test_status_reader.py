"""The /proc/self/status reader behind ``memory/rss_peak_bytes`` (engine/allocator.py) reads
the numbers the regular expression it replaced read."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from trainlab.engine import allocator
from trainlab.engine.allocator import parse_status

STATUS = Path("/proc/self/status")


def _old(text: str, field: str) -> int | None:
    """The reader before: a regular expression over the decoded text."""
    match = re.search(rf"{field}:\s+(\d+)\s+kB", text)
    return int(match.group(1)) * 1024 if match else None


SAMPLE = ("Name:\tpython\nUmask:\t0022\nVmPeak:\t 1294532 kB\nVmSize:\t 1230000 kB\n"
          "VmHWM:\t  229936 kB\nVmRSS:\t  229744 kB\nThreads:\t3\n")


@pytest.mark.parametrize("field", ["VmPeak", "VmHWM", "VmRSS", "VmSwap", "Threads", "Name"])
def test_parses_what_the_regex_parsed(field: str) -> None:
    assert parse_status(SAMPLE.encode(), field) == _old(SAMPLE, field)
    # The first line, the last line without its newline, a field that is absent.
    first = "VmHWM:\t 12 kB\nVmRSS:\t 7 kB"
    assert parse_status(first.encode(), field) == _old(first, field)


@pytest.mark.skipif(not STATUS.is_file(), reason="/proc/self/status: Linux")
def test_live_status_reads_as_before() -> None:
    text = STATUS.read_text()
    for line in text.splitlines():
        field = line.split(":", 1)[0]
        if line.endswith(" kB"):
            assert parse_status(text.encode(), field) == _old(text, field), line
    # The peak as the engine records it: the old reader's value around the new one's (VmHWM
    # only grows between them; nothing here allocates, so they are equal in practice).
    before = _old(STATUS.read_text(), "VmHWM")
    now = allocator.rss_peak_bytes()
    after = _old(STATUS.read_text(), "VmHWM")
    assert before is not None and after is not None and before <= now <= after
    assert allocator.rss_bytes() > 0


def test_without_proc_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(allocator, "_STATUS", tmp_path / "missing")
    assert allocator._status_bytes("VmHWM") is None
    assert allocator.rss_peak_bytes() > 0  # getrusage's lifetime peak
    if sys.platform.startswith("linux"):
        assert allocator.rss_peak_bytes() >= 1 << 20
