"""What crosses from the engine to the store: frozen records and the sink protocol.

The engine depends only on this module, never on the store's queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Status = Literal["pending", "running", "ok", "failed", "diverged", "interrupted", "oom",
                 "pruned"]
# An outcome (never a stored status): another live process holds the run, so it was skipped.
BUSY = "busy"
# Finished for good: a rerun skips these (failed, oom and interrupted runs are retried).  A
# ``pruned`` run is a search trial its pruner stopped early: resuming it would undo the pruning.
DONE: tuple[Status, ...] = ("ok", "diverged", "pruned")
STATUSES: tuple[Status, ...] = ("pending", "running", "ok", "failed", "diverged", "interrupted",
                                "oom", "pruned")


@dataclass(frozen=True, slots=True)
class MetricRecord:
    """One recorded value: ``time`` is seconds since the run started (train + eval)."""

    run_id: str
    key: str
    step: int
    epoch: int
    time: float
    value: float


def metric_records(run_id: str, step: int, epoch: int, time: float,
                   values: Mapping[str, float]) -> list[MetricRecord]:
    """``[MetricRecord(run_id, key, step, epoch, time, float(value)) for key, value in
    values.items()]``, the same records built with less Python per record: the frozen
    dataclass's ``__init__`` looks up ``object.__setattr__`` for each field (the engine builds
    ~35 records an epoch)."""
    new, put = object.__new__, object.__setattr__
    out = []
    for key, value in values.items():
        record = new(MetricRecord)
        put(record, "run_id", run_id)
        put(record, "key", key)
        put(record, "step", step)
        put(record, "epoch", epoch)
        put(record, "time", time)
        put(record, "value", float(value))
        out.append(record)
    return out


class RecordSink(Protocol):
    """Where the engine sends records; every store implements it (the whole store contract is
    :class:`trainlab.store.base.RunStore`)."""

    def write(self, records: Sequence[MetricRecord]) -> None:
        """Persist records in one transaction: all of them or none.

        A record is keyed by (run_id, key, step): writing a key again at a step replaces the
        stored value (epoch, time and value), in this call or a later one; within one call the
        later record wins.  A store refreshes each written run's heartbeat.  On return the
        records are committed: a reader that reads afterwards, in any process, sees them.  An
        empty sequence changes nothing.
        """

    def rewind(self, run_id: str, step: int) -> None:
        """Drop the run's records after optimizer step ``step`` (records at ``step`` and
        before stay; -1 drops all of them; other runs are untouched): what a resume from a
        checkpoint taken at that step will record again.  Committed on return, like
        :meth:`write`."""

    # Optional: ``recorded_through(run_id, epoch, step) -> bool | None``: whether the sink
    # still holds the run's records that a checkpoint at (epoch, step) saw written (step-0
    # rows and rows in every epoch 1..epoch); None or no such method: it cannot tell.  The
    # engine restarts a run whose checkpoint is ahead of its records (looked up with getattr).


class NullSink:
    """A sink that keeps records in memory (tests, `lr-find`, benchmarks)."""

    def __init__(self) -> None:
        self.records: list[MetricRecord] = []

    def write(self, records: Sequence[MetricRecord]) -> None:
        self.records.extend(records)

    def rewind(self, run_id: str, step: int) -> None:
        self.records = [r for r in self.records if r.run_id != run_id or r.step <= step]
