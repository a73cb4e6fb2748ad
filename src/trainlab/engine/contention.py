"""Contention arithmetic: how much of the CPU a run asked for it got, and whether an epoch's
timing was disturbed by other work on the machine.

Pure functions of readings (no clock, no /proc), so each is unit-tested with made-up numbers;
:mod:`trainlab.engine.machine` takes the readings.  The trap this guards against (DESIGN.md,
"Measurement traps"): on a busy machine two OpenMP intra-op threads ran epochs 8x slower than
one, because the barrier waits for the thread whose core was taken.  Such timings are not the
model's, so each epoch records what the run got and is flagged when it was disturbed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --- the thresholds, in one place --------------------------------------------------------------

# A thread that wanted a core waited on the run queue for more than 10 % of that time: the epoch
# ran at least ~10 % slow, and with several intra-op threads much slower (each parallel region
# waits for its slowest thread).  On a quiet machine the share is ~0-2 % (kernel threads).
CPU_WAIT_MAX = 0.10
# Without per-thread scheduler statistics (not Linux), the fallback on CPU: the process got
# under 80 % of (wall time x intra-op threads).  Only a fallback: an intra-op thread that is idle
# because the model is too small to split an op over threads also lowers this share, so with
# the run-queue wait known (Linux) a low share alone is not taken as disturbance.
CPU_SHARE_MIN = 0.80
# The hypervisor gave this VM's CPUs to other guests more than 5 % of the epoch: every clock
# reading then includes time nobody on this machine computed in.
STEAL_MAX = 0.05
# An epoch that waited for its batches this share of its time or more is input-bound: its CPU
# share is no sign of contention (the answers' analysis.answers.INPUT_BOUND, the same rule).
INPUT_BOUND = 0.2
# The busy-machine warning before training: the 1-minute load average (other processes, since
# nothing trains yet) leaves fewer cores than the run's intra-op threads, with one core of
# slack: the 1-minute average decays slowly, so the command just run (the last sweep, a pip
# install) leaves 0.5-0.8 on an otherwise idle machine, which warned on every quiet rerun.
LOAD_SLACK = 1.0

CPU_SHARE_KEY = "time/cpu_share"
CPU_WAIT_KEY = "time/cpu_wait"
LOAD_KEY = "machine/load"
STEAL_KEY = "machine/steal"
DISTURBED_KEY = "perf/disturbed"


@dataclass(frozen=True)
class Reading:
    """One snapshot: wall clock, this process's CPU seconds (user + system, all threads), the
    run and run-queue-wait nanoseconds of each of its threads (``/proc/self/task/*/schedstat``;
    None where absent), the machine's (steal, total) CPU ticks (``/proc/stat``; None where
    absent) and the 1-minute load average (None where unknown)."""

    wall: float
    cpu: float
    threads: Mapping[int, tuple[int, int]] | None = None
    stat: tuple[int, int] | None = None
    load: float | None = None


def cpu_share(before: Reading, after: Reading, threads: int) -> float | None:
    """Process CPU seconds over (wall seconds x intra-op threads): 1.0 = every thread it asked
    for ran all the time.  None without elapsed time."""
    wall = after.wall - before.wall
    if wall <= 0 or threads < 1:
        return None
    return max(0.0, after.cpu - before.cpu) / (wall * threads)


def cpu_wait(before: Reading, after: Reading) -> float | None:
    """The share of the time this process's threads were runnable that they spent waiting for a
    core: wait / (run + wait), over the threads seen in both readings plus those started since
    (counted from zero).  A thread that ended in between drops out; negative deltas (a reused
    thread id) count as nothing.  None without scheduler statistics or with no time runnable."""
    if before.threads is None or after.threads is None:
        return None
    run = wait = 0
    for tid, (run_after, wait_after) in after.threads.items():
        run_before, wait_before = before.threads.get(tid, (0, 0))
        run += max(0, run_after - run_before)
        wait += max(0, wait_after - wait_before)
    if run + wait <= 0:
        return None
    return wait / (run + wait)


def steal_share(before: Reading, after: Reading) -> float | None:
    """The machine's CPU time stolen by the hypervisor over all its CPU time between the
    readings (0 on bare metal).  None without ``/proc/stat`` or with no ticks in between."""
    if before.stat is None or after.stat is None:
        return None
    total = after.stat[1] - before.stat[1]
    if total <= 0:
        return None
    return max(0.0, after.stat[0] - before.stat[0]) / total


def epoch_contention(before: Reading, after: Reading, threads: int, *,
                     cpu_bound: bool = True) -> dict[str, float]:
    """The values an epoch records: whichever of ``time/cpu_share``, ``time/cpu_wait``,
    ``machine/load`` and ``machine/steal`` could be measured, and ``perf/disturbed`` (1.0 or
    0.0) when at least one of the signals it is decided by was.

    ``cpu_bound``: the run computes on the CPU (the CPU-share fallback means nothing for a run
    that waits on an accelerator)."""
    values: dict[str, float] = {}
    share = cpu_share(before, after, threads)
    wait = cpu_wait(before, after)
    steal = steal_share(before, after)
    if share is not None:
        values[CPU_SHARE_KEY] = share
    if wait is not None:
        values[CPU_WAIT_KEY] = wait
    if after.load is not None:
        values[LOAD_KEY] = after.load
    if steal is not None:
        values[STEAL_KEY] = steal
    flag = disturbed(values, cpu_bound=cpu_bound)
    if flag is not None:
        values[DISTURBED_KEY] = 1.0 if flag else 0.0
    return values


def cpu_bound(device_type: str, data_wait_frac: float) -> bool:
    """Whether an epoch's CPU share can tell contention: it trained on the CPU and did not
    spend a fifth or more of its time waiting for batches (an input-bound run's process idles
    while its DataLoader workers read, and its share is low on a quiet machine too)."""
    return device_type == "cpu" and data_wait_frac < INPUT_BOUND


def disturbed(values: Mapping[str, float], *, cpu_bound: bool = True) -> bool | None:
    """Whether an epoch's timing was disturbed (see the thresholds above); None when no signal
    was measured.  Steal over :data:`STEAL_MAX`, or run-queue wait over :data:`CPU_WAIT_MAX`;
    where the wait is unknown, a CPU-bound run's share under :data:`CPU_SHARE_MIN`."""
    signals: list[bool] = []
    if STEAL_KEY in values:
        signals.append(values[STEAL_KEY] > STEAL_MAX)
    if CPU_WAIT_KEY in values:
        signals.append(values[CPU_WAIT_KEY] > CPU_WAIT_MAX)
    elif cpu_bound and CPU_SHARE_KEY in values:
        signals.append(values[CPU_SHARE_KEY] < CPU_SHARE_MIN)
    return any(signals) if signals else None


def reasons(values: Mapping[str, float]) -> list[str]:
    """Why an epoch counts as disturbed, in words (for messages)."""
    out = []
    if values.get(STEAL_KEY, 0.0) > STEAL_MAX:
        out.append(f"steal {values[STEAL_KEY]:.0%} > {STEAL_MAX:.0%}")
    if values.get(CPU_WAIT_KEY, 0.0) > CPU_WAIT_MAX:
        out.append(f"run-queue wait {values[CPU_WAIT_KEY]:.0%} > {CPU_WAIT_MAX:.0%}")
    elif CPU_WAIT_KEY not in values and values.get(CPU_SHARE_KEY, 1.0) < CPU_SHARE_MIN:
        out.append(f"CPU share {values[CPU_SHARE_KEY]:.0%} < {CPU_SHARE_MIN:.0%}")
    return out


def busy_message(load: float | None, cores: int, threads: int) -> str | None:
    """The warning before training when the machine is busy, else None.

    The rule: busy when the 1-minute load average exceeds the cores this process may use minus
    the intra-op threads the run will use, plus :data:`LOAD_SLACK`: other processes then hold
    cores the run needs, and its epochs will wait for them."""
    if load is None or cores < 1:
        return None
    threads = max(1, min(threads, cores))
    free = cores - load
    if load <= cores - threads + LOAD_SLACK:
        return None
    return (f"the machine is busy: 1-minute load average {load:.2f} on {cores} usable "
            f"core{'s' if cores != 1 else ''} leaves {max(free, 0.0):.1f} for a run that uses "
            f"{threads} thread{'s' if threads != 1 else ''}. "
            + ("Use --set train.threads=1, or wait: " if threads > 1 else "Wait, or go on: ")
            + "timings taken now will be flagged as disturbed (perf/disturbed).")


__all__ = ["CPU_SHARE_KEY", "CPU_SHARE_MIN", "CPU_WAIT_KEY", "CPU_WAIT_MAX", "DISTURBED_KEY",
           "LOAD_KEY", "LOAD_SLACK", "STEAL_KEY", "STEAL_MAX", "Reading", "busy_message",
           "cpu_share", "cpu_wait", "disturbed", "epoch_contention", "reasons", "steal_share"]
