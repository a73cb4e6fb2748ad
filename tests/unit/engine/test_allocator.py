"""The steady host heap: freed step memory stays in the heap, trim gives it back (only
after real growth), and
TRAINLAB_MALLOC=system leaves glibc alone.  Each case runs in a fresh interpreter: the
thresholds are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="mallopt and malloc_trim are glibc's (Linux)")

PROBE = """
import json, torch
import trainlab.engine.allocator as a
from trainlab.engine.allocator import rss_bytes
steady = a.steady()
x = torch.ones(64 * 2**20)  # 256 MiB, written, then freed
del x
held = rss_bytes()
first = a.trim()
again = a.trim()  # nothing grew since: left alone
y = torch.ones(64 * 2**20)
del y
grown = a.trim()
print(json.dumps({"steady": steady, "is_steady": a.is_steady(), "held": held,
                  "trimmed": rss_bytes(), "first": first, "again": again, "grown": grown}))
"""


def _run(**env: str) -> dict[str, int | bool]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def test_steady_heap_keeps_freed_pages_until_trimmed() -> None:
    result = _run(TRAINLAB_MALLOC="steady")
    assert result["steady"] and result["is_steady"]
    assert int(result["held"]) - int(result["trimmed"]) > 200 * 2**20
    # Trimming is skipped while the process has not grown by 64 MiB since the last trim.
    assert result["first"] and not result["again"] and result["grown"]


def test_system_setting_leaves_glibc_defaults() -> None:
    result = _run(TRAINLAB_MALLOC="system")
    assert not result["steady"] and not result["is_steady"]
    # glibc's default: a 256 MiB block is mmapped and unmapped at once; nothing to trim.
    assert abs(int(result["held"]) - int(result["trimmed"])) < 32 * 2**20
