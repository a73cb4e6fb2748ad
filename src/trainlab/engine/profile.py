"""``train.profile``: where a step's time goes, from torch.profiler over a window of steps.

Free when off.  The loop's step is not touched: no range, no check, no call per step.  An
epoch that holds the window (``train.profile.epoch``) hands its last ``warmup + steps``
batches to :func:`run_window` instead of its loop (the loop's iterator stops short of them,
the window takes the rest of the same iterator), which runs them as the loop would: the same
calls in the same order on the same batches, so the weights, the loss curve and every RNG
draw equal an unprofiled run's (the parity test).  Each phase runs inside a named range
(``torch.profiler.record_function``): ``data_wait`` (the next batch), ``forward`` (forward and
loss), ``backward``, ``optimizer`` (zero_grad, clipping or the logged gradient norm, the step,
the grad scaler and a per-step schedule); ``other`` is the rest of the step (the loop's
bookkeeping, a log point's sync).  On CUDA each range ends with a device sync, so a range's
host time is its phase's time rather than its launch time; the window is left out of
``time/train`` and throughput anyway, so the syncs cost the run's numbers nothing.

The profiler warms up for ``warmup`` steps (its own start-up stays out of the recording), then
records ``steps``.  Stored: ``summary.profile`` (seconds and share of each phase, the top
operators by self time, CPU and CUDA where present, the trace's path in the run's directory)
and the records ``profile/share_<phase>`` and ``profile/step_s`` at the window's last step.
The trace, ``<run_dir>/profile/trace.pt.trace.json`` (gzipped above 20 MB), is Chrome trace
JSON: Perfetto (ui.perfetto.dev) and chrome://tracing open it, and so does TensorBoard's
profiler plugin (``torch-tb-profiler``; ``tensorboard --logdir <store>/runs`` lists each
profiled run's ``profile`` folder as a run).  On CUDA with ``train.profile.memory`` the
allocator's history over the window is ``profile/memory.pickle`` (drop it on
pytorch.org/memory_viz).
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainlab.config.schema import ProfileSpec
from trainlab.engine.measure import clip_grad_norm, grad_norm
from trainlab.hooks import Callback

if TYPE_CHECKING:
    from trainlab.engine.loop import _Trainer

PHASES = ("data_wait", "forward", "backward", "optimizer", "other")
TRACE_NAME = "trace.pt.trace.json"  # the name TensorBoard's profiler plugin looks for
MEMORY_NAME = "memory.pickle"
GZIP_ABOVE = 20 * 2**20  # bytes: larger traces are stored gzipped (Perfetto opens both)
TOP_OPS = 15
_EVAL = "eval"  # mid-window validation (train.eval_every): timed apart, not a phase


@dataclass(frozen=True)
class Window:
    """The profiled steps of an epoch: batches ``start`` to ``start + size`` (0-based)."""

    spec: ProfileSpec
    start: int

    @property
    def size(self) -> int:
        return self.spec.warmup + self.spec.steps


@dataclass(frozen=True)
class WindowResult:
    batches: int  # batches the window trained (fewer than its size if training stopped)
    evaluated_at: int | None  # the step of a validation inside the window (eval_every)


def window_for(spec: ProfileSpec | None, epoch: int, batches: int, first_batch: int,
               notes: list[str]) -> Window | None:
    """The window in this epoch of ``batches`` batches, or None (no profile, another epoch).

    The window is the epoch's last batches, after at least one other (plan.check_profile
    refuses a window that does not fit; a direct ``engine.train`` call gets a note).  An epoch
    resumed past the window's start (not possible from a Ctrl-C, which the loop handles
    before the window) is not profiled."""
    if spec is None or spec.epoch != epoch:
        return None
    start = batches - spec.warmup - spec.steps
    if start < 1:
        notes.append(f"train.profile: the window (warmup {spec.warmup} + steps {spec.steps}) "
                     f"does not fit in an epoch of {batches} steps; nothing was profiled")
        return None
    return None if first_batch > start else Window(spec, start)


def run_window(trainer: _Trainer, window: Window, steps: Iterator[tuple[Tensor, Tensor, Tensor]],
               loss_fn: Callable[[Tensor, Tensor], Tensor]) -> WindowResult:
    """Train the window's batches from ``steps`` under the profiler, as the loop would.

    Every second of it (the profiler's start, stop and export included) goes to
    ``trainer.paused``, less the I/O ``trainer.io_time`` counts already, and its steps to
    ``trainer.untimed_steps``: ``time/train``, throughput and ``time/step`` are those of the
    unprofiled steps.  Validation inside it (``train.eval_every``) is paused as in the loop.
    """
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    state, speed, tc = trainer._run_state, trainer.speed, trainer.config.train
    spec = window.spec
    clock, device = trainer.clock, state.device
    cuda = device.type == "cuda"
    model, optimizer, interval, task = state.model, state.optimizer, trainer._interval, trainer.task
    forward, scaler, amp = speed.forward, speed.scaler, speed.amp_dtype is not None
    params, clip, log_every, eval_every = trainer.params, tc.clip_grad_norm, tc.log_every, \
        tc.eval_every
    step_schedule = state.schedule.after_step if state.schedule.per_step else None
    step_callbacks = [c for c in trainer.callbacks
                      if type(c).on_step_end is not Callback.on_step_end]
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if cuda else _nothing
    main = trainer.dist is None or trainer.dist.is_main
    folder = trainer.run_dir / "profile" if trainer.run_dir is not None and main else None
    memory = cuda and spec.memory and folder is not None

    t_last, io_last = clock.now(), trainer.io_time

    def pause() -> None:  # the window's time since the last call: not training time
        nonlocal t_last, io_last
        now, io = clock.now(), trainer.io_time
        trainer.paused += (now - t_last) - (io - io_last)
        t_last, io_last = now, io

    if memory:
        try:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
        except (RuntimeError, AttributeError) as exc:  # a build without the allocator's history
            memory = False
            trainer.notes.append(f"train.profile.memory: no memory history ({exc})")
    with warnings.catch_warnings():  # warmup 0 is the user's choice, not a mistake to warn of
        warnings.simplefilter("ignore")
        plan = schedule(wait=0, warmup=spec.warmup, active=spec.steps, repeat=1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities, schedule=plan)
    done, evaluated_at = 0, None
    result: dict[str, Any] | None = None
    try:
        with prof:
            for _ in range(window.size):
                with record_function("data_wait"):
                    try:
                        _, x, y = next(steps)
                    except StopIteration:
                        break
                    sync()
                is_log = (state.step + 1) % log_every == 0
                with record_function("optimizer"):
                    optimizer.zero_grad(set_to_none=True)
                with record_function("forward"):
                    if amp:
                        with speed.autocast():
                            out = forward(x)
                            loss = loss_fn(out, y)
                    else:
                        out = forward(x)
                        loss = loss_fn(out, y)
                    sync()
                norm = None
                with record_function("backward"):
                    if scaler is None:
                        loss.backward()
                    else:
                        scaler.scale(loss).backward()
                    sync()
                with record_function("optimizer"):
                    if scaler is None:
                        if clip is not None:
                            norm = clip_grad_norm(params, clip, state.device)
                        elif is_log:
                            norm = grad_norm(params, state.device)
                        optimizer.step()
                    else:
                        if clip is not None or is_log:
                            scaler.unscale_(optimizer)
                            norm = (clip_grad_norm(params, clip, state.device)
                                    if clip is not None else grad_norm(params, state.device))
                        scaler.step(optimizer)
                        scaler.update()
                    if step_schedule is not None:
                        step_schedule()
                    sync()
                interval.add(loss, out, y, task.weight(y))
                state.step += 1
                done += 1
                for cb in step_callbacks:
                    cb.on_step_end(state)
                trainer.untimed_steps += 1
                pause()  # before a log point reads the interval's time
                if is_log:
                    trainer._log_interval(norm)
                if eval_every is not None and state.step % eval_every == 0:
                    with record_function(_EVAL):  # paused by the next pause(), less its I/O
                        trainer._validate()
                        evaluated_at = state.step
                        model.train()
                    if trainer.stop_reason is not None:
                        break
                prof.step()
        result = _summarise(prof, spec, cuda)
        if result is not None:
            result.update(epoch=state.epoch, last_step=state.step, device=str(device))
            # The files are extras: a full disk loses them (with a note), not the run.
            try:
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    result["trace"] = _export_trace(prof, folder)
                if memory and folder is not None:
                    torch.cuda.memory._dump_snapshot(str(folder / MEMORY_NAME))
                    result["memory"] = f"profile/{MEMORY_NAME}"
            except (OSError, RuntimeError) as exc:
                trainer.notes.append(f"train.profile: could not write its files: {exc}")
    finally:
        if memory:
            torch.cuda.memory._record_memory_history(enabled=None)
    if result is None:
        trainer.notes.append("train.profile: training stopped before the profiled steps "
                             "were recorded")
    else:
        trainer.best["profile"] = result  # checkpointed with the run's summary values
        values = {f"profile/share_{k}": v for k, v in result["shares"].items()}
        values["profile/step_s"] = result["step_s"]
        trainer._record(state.step, values)
    pause()
    return WindowResult(done, evaluated_at)


def _nothing() -> None:
    return None


def _summarise(prof: Any, spec: ProfileSpec, cuda: bool) -> dict[str, Any] | None:
    """Phase seconds and shares, and the top operators, from the recorded steps' events."""
    from torch.autograd import DeviceType

    spans = dict.fromkeys(PHASES, 0.0)
    total = excluded = 0.0
    recorded = 0
    try:
        events = prof.events()
    except (AssertionError, RuntimeError):  # nothing was recorded (stopped in warm-up)
        return None
    for event in events or []:
        if event.device_type != DeviceType.CPU:
            continue
        seconds = event.time_range.elapsed_us() / 1e6
        if event.name in spans:
            spans[event.name] += seconds
        elif event.name.startswith("ProfilerStep"):
            total += seconds
            recorded += 1
        elif event.name == _EVAL:
            excluded += seconds
    if not recorded:
        return None
    total = max(total - excluded, 1e-12)
    spans["other"] = max(total - sum(spans[p] for p in PHASES[:-1]), 0.0)
    whole = sum(spans.values())
    shares = {p: spans[p] / whole for p in PHASES}
    ops = [e for e in prof.key_averages()
           if not e.is_user_annotation and e.device_type == DeviceType.CPU]
    ops.sort(key=lambda e: e.self_cpu_time_total + e.self_device_time_total, reverse=True)
    top = []
    for e in ops[:TOP_OPS]:
        op: dict[str, Any] = {"name": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6,
                              "cpu_s": e.cpu_time_total / 1e6, "calls": int(e.count)}
        if cuda:
            op["self_cuda_s"] = e.self_device_time_total / 1e6
        top.append(op)
    return {"steps": recorded, "warmup": spec.warmup, "seconds": whole,
            "step_s": whole / recorded, "phases": spans, "shares": shares, "top_ops": top}


def _export_trace(prof: Any, folder: Any) -> str:
    """Write the Chrome trace; gzip it when large.  Returns its path in the run's directory."""
    path = folder / TRACE_NAME
    prof.export_chrome_trace(str(path))
    if path.stat().st_size <= GZIP_ABOVE:
        return f"profile/{TRACE_NAME}"
    packed = folder / f"{TRACE_NAME}.gz"
    with open(path, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with contextlib.suppress(OSError):
        path.unlink()
    return f"profile/{TRACE_NAME}.gz"


__all__ = ["PHASES", "Window", "WindowResult", "run_window", "window_for"]
