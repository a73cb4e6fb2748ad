"""The `trainlab` command line.

Exit codes: 0 every run ok; 1 the sweep finished but some runs failed or diverged; 2 bad input
(config or usage: a one-paragraph message, no traceback); 130 interrupted (state saved).

:mod:`trainlab.cli.common` holds the app and what commands share; one module per command
group registers its commands on it.  This package imports them all, orders them for
`--help`, and holds the console entry point.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
from typing import NoReturn


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """A Ctrl-C while this package's modules load (about a second): say so, exit 130,
    instead of a traceback of whichever import it fell in.  Python's handler is back once
    they have loaded (a test process that imports the CLI keeps its KeyboardInterrupt)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write("interrupted (Ctrl-C)\n")
        sys.stderr.flush()
    os._exit(130)


with contextlib.suppress(ValueError):  # imported outside the main thread: leave it
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_starting)

from typer.models import CommandInfo  # noqa: E402

from trainlab.cli import (  # noqa: F401, E402  (each registers its commands on import)
    estimate,
    info,
    lr_find,
    plan,
    report,
    run,
    store,
)
from trainlab.cli.common import OPENED_STORES, app, err, escape  # noqa: E402

# `trainlab --help` lists the commands in the order of a session: run, look, explain.
_ORDER = ("run", "estimate", "plan", "ls", "show", "examples", "components", "lr-find", "report",
          "compare")


def _command_name(command: CommandInfo) -> str:
    return command.name or getattr(command.callback, "__name__", "").replace("_", "-")


app.registered_commands.sort(
    key=lambda c: _ORDER.index(_command_name(c)) if _command_name(c) in _ORDER else len(_ORDER))

with contextlib.suppress(ValueError):
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Python's again


def _exit_now(signum: int, frame: object) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _damaged(exc: sqlite3.DatabaseError) -> NoReturn:
    """A database that opened but proves damaged when a query reads a bad page: the
    recovery message and exit 2, as for one damaged at open; anything else is raised."""
    from trainlab.store.sqlite import damage_error, damaged_message, store_path

    if not damage_error(exc):
        raise exc
    db = OPENED_STORES[-1] if OPENED_STORES else store_path() / "trainlab.db"
    err.print(f"[bold red]error:[/] {escape(damaged_message(db, str(exc)))}", highlight=False)
    sys.exit(2)


def _from_keyboard_interrupt(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # SystemExit <- typer's Exit(130) <- KeyboardInterrupt
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _say_interrupted() -> NoReturn:
    from trainlab.engine.interrupt import exit_code, signal_name

    signal.signal(signal.SIGINT, _exit_now)
    err.print(f"[yellow]interrupted ({signal_name()})[/]")
    sys.exit(exit_code())


def main() -> None:
    """Console entry point.

    Once the command is over, a Ctrl-C (typically the second one, after a graceful stop)
    must not end the process by signal, which shows as exit -2 instead of 130: while threads
    are joined and trackers' exit hooks run it exits at once with 130; during the
    interpreter's teardown, which resets Python's handlers to the default action (death by
    SIGINT), it is ignored.  Registered before any command imports a tracker, this atexit
    hook runs after theirs.
    """
    import atexit

    atexit.register(_ignore_sigint)
    try:
        app()
    except KeyboardInterrupt:
        _say_interrupted()
    except SystemExit as exc:
        # Typer turns a KeyboardInterrupt that leaves a command into a silent exit 130.
        if _from_keyboard_interrupt(exc):
            _say_interrupted()
        raise
    except sqlite3.DatabaseError as exc:
        _damaged(exc)
    finally:
        signal.signal(signal.SIGINT, _exit_now)
        # What is left (a 10,000-run plan's configs, torch's modules) is not collected object
        # by object at interpreter exit, which took seconds after the command had ended (and
        # after a Ctrl-C): the process's memory goes back to the system at once anyway.
        import gc

        gc.disable()
        gc.freeze()


__all__ = ["app", "main"]
