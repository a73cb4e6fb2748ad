"""One run trained by several processes with DistributedDataParallel, launched by torchrun.

:func:`train_distributed` starts ``python -m torch.distributed.run --standalone
--nproc-per-node N -m trainlab.execute.rank`` as a subprocess in its own session (so the
terminal's Ctrl-C reaches only trainlab, which forwards a stop that the ranks agree on at their
next log point), and serves the ranks over a local socket: rank 0 sends the run's records (each
write answered after it reached ``sink``) and its engine hooks (replayed on ``callbacks`` here);
every rank sends its outcome.  The ranks' output goes to ``<run_dir>/torchrun.log``.

Backends: NCCL with one GPU per rank on CUDA; gloo on CPU, where the ranks share the cores
(each gets ``threads // nproc`` intra-op threads unless ``train.threads`` says otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from multiprocessing.connection import Client, Connection, Listener, wait
from pathlib import Path
from typing import Any

import torch

from trainlab.config.schema import RunConfig
from trainlab.engine import interrupt
from trainlab.execute.relay import Replayer, answer
from trainlab.hooks import Callback, RunOutcome
from trainlab.records import RecordSink

AUTHKEY_ENV = "TRAINLAB_DDP_AUTHKEY"
LOG_NAME = "torchrun.log"


class _SinkStore:
    """The slice of the store a launcher serves: rank 0 only writes and rewinds."""

    root = Path()

    def __init__(self, sink: RecordSink) -> None:
        self.sink = sink

    def write(self, records: Any) -> None:
        self.sink.write(records)

    def rewind(self, run_id: str, step: int) -> None:
        self.sink.rewind(run_id, step)

    def recorded_through(self, run_id: str, epoch: int, step: int) -> bool | None:
        check = getattr(self.sink, "recorded_through", None)
        return None if check is None else bool(check(run_id, epoch, step))

    def start_run(self, run_id: str, env: dict[str, Any]) -> bool:
        raise ValueError("a DDP rank never claims a run: its launcher did")

    def finish_run(self, *args: Any) -> None:
        raise ValueError("a DDP rank never finishes a run: its launcher does")

    def run_dir(self, run_id: str) -> Path:
        raise ValueError("unused")


def _set_threads(config: RunConfig) -> int | None:
    """``train.threads`` when it is a number; None for ``auto`` (each rank keeps its share)."""
    threads = config.train.threads
    return threads if isinstance(threads, int) else None


def rank_threads(nproc: int) -> int:
    """Intra-op threads per rank on CPU: this process's share split over the ranks."""
    return max(1, torch.get_num_threads() // nproc)


def train_distributed(config: RunConfig, *, run_id: str, run_dir: Path, sink: RecordSink,
                      callbacks: Sequence[Callback] = ()) -> RunOutcome:
    """Train ``config`` on ``config.train.nproc`` ranks; the outcome is rank 0's (or the first
    rank that failed)."""
    nproc = config.train.nproc
    run_dir.mkdir(parents=True, exist_ok=True)
    authkey = secrets.token_bytes(16)
    with tempfile.TemporaryDirectory(prefix="trainlab-ddp-") as tmp:
        address = str(Path(tmp) / "socket")
        launch = Path(tmp) / "launch.json"
        launch.write_text(json.dumps({
            "config": config.to_dict(), "run_id": run_id, "run_dir": str(run_dir),
            "address": address, "threads": rank_threads(nproc)}))
        env = {**os.environ, AUTHKEY_ENV: authkey.hex(),
               "OMP_NUM_THREADS": str(_set_threads(config) or rank_threads(nproc))}
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
        server = _Server(listener, sink, callbacks)
        with open(run_dir / LOG_NAME, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                 f"--nproc-per-node={nproc}", "--module", "trainlab.execute.rank", str(launch)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
            try:
                outcomes = server.serve(proc)
            except BaseException:  # a second Ctrl-C (or any error here): end the group now
                _kill_group(proc)
                raise
            finally:
                server.close(address, authkey)
        return _choose(run_id, outcomes, proc.returncode, run_dir / LOG_NAME)


class _Server:
    """Accepts the ranks' connections and answers them until the group has exited."""

    def __init__(self, listener: Listener, sink: RecordSink,
                 callbacks: Sequence[Callback]) -> None:
        self.listener, self.store = listener, _SinkStore(sink)
        self.callbacks, self.replayer = list(callbacks), Replayer()
        self.accepted: queue.Queue[Connection] = queue.Queue()
        self.closing = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError):
                if self.closing:
                    return
                continue  # a connection that failed authentication
            self.accepted.put(conn)

    def serve(self, proc: subprocess.Popen[bytes]) -> list[tuple[int, RunOutcome]]:
        conns: list[Connection] = []
        outcomes: list[tuple[int, RunOutcome]] = []
        while True:
            while not self.accepted.empty():
                conns.append(self.accepted.get())
            stop = interrupt.stop_requested()
            exited = proc.poll() is not None
            for conn in wait(conns, timeout=0.1) if conns else []:
                assert isinstance(conn, Connection)
                try:
                    frame, message = conn.recv()
                except (EOFError, OSError):
                    conns.remove(conn)
                    conn.close()
                    continue
                if frame == "req":
                    conn.send((answer(self.store, message), stop))
                elif message[0] == "hook":
                    self.replayer.replay(self.callbacks, *message[1:])
                elif message[0] == "outcome":
                    outcomes.append((message[1], message[2]))
            if not conns and exited:
                if self.accepted.empty():
                    return outcomes
            elif not conns:
                proc_wait(proc, 0.1)

    def close(self, address: str, authkey: bytes) -> None:
        self.closing = True
        if self.acceptor.is_alive():  # wake the blocked accept() so the thread ends
            with contextlib.suppress(OSError):
                Client(address, family="AF_UNIX", authkey=authkey).close()
            self.acceptor.join(timeout=1)
        self.listener.close()


def proc_wait(proc: subprocess.Popen[bytes], seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(seconds)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _choose(run_id: str, outcomes: list[tuple[int, RunOutcome]], returncode: int | None,
            log: Path) -> RunOutcome:
    """Rank 0's outcome, unless some rank failed (its error is the cause; the others' errors
    are mostly "peer closed the connection")."""
    failed = [(r, o) for r, o in outcomes if o.status in ("failed", "oom")]
    if failed:
        rank, outcome = failed[0]
        return RunOutcome(run_id, outcome.status, f"rank {rank}: {outcome.error}",
                          outcome.summary)
    main = [o for r, o in outcomes if r == 0]
    if main:
        return main[0]
    return RunOutcome(run_id, "failed", f"torchrun exited with code {returncode} before rank 0 "
                      f"reported; the end of {log}:\n{_tail(log)}", {})


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
