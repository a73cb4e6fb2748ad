"""Checkpoints and resume for the training loop: what a run saves at an epoch's end (or at a
Ctrl-C mid-epoch) and how a process picks it up again, RNG streams included.

:class:`Resumable` is the loop's part that reads and writes ``last.pt`` and ``best.pt``; the
files themselves are written atomically with a checksum by :mod:`trainlab.engine.checkpoint`.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.config.schema import RunConfig
from trainlab.engine import distributed, interrupt
from trainlab.engine.checkpoint import save_atomic
from trainlab.engine.speed import Speed
from trainlab.errors import DiskFull, RunError
from trainlab.hooks import Callback, RunState
from trainlab.records import RecordSink


class Resumable:
    """The checkpoint and resume methods of the training loop (``_Trainer``)."""

    config: RunConfig
    run_id: str
    run_dir: Path | None
    sink: RecordSink
    notes: list[str]
    dist: distributed.DistContext | None
    speed: Speed
    callbacks: list[Callback]
    best: dict[str, Any]
    stop_reason: str | None
    epoch_stats: list[dict[str, float]]
    grad_norms: list[float]
    partial: dict[str, Any] | None
    frozen_keys: set[str]
    checkpointed_at: float
    best_unsaved: dict[str, Any] | None = None  # best weights not yet in best.pt
    best_host: dict[str, Tensor] | None = None  # the host tensors _keep_best copies into
    io_time: float
    elapsed_offset: float
    t0: float

    @property
    def _run_state(self) -> RunState:  # the loop's own (set up before any checkpoint)
        raise NotImplementedError

    def _epoch_checkpoint(self, epoch: int) -> None:
        """The checkpoint at an epoch's end, at least ``train.checkpoint_every_s`` after the one
        before; the last epoch, an early stop and a Ctrl-C always write one.  Epochs of a few
        milliseconds then do not each pay for a serialization and an fsync (which also slow
        the steps after them: up to 1.5 % of a digits MLP's median step); a kill loses at most that
        many seconds, redone on resume from the records the checkpoint saw."""
        tc = self.config.train
        due = (epoch == tc.epochs or self.stop_reason is not None or interrupt.stop_requested()
               or time.perf_counter() - self.checkpointed_at >= tc.checkpoint_every_s)
        if self.dist is not None:  # a checkpoint is collective: every rank, or none
            due = self.dist.sum_float(float(due)) > 0
        if due:
            self._checkpoint(epoch)

    def _checkpoint(self, epoch: int, partial: dict[str, Any] | None = None) -> None:
        """Save what resume needs; ``epoch`` is the last completed epoch, ``partial`` where
        an interrupted epoch stands (its next batch, sums and time so far)."""
        if self.run_dir is None or (not self.config.train.checkpoint and partial is None):
            return
        state = self._run_state
        self._save_best()  # first: the best weights the new last.pt names are on disk
        t = time.perf_counter()
        rng = {
            "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": cuda_rng_state(state.device),
        }
        rng_ranks = None
        if self.dist is not None:
            rng_ranks = self.dist.gather(rng)  # each rank resumes its own random stream
            if not self.dist.is_main:
                return
        payload = {
            "epoch": epoch, "step": state.step, "train_time": state.train_time,
            "partial": partial,
            "elapsed": self.elapsed_offset + (time.perf_counter() - self.t0),
            "model": self._model_state(), "optimizer": state.optimizer.state_dict(),
            "schedule": state.schedule.state_dict(), "best": self.best,
            "scaler": self.speed.scaler.state_dict() if self.speed.scaler else None,
            "stop_reason": self.stop_reason, "epoch_stats": self.epoch_stats,
            "grad_norms": self.grad_norms,
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
            "rng": rng,
        }
        if rng_ranks is not None:
            payload["rng_ranks"] = rng_ranks
        self._save(payload, "last.pt", keep_previous=True)
        self.checkpointed_at = time.perf_counter()
        self.io_time += self.checkpointed_at - t

    def _keep_best(self) -> None:
        """Keep the model's weights as the best so far: a host copy (a device-to-host copy
        on an accelerator; no device memory), written to ``best.pt`` by :meth:`_save_best`
        with the next ``last.pt``, before the test, or at the run's end.  Saving and fsyncing
        at every improvement (most epochs of a short run) cost 1-2 % of a digits MLP's epoch
        and slowed the steps after it; a kill between loses nothing a resume needs, since
        ``last.pt`` is written after the best weights it names."""
        state = self._run_state
        self.best_unsaved = {"model": self._best_copy(self._model_state()),
                             "epoch": state.epoch, "step": state.step}

    def _best_copy(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """``weights`` copied to the host, into the tensors of the last copy where they
        match (keys in order, shapes, strides, dtypes; CPU weights): one ``_foreach_copy_``
        instead of a new tensor each (31 vs 44 us for the digits MLP's four), the same values.
        Reused only because nothing else holds them: ``best.pt`` is written from them
        synchronously and ``best_unsaved`` is the one reference (a newer best replaces its
        values, as it replaced the dict)."""
        kept = self.best_host
        if kept is not None and len(kept) == len(weights):
            targets, sources = list(kept.values()), list(weights.values())
            for name, target, (key, source) in zip(kept, targets, weights.items()):
                if name != key or source.device.type != "cpu" or source.requires_grad \
                        or target.shape != source.shape or target.dtype != source.dtype \
                        or target.stride() != source.stride():
                    break  # (an accelerator's weights: the blocking copies of .to("cpu"))
            else:
                torch._foreach_copy_(targets, sources)
                return kept
        kept = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        self.best_host = kept
        return kept

    def _save_best(self, quiet: bool = False) -> None:
        """Write the kept best weights to ``best.pt`` if they are newer than the file
        (``quiet``: a failure to write is not raised, as at the end of a failed run)."""
        best = getattr(self, "best_unsaved", None)
        if best is None or self.run_dir is None:
            return
        self.best_unsaved = None
        t = time.perf_counter()
        try:
            self._save(best, "best.pt")
        except RunError:
            if not quiet:
                raise
        self.io_time += time.perf_counter() - t

    def _save(self, payload: dict[str, Any], name: str, keep_previous: bool = False) -> None:
        assert self.run_dir is not None
        try:
            save_atomic(payload, self.run_dir / name, keep_previous=keep_previous)
        except OSError as exc:  # a full disk, a vanished mount: say which file and why
            for tmp in (f"{name}.tmp", f"{name}.sha256.tmp"):  # half-written: only hold space
                with contextlib.suppress(OSError):
                    (self.run_dir / tmp).unlink(missing_ok=True)
            hint = _full_disk_hint(self.run_dir, exc)
            kind = DiskFull if hint else RunError  # a full disk stops the sweep (DiskFull)
            raise kind(f"could not write the checkpoint {self.run_dir / name}: "
                       f"{exc.strerror or exc}{hint}") from exc

    def _checked(self, ckpt: dict[str, Any] | None) -> dict[str, Any] | None:
        """``ckpt``, or None when the store lacks records the checkpoint saw written.

        A checkpoint is written after the records before it are committed, so a store that
        lacks some (its ``-wal`` file deleted after a kill, a store copied without it) has lost
        them: resuming would store the run with those epochs missing.  The run restarts from
        scratch instead (its rows and its checkpoints go), and says so on the console and in
        its summary.  A sink that cannot tell (no ``recorded_through``, or it answers None)
        is trusted.  Under DDP the ranks decide together: every rank restores, or none."""
        if ckpt is None:
            return None
        check = getattr(self.sink, "recorded_through", None)
        epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("step", 0))
        lacking = check is not None and check(self.run_id, epoch, step) is False
        if self.dist is not None:
            lacking = self.dist.sum_float(float(lacking)) > 0
        if not lacking:
            return ckpt
        note = (f"the store lacks records that the checkpoint last.pt covers (epoch {epoch}, "
                f"step {step}): they were lost after it was written (a deleted trainlab.db-wal "
                "file?), so the run restarted from scratch rather than resume with epochs "
                "missing")
        self.notes.append(note)
        warnings.warn(f"run {self.run_id}: {note}", RuntimeWarning, stacklevel=2)
        if self.run_dir is not None and (self.dist is None or self.dist.is_main):
            for name in ("last.pt", "last.pt.sha256", "last.pt.prev", "last.pt.prev.sha256"):
                (self.run_dir / name).unlink(missing_ok=True)
        return None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        state = self._run_state
        self._load_model_state(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.schedule.load_state_dict(ckpt["schedule"])
        if self.speed.scaler is not None and ckpt.get("scaler"):
            self.speed.scaler.load_state_dict(ckpt["scaler"])
        state.epoch, state.step = ckpt["epoch"], ckpt["step"]
        state.train_time = ckpt["train_time"]
        self.elapsed_offset = ckpt["elapsed"]
        self.best = ckpt["best"]
        self.stop_reason = ckpt.get("stop_reason")
        self.epoch_stats = ckpt.get("epoch_stats", [])
        self.partial = ckpt.get("partial")
        self.grad_norms = list(ckpt.get("grad_norms", []))
        rng = ckpt["rng"]
        ranks = ckpt.get("rng_ranks")
        if self.dist is not None and ranks is not None and len(ranks) == self.dist.world:
            rng = ranks[self.dist.rank]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        set_cuda_rng_state(rng.get("cuda"), state.device)
        saved = ckpt.get("callbacks", {})
        for cb in self.callbacks:
            if type(cb).__name__ in saved:
                cb.load_state_dict(saved[type(cb).__name__])

    def _model_state(self) -> dict[str, Tensor]:
        """The model's state without parameters no strategy ever trains: those equal the
        deterministic build (pretrained weights, seeded init), so checkpoints of adapter or
        LoRA runs hold the trained part only."""
        full = self._run_state.model.state_dict()
        if not self.frozen_keys:
            return full
        return {k: v for k, v in full.items() if k not in self.frozen_keys}

    def _load_model_state(self, saved: dict[str, Tensor]) -> None:
        model = self._run_state.model
        if not self.frozen_keys:
            model.load_state_dict(saved)
            return
        result = model.load_state_dict(saved, strict=False)
        missing = set(result.missing_keys) - self.frozen_keys
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not fit the model: missing {sorted(missing)[:5]}"
                               f", unexpected {sorted(result.unexpected_keys)[:5]}")


def _full_disk_hint(folder: Path, exc: OSError) -> str:
    """For a full disk, the free space and what to do (the run's earlier checkpoint stands)."""
    import errno
    import shutil

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free on its file system"
    except OSError:
        free = "free space unknown"
    return (f" ({free}); the temporary files were removed and the previous checkpoint stands. "
            "Free some space (or move the store and pass --store), then rerun the same "
            "command to resume")


def frozen_keys(model: nn.Module, trained: list[Tensor]) -> set[str]:
    """State-dict keys of parameters that are in no optimizer group (never trained)."""
    ids = {id(p) for p in trained}
    return {name for name, p in model.named_parameters(remove_duplicate=False)
            if id(p) not in ids}


def cuda_rng_state(device: torch.device) -> Tensor | None:
    """The CUDA RNG state of the run's own device (None off CUDA).  Not every visible GPU's:
    a process that resumes the run may see fewer (a ``--jobs N`` worker sees one)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_rng_state(device)


def set_cuda_rng_state(saved: Tensor | list[Tensor] | None, device: torch.device) -> None:
    """Restore what :func:`cuda_rng_state` saved on the run's device.  Checkpoints written
    before hold a list (every visible GPU's state): the entry of the device's index when the
    list has one, else the first (a run trains on its process's first visible device)."""
    if saved is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    if isinstance(saved, (list, tuple)):
        if not saved:
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = saved[index] if index < len(saved) else saved[0]
    torch.cuda.set_rng_state(saved, device)
