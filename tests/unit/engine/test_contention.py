"""Contention: the arithmetic with made-up readings, the readers, and a busy machine end to end.

A quiet machine cannot be guaranteed here (the test hosts are shared), so "not flagged" is
checked on made-up readings only; the end-to-end test makes the machine busy on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from trainlab.config.schema import resolve_run
from trainlab.engine import contention as c
from trainlab.engine import machine, train
from trainlab.engine.contention import Reading


def _r(wall: float, cpu: float, threads: dict[int, tuple[int, int]] | None = None,
       stat: tuple[int, int] | None = None, load: float | None = None) -> Reading:
    return Reading(wall, cpu, threads, stat, load)


@pytest.mark.parametrize(("cpu0", "cpu1", "wall", "threads", "share"), [
    (0.0, 2.0, 2.0, 1, 1.0),      # one thread, all of it
    (0.0, 2.0, 2.0, 2, 0.5),      # two threads asked for, one core's worth got
    (1.0, 4.0, 2.0, 2, 0.75),
    (0.0, 0.0, 1.0, 4, 0.0),
])
def test_cpu_share(cpu0: float, cpu1: float, wall: float, threads: int, share: float) -> None:
    assert c.cpu_share(_r(10.0, cpu0), _r(10.0 + wall, cpu1), threads) == pytest.approx(share)


def test_cpu_share_without_time_is_none() -> None:
    assert c.cpu_share(_r(1.0, 0.0), _r(1.0, 1.0), 1) is None


def test_cpu_wait_over_threads_new_and_ended() -> None:
    before = {1: (100, 0), 2: (50, 50), 3: (999, 999)}  # thread 3 ends in between
    after = {1: (400, 100), 2: (150, 150), 4: (100, 0)}  # thread 4 starts in between
    # run: 300 + 100 + 100 = 500, wait: 100 + 100 + 0 = 200
    assert c.cpu_wait(_r(0, 0, before), _r(1, 0, after)) == pytest.approx(200 / 700)
    assert c.cpu_wait(_r(0, 0, None), _r(1, 0, after)) is None
    assert c.cpu_wait(_r(0, 0, {1: (5, 5)}), _r(1, 0, {1: (5, 5)})) is None  # never runnable


def test_steal_share() -> None:
    assert c.steal_share(_r(0, 0, stat=(10, 1000)), _r(1, 0, stat=(20, 1200))) == 0.05
    assert c.steal_share(_r(0, 0), _r(1, 0, stat=(20, 1200))) is None
    assert c.steal_share(_r(0, 0, stat=(1, 5)), _r(1, 0, stat=(1, 5))) is None


QUIET = ({1: (0, 0)}, {1: (10**9, 10**7)})  # 1 % of the runnable time waiting
BUSY = ({1: (0, 0)}, {1: (10**9, 5 * 10**8)})  # 33 %


@pytest.mark.parametrize(("threads", "stat", "share_cpu", "flag"), [
    (QUIET, ((0, 100), (1, 200)), 1.0, 0.0),    # quiet: 1 % wait, 1 % steal
    (BUSY, ((0, 100), (1, 200)), 0.6, 1.0),     # run-queue wait 33 %
    (QUIET, ((0, 100), (10, 200)), 1.0, 1.0),   # steal 10 %
    # An idle intra-op thread lowers the share, but the wait says no one took a core.
    (QUIET, None, 0.5, 0.0),
])
def test_epoch_flag(threads: tuple[dict[int, tuple[int, int]], ...],
                    stat: tuple[tuple[int, int], tuple[int, int]] | None,
                    share_cpu: float, flag: float) -> None:
    s0, s1 = stat if stat is not None else (None, None)
    values = c.epoch_contention(_r(0.0, 0.0, threads[0], s0),
                                _r(1.0, 2 * share_cpu, threads[1], s1, 0.3), threads=2)
    assert values[c.DISTURBED_KEY] == flag
    assert values[c.CPU_SHARE_KEY] == pytest.approx(share_cpu)
    assert values[c.LOAD_KEY] == 0.3
    assert bool(c.reasons(values)) == bool(flag)


def test_share_is_the_fallback_without_schedstat() -> None:
    low = c.epoch_contention(_r(0.0, 0.0), _r(1.0, 0.5), threads=1)
    assert low[c.DISTURBED_KEY] == 1.0 and c.CPU_WAIT_KEY not in low
    assert c.epoch_contention(_r(0.0, 0.0), _r(1.0, 0.95), threads=1)[c.DISTURBED_KEY] == 0.0
    # An accelerator run waits on its device: its CPU share decides nothing.
    assert c.DISTURBED_KEY not in c.epoch_contention(_r(0.0, 0.0), _r(1.0, 0.1), threads=1,
                                                     cpu_bound=False)


@pytest.mark.parametrize(("load", "cores", "threads", "busy"), [
    (0.2, 2, 2, False), (0.8, 2, 2, False), (1.2, 2, 2, True), (1.9, 2, 1, False),
    (2.1, 2, 1, True), (None, 2, 2, False), (3.0, 16, 8, False), (9.5, 16, 8, True),
])
def test_busy_message(load: float | None, cores: int, threads: int, busy: bool) -> None:
    message = c.busy_message(load, cores, threads)
    assert (message is not None) == busy
    if message and threads > 1:
        assert "train.threads=1" in message


def test_readers_never_fail() -> None:
    r = machine.read()
    assert r.cpu > 0 and machine.usable_cores() >= 1
    if os.path.exists("/proc/self/task"):
        assert r.threads and os.getpid() in r.threads
    if os.path.exists("/proc/stat"):
        assert r.stat is not None and r.stat[1] >= r.stat[0] >= 0


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """Two spinning Python processes per core this process may use, pinned to those cores: the
    run's thread then waits for a core most of the time, whatever the scheduler favours (one
    spinner a core left a short run alone often enough to make the test flaky)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    pin = f"import os; os.sched_setaffinity(0, {set(cores)!r}); " if cores else ""
    procs = [subprocess.Popen([sys.executable, "-c", pin + "\nwhile True: pass"])
             for _ in range(2 * (len(cores) if cores else os.cpu_count() or 1))]
    try:
        time.sleep(0.5)  # let them start spinning
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


