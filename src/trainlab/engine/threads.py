"""``train.threads: auto``: the intra-op thread count that is fastest for this run's model on
this machine now.

The trap it avoids (DESIGN.md, "Measurement traps"): with other processes on the cores, each
parallel op waits at its barrier for the thread whose core was taken; on a 2-core VM with two
busy processes, epochs at torch's default two threads took 83 s against 10 s at one.  And a
tiny model has nothing to split: its ops are below torch's grain size, so more threads only
add wake-ups.  How ``auto`` decides, cheapest first:

1. the process has one thread to give (``--jobs`` = cores, a torchrun rank's share, a caller's
   ``torch.set_num_threads(1)``): one.  ``auto`` never exceeds the count the process had;
2. other processes' threads on a run queue now (sampled a few times; :func:`room`) leave
   fewer than two cores free: one (``busy``);
3. a few real steps at one thread (after two warm-up steps): under :data:`TINY_STEP_S` a
   step, one (``tiny``);
4. otherwise the candidates (1, 2, 4, ... up to the cores free, and that count) are timed in
   turn, in alternating order over at least two rounds of about :data:`BUDGET_S` in all, each
   after one untimed step at its new count (the pool resizes); a candidate 1.5x slower than
   the best so far is dropped.  The choice is the fewest threads whose trimmed mean step is
   within :data:`MARGIN` of the fastest (``fastest``): a thread that does not pay for itself
   is a core other work could use.  A large model gets one round: about six one-thread
   steps' time in all, whatever its size.

The timing runs on a model and optimizer of its own under a forked RNG (the calibration probe's,
:mod:`trainlab.estimate.probe`), so it changes neither the run's RNG nor the model it trains;
when ``trainlab estimate`` (or ``trainlab run``'s estimate) already probed the same setup in
this process, the run reuses that answer (:func:`remember` / :func:`recall`, for
:data:`FRESH_S`, never above the cores free now); steps 1 and 2 are decided afresh by every
run, since a load is a fact about the moment, not the setup.  On an accelerator the count is
the process's (host threads only feed the device), and under torchrun each rank keeps its share
of the cores.

This module holds the decision and its arithmetic (the step function is passed in, so tests
use made-up timings); the probe module times the real steps.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainlab.engine import machine
from trainlab.engine.timing import trimmed_mean

if TYPE_CHECKING:
    from trainlab.config.schema import RunConfig

# A step this short at one thread has nothing worth splitting: torch splits an op over threads
# only above 32768 elements (its grain size), and a step of a model that small is Python and
# dispatch, which more threads slow down (a wake-up per parallel op).
TINY_STEP_S = 2e-4
# The fewest threads whose step is within this of the fastest count's: a thread that buys
# less is a core another process (or another --jobs worker) could use, and 3 % is inside
# what two probe windows differ by on a shared machine anyway.
MARGIN = 0.03
# Seconds of steps the timing rounds take in all (two rounds at least); a step longer than
# the whole budget still gets its one round (:data:`MAX_ROUNDS_S`).
BUDGET_S = 0.25
# After the first round, no more rounds once this much was spent: a large model's choice
# costs about six one-thread steps' time, however long they are.
MAX_ROUNDS_S = 4 * BUDGET_S
MIN_ROUNDS = 2
# A candidate this much slower than the best so far cannot win: no more rounds for it.
DROP = 1.5
# A first step at a new count this much slower than the best count's steps rules it out alone.
SWITCH_DROP = 4.0
# Steps per candidate per round at most (tiny steps would otherwise loop for long).
MAX_SLOT_STEPS = 200
# A remembered choice is measured again after this many seconds: the machine's load moves.
FRESH_S = 600.0
# Samples of the run queue for the busy check, this far apart.
BUSY_SAMPLES = 5
BUSY_GAP_S = 0.002

Step = Callable[[int], float]  # one training step at this many threads -> its seconds


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op threads a run trains with, and how they were decided.

    ``reason``: ``set`` (``train.threads`` is a number), or for ``auto``: ``one thread`` (the
    process had one to give), ``busy``, ``tiny``, ``fastest``, ``accelerator`` or
    ``distributed``.  ``step_s``: the trimmed mean seconds per step at each count timed."""

    threads: int
    reason: str
    step_s: Mapping[int, float] = field(default_factory=dict)
    seconds: float = 0.0  # what deciding cost (model built, steps timed)
    free_cores: int | None = None  # cores not taken by other processes when decided
    shared: bool = False  # reused from an earlier probe of the same setup in this process

    @property
    def auto(self) -> bool:
        return self.reason != "set"

    def describe(self) -> dict[str, Any]:
        """For the run's summary (``speed.threads_auto``); JSON keys are strings."""
        out: dict[str, Any] = {"reason": self.reason, "seconds": self.seconds,
                               "shared": self.shared}
        if self.step_s:
            out["step_s"] = {str(k): v for k, v in sorted(self.step_s.items())}
        if self.free_cores is not None:
            out["free_cores"] = self.free_cores
        return out


def ceiling() -> int:
    """The most threads ``auto`` may pick: the process's intra-op count (what the executor
    gave it) within the cores it may run on."""
    import torch

    return max(1, min(torch.get_num_threads(), machine.usable_cores()))


def candidates(limit: int) -> list[int]:
    """1, the powers of two below ``limit``, and ``limit``."""
    out, n = [1], 2
    while n < limit:
        out.append(n)
        n *= 2
    if limit > 1:
        out.append(limit)
    return out


