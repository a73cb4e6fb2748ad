"""Checkpoints of stacked runs (``train.stack``): each run's ``last.pt`` as if it had trained
alone, and a rerun after a kill that resumes the whole stack from them.

At an epoch's end (at most every ``train.checkpoint_every_s``, always at the last epoch;
``train.checkpoint: false`` turns it off) every live run of the stack writes ``last.pt`` (and
``best.pt`` when its best weights changed) in its own run dir, in the solo engine's format
(:mod:`trainlab.engine.resume`): its slice of the stacked weights as its model's state dict, its
slice of the stacked optimizer state in torch's own format for its optimizer (SGD's
``momentum_buffer``, Adam's ``step``, ``exp_avg``, ``exp_avg_sq``) with the param groups its solo
run's optimizer has, its schedule's state, epoch, step, RNG states, best metric and per-epoch
values.  Such a checkpoint resumes in the solo engine as the run's own would.  The files are
written in one pass (serialize and write all, then fsync all, then rename each into place,
checksum first), not one fsync per file in turn.

A rerun resumes the stack when every run it trains has a checkpoint at one common epoch
(``last.pt``, or its ``.prev`` where a kill fell between the renames of two runs), the store
holds each run's rows up to it (the solo engine's check: ``recorded_through``) and its
``best.pt`` matches; each run's rows after it are rewound and redone.  Otherwise the stack
restarts from its start (with a note in each run's summary) and the stale checkpoints go.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import random
import sys
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.components import build_optimizer
from trainlab.components.optimizers import no_dynamo_import
from trainlab.config.schema import RunConfig
from trainlab.engine import interrupt
from trainlab.engine.checkpoint import _encode_numpy, _map, _prev, _sums, load_verified
from trainlab.engine.resume import _full_disk_hint, cuda_rng_state
from trainlab.errors import DiskFull, RunError

if TYPE_CHECKING:
    from trainlab.engine.stack import _Member, _StackTrainer

# Param-group keys that say how torch runs the step (kernels), not what it computes: a
# member's come from its solo optimizer, never from the carrier (built on a host placeholder).
_KERNEL_KEYS = ("foreach", "fused", "capturable", "differentiable")
_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")
_CHECKPOINT_FILES = ("last.pt", "last.pt.sha256", "last.pt.prev", "last.pt.prev.sha256")


@dataclass
class SoloLayout:
    """What a run's solo checkpoint holds that the stack does not keep: its optimizer's param
    groups as torch builds them (hyperparameters, kernel flags, group names; ``params`` as
    parameter names, in the solo order) and the RNG states its solo run trains from (NumPy's
    encoded, as checkpoints store it)."""

    groups: list[dict[str, Any]]
    params: list[list[str]]
    rng: dict[str, Any]

    def index(self) -> dict[str, int]:
        """Parameter name -> its index in the solo optimizer's state dict."""
        names = [name for group in self.params for name in group]
        return {name: i for i, name in enumerate(names)}


def solo_layout(config: RunConfig, param_groups: Sequence[dict[str, Any]], model: nn.Module,
                device: torch.device) -> SoloLayout:
    """The layout of the optimizer ``config`` builds for ``model`` (built, read, dropped),
    and the RNG states now (right after the model's seeded build, as its solo run has them;
    a stacked model draws no random numbers while it trains)."""
    names = {id(p): n for n, p in model.named_parameters()}
    with no_dynamo_import():  # never stepped: no compiler import (stack.py's carrier too)
        optimizer = build_optimizer(config.optimizer, list(param_groups))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    params = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
           "python": random.getstate(), "cuda": cuda_rng_state(device)}
    return SoloLayout(groups, params, _map(rng, _encode_numpy))  # encoded once, as saved


def _scalar_dtype() -> torch.dtype:
    """The dtype of torch's Adam ``step`` (``torch.optim.optimizer._get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


_KEYS: weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple[str, str, bool]], Any]] = (
    weakref.WeakKeyDictionary())


def _state_keys(t: _StackTrainer) -> list[tuple[str, str, bool]]:
    """(state-dict key, stacked key, is a parameter) of the model's state dict, in its order."""
    return _keys_of(t.base)[0]