BUSY_RUN = {
    "data": {"name": "synthetic", "n_samples": 6000, "shape": [32], "n_classes": 4,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 128},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "seed": 0, "threads": 1, "log_every": 50},
}


def test_busy_machine_flags_epochs(busy_cores: None) -> None:
    outcome = train(resolve_run(BUSY_RUN))
    assert outcome.status == "ok", outcome.error
    summary = outcome.summary
    # Every epoch is expected to be flagged; one is enough to fail the run's timing (a scheduler
    # may leave the run alone for a short epoch).
    assert summary["disturbed_epochs"] >= 1, summary
    assert summary["timing_trusted"] is False


def test_an_input_bound_epoch_is_not_judged_by_its_cpu_share() -> None:
    """Without scheduler statistics the CPU share decides; a run waiting on its DataLoader
    workers idles on a quiet machine too, so its low share says nothing."""
    low_share = {c.CPU_SHARE_KEY: 0.06}
    assert c.disturbed(low_share, cpu_bound=c.cpu_bound("cpu", 0.05)) is True
    assert c.disturbed(low_share, cpu_bound=c.cpu_bound("cpu", 0.9)) is None
    assert not c.cpu_bound("cuda", 0.0)


def test_one_machine_reading_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch's end reading is the next epoch's start: epochs + 1 readings in a run."""
    taken: list[Reading] = []
    real = machine.read

    def read() -> Reading:
        taken.append(real())
        return taken[-1]

    monkeypatch.setattr(machine, "read", read)
    raw = {**BUSY_RUN, "data": {**BUSY_RUN["data"], "n_samples": 200}, "train": {
        **BUSY_RUN["train"], "epochs": 3}}
    outcome = train(resolve_run(raw))
    assert outcome.status == "ok", outcome.error
    assert len(taken) == 3 + 1


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc")
def test_kept_proc_files_read_what_fresh_reads_read() -> None:
    """machine.py keeps /proc/stat and the threads' schedstat open (pread at offset 0): each
    reading is the file's text now, the same fields a fresh open reads; ended threads' files
    are closed, new threads are read."""
    import threading

    def fresh_threads() -> dict[int, tuple[int, int]]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                fields = f.read(128).split()
            out[int(tid)] = (int(fields[0]), int(fields[1]))
        return out

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    first = machine.thread_schedstat()
    assert first is not None
    spin(0.05)  # this thread's run time moves on: a kept file must not replay old text
    kept = machine.thread_schedstat()
    now = fresh_threads()
    assert kept is not None and set(kept) == set(now)
    me = threading.get_native_id()
    assert first[me][0] < kept[me][0] <= now[me][0]
    # A thread started after the first reading is read; once ended, its file is closed.
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with_worker = machine.thread_schedstat()
        assert with_worker is not None and worker.native_id in with_worker
    finally:
        release.set()
        worker.join()
    after = machine.thread_schedstat()
    assert after is not None and worker.native_id not in after
    assert not any(p.endswith(f"/{worker.native_id}/schedstat") for p in machine._OPEN)
    # /proc/stat: ticks through the kept descriptor equal a fresh read's at the same moment
    # (to within the ticks between the two reads) and move on with time.
    stat0 = machine.cpu_steal_ticks()
    spin(0.05)
    stat1 = machine.cpu_steal_ticks()
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.read(256).split(b"\n", 1)[0].split()[1:9]]
    assert stat0 is not None and stat1 is not None and stat1[1] > stat0[1]
    assert stat1[1] <= sum(fields) <= stat1[1] + 50 * (os.cpu_count() or 1)


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/task"),
                    reason="fork and /proc")
def test_a_forked_child_reads_its_own_threads() -> None:
    assert machine.thread_schedstat()  # the parent's files kept open
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its one thread, not the parent's
        try:
            threads = machine.thread_schedstat() or {}
            os.write(write, b"ok" if set(threads) == {os.getpid()} else b"no")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 2) == b"ok"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
