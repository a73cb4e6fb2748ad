"""Runs that train in another process report through a relay to the one that owns the store.

A pool worker, a Ray task and rank 0 of a DDP group all train with a :class:`RemoteStore`: the
store interface (claim, write, rewind, finish) as requests over a channel, each answered only
once the owner has done it (a write returns after the owner's SQLite commit, so a checkpoint
written after it never gets ahead of the store, exactly as in a local run).  Engine hooks
travel the other way as fire-and-forget events that :class:`Replayer` turns back into callback
calls in the owner's process, on a stand-in :class:`RunState` (step, epoch, config, data info
and the latest values; no model), so progress bars and trackers work unchanged.

Each reply also carries the owner's "stop" flag: that is how a Ctrl-C reaches a run that the
owner cannot signal (a Ray task on another node, the ranks of a DDP group).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, cast

import torch

from trainlab.hooks import Callback, RunState
from trainlab.records import MetricRecord
from trainlab.store.base import RunStore


class Channel(Protocol):
    """A worker's line to the owner of the store."""

    def request(self, message: tuple[Any, ...]) -> Any:
        """Send and wait for the owner's answer."""

    def post(self, message: tuple[Any, ...]) -> None:
        """Send without waiting."""


class ConnectionChannel:
    """A channel over a multiprocessing connection (a pipe to the pool, a socket to a DDP
    launcher).  Frames: ``("req", message)`` answered by ``(value, stop)``; ``("post", m)``."""

    def __init__(self, conn: Connection, on_stop: Callable[[], None] | None = None) -> None:
        self.conn, self.on_stop = conn, on_stop

    def request(self, message: tuple[Any, ...]) -> Any:
        self.conn.send(("req", message))
        value, stop = self.conn.recv()
        if stop and self.on_stop is not None:
            self.on_stop()
        return value

    def post(self, message: tuple[Any, ...]) -> None:
        self.conn.send(("post", message))


class RemoteStore:
    """The store, seen from a worker: every call is answered by the owner of the real one
    (a :class:`~trainlab.store.base.RunStore`: each call returns after the owner's commit).

    Run directories are the owner's paths (a cluster needs them on a shared filesystem).
    """

    def __init__(self, channel: Channel, root: Path) -> None:
        self.channel, self.root = channel, root

    def start_run(self, run_id: str, env: dict[str, Any]) -> bool:
        return bool(self.channel.request(("start_run", run_id, env)))

    def finish_run(self, run_id: str, status: str, error: str | None,
                   summary: dict[str, Any]) -> None:
        self.channel.request(("finish_run", run_id, status, error, summary))

    def write(self, records: Sequence[MetricRecord]) -> None:
        if records:
            self.channel.request(("write", list(records)))

    def rewind(self, run_id: str, step: int) -> None:
        self.channel.request(("rewind", run_id, step))

    def recorded_through(self, run_id: str, epoch: int, step: int) -> bool | None:
        return cast("bool | None", self.channel.request(("recorded_through", run_id, epoch, step)))

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id


class DiscardSink:
    """The sink of DDP ranks above 0: rank 0 writes the group's records."""

    def write(self, records: Sequence[MetricRecord]) -> None:
        pass

    def rewind(self, run_id: str, step: int) -> None:
        pass


def answer(store: RunStore, message: tuple[Any, ...]) -> Any:
    """Carry out one store request from a worker."""
    kind, *args = message
    if kind == "write":
        return store.write(args[0])
    if kind == "rewind":
        return store.rewind(args[0], args[1])
    if kind == "recorded_through":  # a store that cannot tell answers None
        check = getattr(store, "recorded_through", None)
        return None if check is None else check(args[0], args[1], args[2])
    if kind == "start_run":
        return store.start_run(args[0], args[1])
    if kind == "finish_run":
        return store.finish_run(args[0], args[1], args[2], args[3])
    raise ValueError(f"unknown store request {kind!r}")


# --- engine hooks across processes ---------------------------------------------------------------


def _snapshot(state: RunState, full: bool = False) -> dict[str, Any]:
    snap: dict[str, Any] = {"step": state.step, "epoch": state.epoch}
    if full:
        snap.update(config=state.config, info=state.info, device=str(state.device),
                    steps_per_epoch=state.steps_per_epoch, start_step=state.start_step,
                    train_time=state.train_time, last=dict(state.last))
    return snap


class RelayCallback(Callback):
    """Forwards every hook to the owner as an event (steps at most ``interval`` apart)."""

    def __init__(self, channel: Channel, interval: float = 0.1) -> None:
        self.channel, self.interval = channel, interval
        self.last_step = 0.0

    def _post(self, hook: str, state: RunState, arg: Any = None, full: bool = False) -> None:
        self.channel.post(("hook", hook, state.run_id, _snapshot(state, full), arg))

    def on_run_start(self, state: RunState) -> None:
        self._post("on_run_start", state, full=True)

    def on_epoch_start(self, state: RunState) -> None:
        self._post("on_epoch_start", state)

    def on_step_end(self, state: RunState) -> None:
        # A clock read per step (as the CLI's own bar does); reads no tensor.
        now = time.perf_counter()
        if now - self.last_step > self.interval:
            self.last_step = now
            self._post("on_step_end", state)

    def on_log(self, state: RunState, values: Mapping[str, float]) -> None:
        self._post("on_log", state, dict(values))

    def on_eval_end(self, state: RunState, values: Mapping[str, float]) -> None:
        self._post("on_eval_end", state, dict(values))

    def on_epoch_end(self, state: RunState, values: Mapping[str, float]) -> None:
        self._post("on_epoch_end", state, dict(values), full=True)

    def on_run_end(self, state: RunState, status: str) -> None:
        self._post("on_run_end", state, status, full=True)


class Replayer:
    """Calls local callbacks for hooks that happened in another process.

    The state they get is a stand-in: ``model``, ``optimizer`` and ``schedule`` are None.
    """

    def __init__(self) -> None:
        self.states: dict[str, RunState] = {}

    def replay(self, callbacks: Sequence[Callback], hook: str, run_id: str,
               snap: dict[str, Any], arg: Any) -> None:
        state = self.states.get(run_id)
        if state is None:
            if "config" not in snap:
                return  # the run started before this process listened: nothing to show
            none = cast(Any, None)
            state = RunState(run_id, snap["config"], snap["info"], torch.device(snap["device"]),
                             none, none, none, snap["steps_per_epoch"])
            self.states[run_id] = state
        for key in ("step", "epoch", "start_step", "train_time"):
            if key in snap:
                setattr(state, key, snap[key])
        if "last" in snap:
            state.last = snap["last"]
        for cb in callbacks:
            fn = getattr(cb, hook)
            if hook in ("on_run_start", "on_epoch_start", "on_step_end"):
                fn(state)
            else:
                fn(state, arg)
        if hook == "on_run_end":
            self.states.pop(run_id, None)