def _keys_of(base: nn.Module) -> tuple[list[tuple[str, str, bool]], Any]:
    """The state-dict keys of ``base`` (see :func:`_state_keys`) and its ``_metadata``."""
    if base not in _KEYS:
        params = {id(p): n for n, p in base.named_parameters()}
        buffers = {id(b): n for n, b in base.named_buffers()}
        keys = []
        state = base.state_dict(keep_vars=True)
        for key, value in state.items():
            if id(value) in params:
                keys.append((key, params[id(value)], True))
            elif id(value) in buffers:
                keys.append((key, buffers[id(value)], False))
        _KEYS[base] = (keys, getattr(state, "_metadata", None))
    return _KEYS[base]


def _model_state(t: _StackTrainer, weights: dict[str, Tensor], index: int | None
                 ) -> OrderedDict[str, Tensor]:
    """A solo model's state dict from stacked ``weights`` (``index``: the model's slice; None:
    ``weights`` are one model's already).  Slices are copied: a saved view would carry the
    whole stacked storage."""
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, source, _ in _state_keys(t):
        value = weights[source] if index is None else weights[source][index]
        out[key] = value.detach().clone()
    metadata = _keys_of(t.base)[1]
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


# --- writing -----------------------------------------------------------------------------


@dataclass
class EpochEnd:
    """The stack at an epoch's end, as its runs' checkpoints hold it: the stacked weights and
    optimizer state on the host, and each live run's own parts.  Copies when it is kept for
    later (a Ctrl-C before the next checkpoint writes it: :func:`write_unsaved`)."""

    epoch: int
    step: int
    train_time: float
    elapsed: float
    step_count: int
    weights: dict[str, Tensor]
    states: list[dict[str, Tensor]]
    runs: list[tuple[int, _Member, dict[str, Any]]]  # (index, run, its parts)


def due(t: _StackTrainer, epoch: int) -> bool:
    """Whether the epoch that just ended writes checkpoints (the solo engine's rule)."""
    tc = t.configs[0].train
    return (epoch == tc.epochs or interrupt.stop_requested()
            or time.perf_counter() - t.checkpointed_at >= tc.checkpoint_every_s)


def checkpoint(t: _StackTrainer, epoch: int) -> None:
    """Each live run's ``last.pt`` (after its ``best.pt``, when its best weights changed) at
    the end of ``epoch`` when due, its records in the store already; when not due, the epoch
    end kept in memory (host copies: about a millisecond for 16 digits MLPs) for a Ctrl-C."""
    t.unsaved = None
    if not t.configs[0].train.checkpoint:
        return
    if due(t, epoch):
        _write(t, _epoch_end(t, epoch, copy=False))
        t.checkpointed_at = time.perf_counter()
    else:
        t.unsaved = _epoch_end(t, epoch, copy=True)


def write_unsaved(t: _StackTrainer) -> None:
    """The last epoch end's checkpoints, if they are not on disk (a Ctrl-C: a rerun then
    loses only the epoch that was under way).  A failure to write is a warning."""
    unsaved, t.unsaved = t.unsaved, None
    if unsaved is not None:
        try:
            _write(t, unsaved)
        except RunError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)


def save_best(t: _StackTrainer, members: Sequence[_Member]) -> None:
    """``best.pt`` of ``members`` whose best weights are not on disk yet (before the test)."""
    write_all([f for m in members for f in _best_file(t, m)])
    for m in members:
        m.best_unsaved = False


def _epoch_end(t: _StackTrainer, epoch: int, copy: bool) -> EpochEnd:
    runs = []
    for i, m in enumerate(t.members):
        if m.alive and m.run_dir is not None:
            runs.append((i, m, {
                "schedule": _map(deepcopy(m.schedule.state_dict()), _encode_numpy),
                "group": {k: v for k, v in m.carrier.param_groups[0].items() if k != "params"},
                "best": dict(m.best), "best_file": _best_file(t, m),
                "epoch_stats": _map(list(m.epoch_stats), _encode_numpy),
                "grad_norms": list(m.grad_norms)}))
    return EpochEnd(
        epoch, t.step, t.train_time, time.perf_counter() - t.t0, t.optimizer.step_count,
        {k: v.detach().to("cpu", copy=copy) for k, v in {**t.params, **t.buffers}.items()},
        [{k: v.detach().to("cpu", copy=copy) for k, v in s.items()} for s in t.optimizer.state],
        runs)