def others_running(samples: int = BUSY_SAMPLES, gap_s: float = BUSY_GAP_S) -> float | None:
    """The median over a few instants of other processes' threads on a run queue."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(gap_s)
        value = machine.running_elsewhere()
        if value is None:
            return None
        values.append(value)
    return statistics.median(values)


def room(limit: int, others: float | None, cores: int | None = None) -> int:
    """Threads that can run without waiting for a core: ``limit``, less what other processes'
    runnable threads take of the machine's cores (``os.cpu_count()``: the run queue counted
    is the machine's, whatever this process's affinity)."""
    if others is None:
        return limit
    if cores is None:
        import os

        cores = os.cpu_count() or 1
    return max(1, min(limit, math.floor(cores - others)))


def before_timing(limit: int, others: float | None, cores: int | None = None
                  ) -> ThreadChoice | None:
    """The choice when no timing is needed (one thread to give, or a busy machine), else
    None."""
    if limit <= 1:
        return ThreadChoice(1, "one thread")
    free = room(limit, others, cores)
    if free < 2:
        return ThreadChoice(1, "busy", free_cores=free)
    return None


def choose(step: Step, limit: int, *, budget_s: float = BUDGET_S,
           free_cores: int | None = None) -> ThreadChoice:
    """Time ``step`` at each candidate count up to ``limit`` (see the module doc) and pick.

    Every second ``step`` returns counts against the budget (warm-up and switch steps too),
    so a fake step function makes the choice deterministic."""
    spent = 0.0

    def run(threads: int) -> float:
        nonlocal spent
        seconds = step(threads)
        spent += seconds
        return seconds

    if limit <= 1:
        return ThreadChoice(1, "one thread", free_cores=free_cores)
    counts = candidates(limit)
    times: dict[int, list[float]] = {c: [] for c in counts}
    run(1)
    run(1)  # warm-up: lazy initialisation, allocator growth, kernel selection
    times[1].append(run(1))
    if times[1][0] < 10 * TINY_STEP_S:  # cheap steps: the fastest of three says "tiny"
        times[1] += [run(1), run(1)]
    if min(times[1]) < TINY_STEP_S:
        return ThreadChoice(1, "tiny", {1: trimmed_mean(times[1])}, free_cores=free_cores)
    slot_s = budget_s / (MIN_ROUNDS * len(counts))
    active = list(counts)
    current, rounds = 1, 0
    while True:
        for c in active if rounds % 2 == 0 else reversed(active):
            if c != current:
                current = c
                # The first step at a new count pays for the pool's resize: untimed, unless it
                # alone rules the count out (on a busy machine one step at two threads took
                # 20x one thread's: no need to wait for a second).
                seconds = run(c)
                if seconds > SWITCH_DROP * min(trimmed_mean(v) for v in times.values() if v):
                    times[c].append(seconds)
                    continue
            slot = 0.0
            for _ in range(MAX_SLOT_STEPS):
                seconds = run(c)
                times[c].append(seconds)
                slot += seconds
                if slot >= slot_s:
                    break
        rounds += 1
        means = {c: trimmed_mean(times[c]) for c in active}
        best = min(means.values())
        active = [c for c in active if means[c] <= DROP * best]
        if len(active) == 1 or spent >= MAX_ROUNDS_S or (
                rounds >= MIN_ROUNDS and spent >= budget_s):
            break
    means = {c: trimmed_mean(v) for c, v in times.items() if v}
    best = min(means.values())
    pick = min(c for c, m in means.items() if m <= best * (1 + MARGIN))
    return ThreadChoice(pick, "fastest", means, free_cores=free_cores)


# --- the per-process memory of choices ---------------------------------------------------------


def setup_key(config: RunConfig) -> str:
    """Runs that differ only in what cannot change step time or memory share a probe (and a
    thread choice): not the LR, weight decay, seed, epochs or schedule."""
    d = config.to_dict()
    opt = {k: v for k, v in d["optimizer"].items() if k not in ("lr", "weight_decay")}
    # nproc: a DDP rank steps 1/nproc of the global batch, so its step is another setup's.
    train = {k: d["train"][k] for k in ("device", "precision", "compile", "channels_last",
                                        "data_on_device", "threads", "nproc")}
    return json.dumps([d["data"], d["model"], opt, d["finetune"], train], sort_keys=True)


_CHOICES: dict[tuple[str, int], tuple[float, ThreadChoice]] = {}


def remember(config: RunConfig, limit: int, choice: ThreadChoice, scope: str = "") -> None:
    """Keep a timed ``choice`` for later runs of the same setup and thread ceiling in this
    process (a busy machine is checked afresh by every run: :func:`before_timing`);
    ``scope`` tells apart steps of the same setup that differ (a stack of N models)."""
    _CHOICES[(setup_key(config) + scope, limit)] = (time.monotonic(), choice)


def recall(config: RunConfig, limit: int, most: int | None = None,
           scope: str = "") -> ThreadChoice | None:
    """A choice timed for this setup (and ``scope``) and ceiling in the last
    :data:`FRESH_S` seconds, at most ``most`` threads (the cores other work leaves free
    now)."""
    hit = _CHOICES.get((setup_key(config) + scope, limit))
    if hit is None or time.monotonic() - hit[0] > FRESH_S:
        return None
    count = hit[1].threads if most is None else max(1, min(hit[1].threads, most))
    return ThreadChoice(count, hit[1].reason, hit[1].step_s, 0.0, hit[1].free_cores,
                        shared=True)


def forget() -> None:
    """Drop every remembered choice (tests; a caller who knows the machine changed)."""
    _CHOICES.clear()


__all__ = ["BUDGET_S", "MARGIN", "TINY_STEP_S", "ThreadChoice", "before_timing", "candidates",
           "ceiling", "choose", "forget", "others_running", "recall", "remember", "room",
           "setup_key"]
