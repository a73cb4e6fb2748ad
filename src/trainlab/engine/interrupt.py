"""Graceful Ctrl-C, SIGTERM and SIGUSR1.

The first SIGINT only sets a flag: the engine finishes the step it is in, writes its records,
saves a checkpoint that resumes mid-epoch, and ends the run as ``interrupted``; the sweep then
stops and the CLI exits with 130.  The handler is removed after the first signal, so a second
Ctrl-C raises KeyboardInterrupt at once; store transactions roll back and checkpoints are
written by rename, so even that exit leaves the store and run directory consistent.

SIGTERM (what Slurm, Kubernetes and ``timeout`` send before SIGKILL) and SIGUSR1 (Slurm's
``--signal=USR1@SECONDS`` warning before the time limit) are honoured the same way; the exit
code is then 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1).  A stop takes one
training step plus a checkpoint, well inside Slurm's default 30 s grace period.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

# A one-element list rather than a bool so the training loop can bind it to a local and test
# it every step for the cost of an index.
FLAG = [False]
# The signal that asked for the stop (None: none, or a stop requested in code); reset when a
# graceful block starts, not when it ends, so the CLI can read it for its exit code.
RECEIVED: list[int | None] = [None]
# Signals that stop gracefully (SIGUSR1 does not exist on Windows).
SIGNALS: tuple[int, ...] = tuple(
    s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None))
    if s is not None)


def request_stop() -> None:
    """Ask the engine to stop after the current step (what the first Ctrl-C does)."""
    FLAG[0] = True


def stop_requested() -> bool:
    return FLAG[0]


def clear() -> None:
    FLAG[0] = False


def received_signal() -> int | None:
    """The signal that stopped the last graceful block (None when no signal did)."""
    return RECEIVED[0]


def signal_name(signum: int | None = None) -> str:
    """``Ctrl-C`` for SIGINT, else the signal's name (``SIGTERM``)."""
    signum = RECEIVED[0] if signum is None else signum
    if signum is None or signum == signal.SIGINT:
        return "Ctrl-C"
    return signal.Signals(signum).name


def exit_code() -> int:
    """The exit code of a stopped sweep: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (RECEIVED[0] or signal.SIGINT)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    RECEIVED[0] = signum
    raise KeyboardInterrupt


@contextmanager
def graceful_sigint(notify: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within this block the first Ctrl-C, SIGTERM or SIGUSR1 requests a stop; a second one
    (of any of them) interrupts at once with KeyboardInterrupt.  ``notify(signum)`` is called
    on the first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def first(signum: int, frame: FrameType | None) -> None:
        request_stop()
        RECEIVED[0] = signum
        for s in SIGNALS:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT
                          else _raise_interrupt)
        if notify is not None:
            notify(signum)

    clear()
    RECEIVED[0] = None
    for s in SIGNALS:
        signal.signal(s, first)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        clear()