def _write(t: _StackTrainer, end: EpochEnd) -> None:
    files: list[tuple[Path, dict[str, Any], bool]] = []
    for i, m, parts in end.runs:
        assert m.run_dir is not None
        files.extend(parts["best_file"])
        files.append((m.run_dir / "last.pt", _payload(t, end, i, m, parts), True))
    write_all(files)
    for _, m, parts in end.runs:
        if parts["best_file"]:  # unchanged since (a best changes at an epoch's end only)
            m.best_unsaved = False


def _best_file(t: _StackTrainer, m: _Member) -> list[tuple[Path, dict[str, Any], bool]]:
    if not m.best_unsaved or m.best_state is None or m.run_dir is None:
        return []
    return [(m.run_dir / "best.pt", {"model": _model_state(t, m.best_state, None),
                                     "epoch": m.best.get("best_epoch", t.epoch),
                                     "step": m.best.get("best_step", t.step)}, False)]


def _payload(t: _StackTrainer, end: EpochEnd, i: int, m: _Member, parts: dict[str, Any]
             ) -> dict[str, Any]:
    """Run ``i``'s ``last.pt`` as its solo run writes it (resume.Resumable._checkpoint)."""
    assert m.layout is not None
    best = {"params_total": t.total, "params_trainable": t.trainable,
            "params_trainable_pct": 100.0 * t.trainable / max(t.total, 1),
            **{k: v for k, v in parts["best"].items() if k != "test"}}
    return {
        "epoch": end.epoch, "step": end.step, "train_time": end.train_time, "partial": None,
        "elapsed": end.elapsed, "model": _model_state(t, end.weights, i),
        "optimizer": _optimizer_state(t, end, i, m, parts["group"]),
        "schedule": parts["schedule"], "best": _map(best, _encode_numpy), "scaler": None,
        "stop_reason": None, "epoch_stats": parts["epoch_stats"],
        "grad_norms": parts["grad_norms"], "callbacks": {}, "rng": m.layout.rng}


def _optimizer_state(t: _StackTrainer, end: EpochEnd, i: int, m: _Member,
                     group: dict[str, Any]) -> dict[str, Any]:
    """Run ``i``'s slice of the stacked optimizer as its solo torch optimizer's state dict."""
    assert m.layout is not None
    solo = m.layout.index()
    state: dict[int, dict[str, Tensor]] = {}
    for name, held in zip(t.params, end.states):
        if not held or name not in solo:
            continue
        if t.optimizer.adam:
            state[solo[name]] = {
                "step": torch.tensor(float(end.step_count), dtype=_scalar_dtype()),
                "exp_avg": held["exp_avg"][i].clone(), "exp_avg_sq": held["exp_avg_sq"][i].clone()}
        elif t.optimizer.momentum[i] != 0.0 and "momentum_buffer" in held:  # none at 0
            state[solo[name]] = {"momentum_buffer": held["momentum_buffer"][i].clone()}
    carrier = {k: v for k, v in group.items()  # the schedule's LR and its keys
               if k not in _KERNEL_KEYS}
    groups, start = [], 0
    for meta, names in zip(m.layout.groups, m.layout.params):
        groups.append({**meta, **carrier, "params": list(range(start, start + len(names)))})
        start += len(names)
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def write_all(files: Sequence[tuple[Path, dict[str, Any], bool]]) -> None:
    """:func:`trainlab.engine.checkpoint.save_atomic` for many files (``(path, payload,
    keep_previous)``; NumPy objects in a payload encoded already, by ``checkpoint._map``) in
    one pass: each serialized and written under a temporary name, then all made durable at
    once (:func:`_durable`), then each renamed into place in order, its checksum first.  A
    kill leaves each file either new or as it was.  A failure to write raises
    :class:`RunError` (:class:`DiskFull` for a full disk), the temporary files removed."""
    staged: list[tuple[Path, str]] = []
    try:
        for path, payload, _ in files:
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            data = buffer.getvalue()
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((path, _sha256(data)))
            _tmp(path).write_bytes(data)
            _tmp(_sums(path)).write_text(staged[-1][1])
        _durable([_tmp(path) for path, _ in staged])
    except OSError as exc:
        for path, _, _ in files:
            for tmp in (_tmp(path), _tmp(_sums(path))):
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
        failed = staged[-1][0] if staged else files[0][0]
        hint = _full_disk_hint(failed.parent, exc)
        raise (DiskFull if hint else RunError)(
            f"could not write the checkpoint {failed}: {exc.strerror or exc}{hint}") from exc
    for (path, _), (_, _, keep_previous) in zip(staged, files):
        if keep_previous and path.is_file() and _sums(path).is_file():
            os.replace(_sums(path), _sums(_prev(path)))
            os.replace(path, _prev(path))
        os.replace(_tmp(_sums(path)), _sums(path))  # a file without its checksum: never used
        os.replace(_tmp(path), path)


