"""What crosses from the engine to the store: frozen records and the sink protocol.

The engine depends only on this module, never on the store's queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Status = Literal["pending", "running", "ok", "failed", "diverged", "interrupted", "oom"]
# An outcome (never a stored status): another live process holds the run, so it was skipped.
BUSY = "busy"
# Finished for good: a rerun skips these (failed, oom and interrupted runs are retried).
DONE: tuple[str, ...] = ("ok", "diverged")
FINISHED: tuple[Status, ...] = ("ok", "diverged")  # a rerun skips these
STATUSES: tuple[Status, ...] = ("pending", "running", "ok", "failed", "diverged", "interrupted",
                                "oom")


@dataclass(frozen=True, slots=True)
class MetricRecord:
    """One recorded value: ``time`` is seconds since the run started (train + eval)."""

    run_id: str
    key: str
    step: int
    epoch: int
    time: float
    value: float


class RecordSink(Protocol):
    """Where the engine sends records; the store implements it."""

    def write(self, records: Sequence[MetricRecord]) -> None:
        """Persist records (one transaction)."""

    def rewind(self, run_id: str, step: int) -> None:
        """Drop the run's records after optimizer step ``step`` (all of them for -1): what a
        resume from a checkpoint taken at that step will record again."""


class NullSink:
    """A sink that keeps records in memory (tests, `lr-find`, benchmarks)."""

    def __init__(self) -> None:
        self.records: list[MetricRecord] = []

    def write(self, records: Sequence[MetricRecord]) -> None:
        self.records.extend(records)

    def rewind(self, run_id: str, step: int) -> None:
        self.records = [r for r in self.records if r.run_id != run_id or r.step <= step]
