"""Run the trainlab CLI with a fault injected: SIGKILL itself at the Nth time a point is hit.

    python killer.py POINT N trainlab-args...

POINT: checkpoint (after the new checkpoint and its checksum are written, before the rename),
store (inside a store transaction, before COMMIT), eval (in the middle of an evaluation).
"""

from __future__ import annotations

import os
import signal
import sys

point, nth = sys.argv[1], int(sys.argv[2])
hits = [0]


def hit() -> None:
    hits[0] += 1
    if hits[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)


if point == "checkpoint":
    from trainlab.engine import checkpoint

    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if str(dst).endswith("last.pt"):
            hit()
        real_replace(src, dst)

    checkpoint.os.replace = replace  # type: ignore[attr-defined]
elif point == "store":
    from trainlab.store import sqlite

    real_exit = sqlite._Transaction.__exit__

    def exit_(self: object, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            hit()
        real_exit(self, exc_type, *rest)  # type: ignore[arg-type]

    sqlite._Transaction.__exit__ = exit_  # type: ignore[method-assign]
elif point == "eval":
    from trainlab.engine import tasks

    real_sums = tasks.TaskKind.sums

    def sums(self: tasks.TaskKind, out: object, y: object) -> object:
        hit()
        return real_sums(self, out, y)  # type: ignore[arg-type]

    tasks.TaskKind.sums = sums  # type: ignore[method-assign]
else:
    raise SystemExit(f"unknown point {point!r}")

from trainlab.cli import main  # noqa: E402

sys.argv = ["trainlab", *sys.argv[3:]]
main()