def _durable(paths: Sequence[Path]) -> None:
    """Make the files' data durable: on Linux one ``syncfs`` per file system they are on
    (fsyncing 32 checkpoint files one after another took twice as long here while other
    work used the disk), else (or when it fails) an fsync of each."""
    syncfs = _syncfs()
    if syncfs is not None and len(paths) > 1:
        fds: dict[int, int] = {}
        try:
            for path in paths:
                device = path.stat().st_dev
                if device not in fds:
                    fds[device] = os.open(path, os.O_RDONLY)
            if all(syncfs(fd) == 0 for fd in fds.values()):
                return
        finally:
            for fd in fds.values():
                os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=1)
def _syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return cast(Callable[[int], int], fn)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --- resuming ----------------------------------------------------------------------------


def restore(t: _StackTrainer) -> bool:
    """Resume the stack from its runs' checkpoints at their latest common epoch; False (the
    stack starts from scratch) when some run has none there, or one that does not fit, or the
    store lacks rows it covers, or no run has any.  Each resumed run's rows after the
    checkpoint are rewound."""
    if any(m.run_dir is None for m in t.members):
        return False
    found = [list(_candidates(m.run_dir)) for m in t.members]  # type: ignore[arg-type]
    if not any(found):
        return False
    why = "no epoch that every run of the stack has a checkpoint at"
    common = set.intersection(*[{(int(c["epoch"]), int(c["step"])) for c in cs}
                                for cs in found])
    for epoch, step in sorted(common, reverse=True):
        chosen = [next(c for c in cs if (c["epoch"], c["step"]) == (epoch, step))
                  for cs in found]
        problem, bests = _check(t, epoch, step, chosen)
        if problem is None:
            _apply(t, chosen, bests)
            fallback = sum(c is not cs[0] for c, cs in zip(chosen, found))
            note = (f"resumed with the rest of its stack from each run's checkpoint at epoch "
                    f"{epoch} (step {step})")
            if fallback:
                note += (f"; {fallback} run(s) from last.pt.prev, their last.pt being newer "
                         "than the others'")
            t.notes.append(note)
            return True
        why = problem
    missing = [m.run_id for m, cs in zip(t.members, found) if not cs]
    if missing:
        why = f"run(s) {', '.join(missing)} have no usable last.pt"
    note = f"the stack's checkpoints could not resume it ({why}): it restarted from scratch"
    t.notes.append(note)
    warnings.warn(f"stack {', '.join(t.run_ids)}: {note}", RuntimeWarning, stacklevel=2)
    for m in t.members:  # stale: a later fallback to .prev must not find an older attempt's
        for name in _CHECKPOINT_FILES:
            (m.run_dir / name).unlink(missing_ok=True)  # type: ignore[operator]
    return False


def _candidates(run_dir: Path) -> Iterator[dict[str, Any]]:
    """``last.pt`` and ``last.pt.prev`` of a run, those that load and hold a whole epoch."""
    for path in (run_dir / "last.pt", _prev(run_dir / "last.pt")):
        with warnings.catch_warnings():  # a torn or corrupt file is reported in the note
            warnings.simplefilter("ignore", RuntimeWarning)
            ckpt = load_verified(path)
        if isinstance(ckpt, dict) and ckpt.get("partial") is None and all(
                k in ckpt for k in ("epoch", "step", "model", "optimizer", "schedule")):
            yield ckpt


