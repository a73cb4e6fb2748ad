"""Numbers, bytes and values as text: one place for the report, ``trainlab compare`` and the CLI.

Pure and standard library only (no pandas, matplotlib or torch), so the CLI can import it at
start-up for nothing.  Memory is shown in MiB (2**20 bytes) everywhere.

Missing values (None, NaN, infinities, anything that is not a number) print as ``-`` unless a
caller asks for another placeholder (the CLI's tables leave the cell empty).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

MIB = 2**20  # bytes in a mebibyte: every "MiB" and "mem" column
MISSING = "-"


def is_finite(value: Any) -> bool:
    """A real number (int, float, bool, NumPy scalar) that is neither NaN nor infinite.

    Text is never a number here, not even ``"1.5"``: values are parsed where they are read
    (``frames`` turns the store's JSON into floats), so a string that reaches a table or an
    answer is text, and printing it as a number would hide a wrong column.
    """
    return isinstance(value, numbers.Real) and math.isfinite(value)


def is_missing(value: Any) -> bool:
    """None or NaN: a varied key this run does not set."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- bytes ----------------------------------------------------------------------------------------


def mib(n_bytes: float) -> float:
    """Bytes in MiB."""
    return n_bytes / MIB


def format_mib(n_bytes: Any, *, missing: str = MISSING, grouping: bool = True,
               significant: int | None = None) -> str:
    """Bytes as whole MiB: ``"1,536"`` (``"1536"`` without ``grouping``); ``missing`` when the
    value is not a finite number.  With ``significant``, a value under 100 MiB keeps that many
    significant digits (``"24.8"``, ``"0.557"``): the peaks of a small model's own tensors
    differ by fractions of a MiB."""
    if not is_finite(n_bytes):
        return missing
    value = mib(float(n_bytes))
    rounded = float(f"{value:.{significant}g}") if significant is not None else math.inf
    if significant is not None and 0 < abs(rounded) < 100:  # (99.97 rounds to 100: whole)
        decimals = min(max(0, significant - 1 - math.floor(math.log10(abs(rounded)))), 9)
        return f"{rounded:.{decimals}f}"
    return f"{value:,.0f}" if grouping else f"{value:.0f}"


def format_bytes(n_bytes: float) -> str:
    """Bytes for people: three significant digits in the largest binary unit below the value
    (``"1.5 GiB"``, ``"768 MiB"``, ``"12 B"``)."""
    for unit, size in (("GiB", 2**30), ("MiB", MIB), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes:.0f} B"


# --- numbers --------------------------------------------------------------------------------------


def format_number(v: float) -> str:
    """About four significant digits, never in scientific notation for usual magnitudes."""
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    if a >= 0.001 or a == 0:
        return f"{v:.3f}" if a >= 1 or a == 0 else f"{v:.4f}"
    return f"{v:.3g}"


def format_sig(value: Any, *, missing: str = MISSING) -> str:
    """Three significant digits (``"0.00316"``, ``"1e-05"``; learning rates); ``missing`` for
    None."""
    return missing if value is None else f"{float(value):.3g}"


def format_int(v: float) -> str:
    """Rounded to a whole number, no separators (epochs, seeds)."""
    return f"{round(v)}"


def format_count(v: float) -> str:
    """Rounded, with thousands separators (parameter counts): ``"1,234,567"``."""
    return f"{round(v):,}"


def format_rate(v: float) -> str:
    """Whole units per second, with thousands separators: ``"12,345"``."""
    return f"{v:,.0f}"


def format_seconds(v: float) -> str:
    """``"12.3"`` from a second up, ``"0.123"`` down to 10 ms, two significant digits below."""
    return f"{v:.1f}" if v >= 1 else f"{v:.3f}" if v >= 0.01 else f"{v:.2g}"


def format_percent(v: float) -> str:
    """``"42"`` from 10 up, ``"4.2"`` below."""
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def format_signed(v: float) -> str:
    """One decimal with its sign: ``"+4.2"``, ``"-0.5"`` (relative errors in %)."""
    return f"{v:+.1f}"


# --- values ---------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A config value: ``"-"`` when missing, floats in ``g`` format, lists in brackets."""
    if is_missing(value):
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def format_indices(indices: Sequence[Any]) -> str:
    """Run numbers: ``"1-3"`` for three or more consecutive ones, else ``"1, 4"``."""
    nums = sorted(int(i) for i in indices if i is not None)
    if len(nums) > 2 and nums == list(range(nums[0], nums[-1] + 1)):
        return f"{nums[0]}-{nums[-1]}"
    return ", ".join(map(str, nums))


def format_evidence(value: Any) -> str:
    """A cell of an answer's evidence: yes/no, numbers as :func:`format_number`, ``-`` for
    None and for floats that are not finite."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return MISSING if not math.isfinite(value) else format_number(value)
    return str(value)


__all__ = ["MIB", "MISSING", "format_bytes", "format_count", "format_evidence", "format_indices",
           "format_int", "format_mib", "format_number", "format_percent", "format_rate",
           "format_seconds", "format_sig", "format_signed", "format_value", "is_finite",
           "is_missing", "mib"]
