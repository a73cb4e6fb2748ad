"""Graceful Ctrl-C.

The first SIGINT only sets a flag: the engine finishes the step it is in, writes its records,
saves a checkpoint that resumes mid-epoch, and ends the run as ``interrupted``; the sweep then
stops and the CLI exits with 130.  The handler is removed after the first signal, so a second
Ctrl-C raises KeyboardInterrupt at once; store transactions roll back and checkpoints are
written by rename, so even that exit leaves the store and run directory consistent.
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


def request_stop() -> None:
    """Ask the engine to stop after the current step (what the first Ctrl-C does)."""
    FLAG[0] = True


def stop_requested() -> bool:
    return FLAG[0]


def clear() -> None:
    FLAG[0] = False


@contextmanager
def graceful_sigint(notify: Callable[[], None] | None = None) -> Iterator[None]:
    """Within this block the first Ctrl-C requests a stop; the second interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def first(signum: int, frame: FrameType | None) -> None:
        request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if notify is not None:
            notify()

    clear()
    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        clear()
