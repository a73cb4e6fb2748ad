"""Number, byte and value formatting (``trainlab.analysis.fmt``): pure, and cheap to import."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from trainlab.analysis.fmt import (
    MIB,
    format_bytes,
    format_count,
    format_evidence,
    format_indices,
    format_int,
    format_mib,
    format_number,
    format_percent,
    format_rate,
    format_seconds,
    format_sig,
    format_signed,
    format_value,
    is_finite,
    mib,
)
from trainlab.analysis.frames import METRICS
from trainlab.analysis.tables import format_cell


@pytest.mark.parametrize("value", [0, 1, -2.5, 1e300, True, np.float32(0.5), np.int64(7),
                                   np.float64(-1e-9), Fraction(1, 3)])
def test_is_finite_accepts_real_numbers(value: object) -> None:
    assert is_finite(value)


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, np.float64("nan"),
                                   np.float32("inf"), "1.5", "3", "nan", b"1", [1.0], {},
                                   complex(1, 0), object()])
def test_is_finite_rejects_everything_else(value: object) -> None:
    assert not is_finite(value)


def test_numeric_text_is_not_a_number_anywhere() -> None:
    """The decided behaviour: text is never formatted or ranked as a number.  (tables.py used
    to accept numeric strings while frames.py rejected them; frames parse the store's values
    into floats where they are read, so a string further down is text.)"""
    assert format_cell("1.5", "number") == "-"
    assert format_cell("2097152", "bytes") == "-"
    assert format_cell("adam", "text") == "adam"  # text columns print text as it is
    assert format_cell(1.5, "number") == "1.500"
    assert METRICS["accuracy"].best_of([0.5, "0.9", None, math.nan]) == 0.5  # type: ignore[list-item]


def test_bytes_in_mib() -> None:
    assert MIB == 2**20
    assert mib(3 * 2**20) == 3.0 and mib(2**19) == 0.5
    assert format_mib(300 * MIB) == "300"
    assert format_mib(1536 * MIB) == "1,536"
    assert format_mib(1536 * MIB, grouping=False) == "1536"
    assert format_mib(np.float64(2.4 * MIB)) == "2"
    assert format_mib(None) == "-" and format_mib(math.nan) == "-" and format_mib("5") == "-"
    assert format_mib(None, missing="") == ""
    # The table's "bytes" kind is the same formatting.
    assert format_cell(1536 * MIB, "bytes") == format_mib(1536 * MIB)


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (512, "512 B"), (2048, "2 KiB"), (1.5 * MIB, "1.5 MiB"),
    (768 * MIB, "768 MiB"), (1.5 * 2**30, "1.5 GiB"), (80 * 2**30, "80 GiB"),
])
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(("value", "text"), [
    (1234.5, "1,234"), (123.45, "123.5"), (12.345, "12.35"), (1.2345, "1.234"), (0.0, "0.000"),
    (0.012345, "0.0123"), (0.00001234, "1.23e-05"), (-5.0, "-5.000"),
])
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


def test_number_kinds() -> None:
    assert format_int(3.6) == "4" and format_count(1234567) == "1,234,567"
    assert format_rate(12345.4) == "12,345"
    assert [format_seconds(v) for v in (12.34, 0.1234, 0.001234)] == ["12.3", "0.123", "0.0012"]
    assert [format_percent(v) for v in (42.4, 4.24)] == ["42", "4.2"]
    assert [format_signed(v) for v in (4.24, -0.54)] == ["+4.2", "-0.5"]
    assert format_sig(0.0031623) == "0.00316" and format_sig(1e-5) == "1e-05"
    assert format_sig(None) == "-" and format_sig(None, missing="") == ""


def test_values_indices_and_evidence() -> None:
    assert format_value(None) == "-" and format_value(math.nan) == "-"
    assert format_value(0.001) == "0.001" and format_value([1, 2.5, "a"]) == "[1, 2.5, a]"
    assert format_indices([3, 1, 2]) == "1-3" and format_indices([1, 4]) == "1, 4"
    assert format_indices([1, 2]) == "1, 2"
    assert [format_evidence(v) for v in (None, True, False, math.inf, 85.0, 3, "run 3")] == [
        "-", "yes", "no", "-", "85.00", "3", "run 3"]


def test_fmt_imports_without_pandas_matplotlib_or_torch() -> None:
    """The CLI imports fmt at start-up: it must stay standard library only."""
    code = ("import sys, trainlab.analysis.fmt; "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'torch', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