def _check(t: _StackTrainer, epoch: int, step: int, chosen: list[dict[str, Any]]
           ) -> tuple[str | None, list[dict[str, Tensor] | None]]:
    """What keeps ``chosen`` (one checkpoint per run at ``epoch``) from resuming the stack
    (None: nothing), and each run's best weights (from its ``best.pt``)."""
    if step != epoch * t.steps_per_epoch or not 0 < epoch <= t.configs[0].train.epochs:
        return f"checkpoints at epoch {epoch}, step {step} do not fit this stack", []
    keys = _state_keys(t)
    check = getattr(t.sink, "recorded_through", None)
    bests: list[dict[str, Tensor] | None] = []
    for m, ckpt in zip(t.members, chosen):
        assert m.run_dir is not None and m.layout is not None
        model, stacked = ckpt["model"], {**t.params, **t.buffers}
        if any(k not in model or model[k].shape != stacked[s].shape[1:] for k, s, _ in keys):
            return f"run {m.run_id}'s last.pt does not fit its model", []
        if len(ckpt["optimizer"].get("param_groups", [])) != len(m.layout.groups):
            return f"run {m.run_id}'s last.pt does not fit its optimizer", []
        if check is not None and check(m.run_id, epoch, step) is False:
            return (f"the store lacks records that run {m.run_id}'s last.pt covers (epoch "
                    f"{epoch}): they were lost after it was written"), []
        best_step = ckpt.get("best", {}).get("best_step")
        if best_step is None:
            bests.append(None)
            continue
        best = load_verified(m.run_dir / "best.pt")
        # best.pt is written before last.pt: it is the checkpoint's best, or (a kill between
        # the two renames, resumed from last.pt.prev) a later one that the epochs redone
        # reach again.
        if best is None or not (best.get("step") == best_step or best.get("step", -1) > step
                                ) or any(k not in best.get("model", {}) for k, _, _ in keys):
            return f"run {m.run_id}'s best.pt does not match its last.pt", []
        bests.append({s: best["model"][k] for k, s, _ in keys})
    return None, bests


def _apply(t: _StackTrainer, chosen: list[dict[str, Any]],
           bests: list[dict[str, Tensor] | None]) -> None:
    """Put each run's checkpoint into the stacked weights, optimizer state, schedule and
    position; rewind each run's rows after it."""
    first = chosen[0]
    keys = _state_keys(t)
    with torch.no_grad():
        for i, (m, ckpt, best) in enumerate(zip(t.members, chosen, bests)):
            for key, source, is_param in keys:
                target = t.params[source] if is_param else t.buffers[source]
                target[i].copy_(ckpt["model"][key])
            _restore_optimizer(t, i, m, ckpt["optimizer"])
            group = ckpt["optimizer"]["param_groups"][0]
            m.carrier.param_groups[0].update({k: v for k, v in group.items()
                                              if k not in ("params", "name", *_KERNEL_KEYS)})
            m.schedule.load_state_dict(ckpt["schedule"])
            m.best = {k: v for k, v in ckpt.get("best", {}).items()
                      if k.startswith("best_")}
            m.grad_norms = list(ckpt.get("grad_norms", []))
            m.epoch_stats = list(ckpt.get("epoch_stats", []))
            if best is not None:
                m.best_state = {k: v[i].detach().clone() for k, v in
                                {**t.params, **t.buffers}.items()}  # non-persistent buffers
                m.best_state.update({k: v.to(t.device) for k, v in best.items()})
            m.best_unsaved = False
    t.optimizer.step_count = int(first["step"])
    t.epoch, t.step = int(first["epoch"]), int(first["step"])
    t.train_time = float(first["train_time"])
    t.t0 = time.perf_counter() - float(first.get("elapsed", 0.0))  # record times go on
    stats = first.get("epoch_stats", [])
    t.epoch_samples = [float(s.get("throughput/samples_per_s", 0.0)) for s in stats]
    t.memory_stats = [{k: v for k, v in s.items() if k.startswith("memory/")} for s in stats]
    for m in t.members:  # records after the checkpoint's step are redone
        t.sink.rewind(m.run_id, t.step)
    t.checkpointed_at = time.perf_counter()


def _restore_optimizer(t: _StackTrainer, i: int, m: _Member, saved: dict[str, Any]) -> None:
    assert m.layout is not None
    solo = m.layout.index()
    for (name, p), held in zip(t.params.items(), t.optimizer.state):
        entry = saved.get("state", {}).get(solo.get(name, -1))
        for key in _STATE_KEYS:
            if entry and key in entry:
                if key not in held:  # zeros for the others: a model without it ignores it
                    held[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                held[key][i].copy_(entry[key])
