"""Measurements that do not disturb what they measure.

Rules followed here: synchronise an accelerator before reading a clock; read memory peaks, not
current values; nothing in this module is called per training step.

The run's own memory (``memory/tensor_peak_bytes``): the peak bytes of the tensors the run
itself holds (weights, buffers, gradients, optimizer state, activations, the data it keeps in
memory and its batches), without the process around them: on CPU every run's peak resident set
size reads a few hundred MiB of Python and torch, and the 1-5 MiB that separate the models of
a width or batch-size study vanish in it.

- CUDA: the caching allocator's peak allocated bytes since the run started
  (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``): every tensor the run
  allocated on the GPU, and nothing else (not the CUDA context, not the allocator's cached
  blocks, which ``memory/reserved_bytes`` adds).  The same number as ``memory/peak_bytes``.
- CPU (and other devices without an allocator peak): measured over the first training step of
  the process, the warm-up step that is timed apart and kept out of training time (tracking
  it adds tens of milliseconds there on the small models here; later steps carry no
  instrumentation).
  :class:`TensorTracker`, a ``TorchDispatchMode``, starts from the storages the run holds
  when the step begins (:func:`held_tensors`: parameters, buffers, gradients, optimizer state,
  the in-memory data splits, the epoch's order and the batch as gathered), adds the storage of
  every tensor an operator returns that is not one of them, and takes a storage off when it is
  freed (a weak reference's callback, as torch's own ``MemTracker`` does).  The peak is the
  largest sum after an operator: forward activations, what autograd keeps for the backward
  pass, gradients, optimizer state and temporaries that live from one operator to the next.
  A first step is not a steady one, so two hooks (on the model's forward and the optimizer's
  step, removed after it) turn it into the peak of the steps after it: those hold the
  optimizer state from the start (it is allocated lazily, after backward, in the first), and
  run their forward pass while the previous step's output and loss are still held
  (:attr:`TensorTracker.steady_peak`).  Checked against tracking the second and third steps
  of an LSTM and a GPT on pydoc-lm and MLPs on digits (batch 8 and 512, Adam and SGD): the
  same bytes.
  Not counted: buffers an operator allocates and frees inside itself (library workspaces,
  oneDNN's and MKL's scratch memory), tensors the run holds that none of those objects reaches
  (a model's plain tensor attributes, DDP's gradient buckets), the few bytes per step of
  outputs the log interval keeps for the running accuracy, allocator overhead, and
  evaluation passes (on a GPU the allocator peak includes them; a training step holds more
  than an evaluation batch unless the evaluation batch is many times the training batch).
  A run that trains more parameters later (gradual unfreezing) reports the first step's peak.
  With ``train.compile`` on CPU nothing is recorded: under a dispatch mode torch.compile runs
  the model eagerly, so tracking the first step would move the compilation into training time,
  and the compiled kernels' buffers are invisible to it anyway.
  The mode and the hooks only observe (each operator runs as called): no RNG is drawn and the
  values, hence the training, are the same as without them.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainlab.devices import release_cached, synchronize
from trainlab.engine import allocator
from trainlab.engine.allocator import rss_peak_bytes

_CLEAR_REFS = Path("/proc/self/clear_refs")


class Clock:
    """Wall-clock seconds with an accelerator sync before each read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()


class PeakMemory:
    """Peak memory of the current run.

    CUDA: the allocator's peak allocated and reserved bytes (reset at run start).
    CPU: the process's peak resident set size.  Linux lets a process reset its high-water mark
    (writing 5 to /proc/self/clear_refs), so each run of a sweep gets its own peak; elsewhere
    it is the process's lifetime peak (``getrusage``), which can include earlier runs.
    Both: the peak bytes of the run's own tensors (``memory/tensor_peak_bytes``; see the module
    docstring), on CPU from :meth:`track_step` / :meth:`end_step` around the warm-up step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.per_run = True
        self.tensor_peak: int | None = None  # measured by the tracker (not on CUDA)
        self._tracker: TensorTracker | None = None

    def reset(self) -> None:
        # Freed heap a larger run (or a probe) left resident would count in this run's peak.
        allocator.trim()
        if self.device.type == "cuda":
            # The reserved peak restarts at what is reserved now: drop the cache (earlier runs',
            # the peak measurement's buffers) first, so it is this run's.
            release_cached(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.per_run = False

    def track_step(self, held: Iterable[Any], *, optimizer: Any = None, model: Any = None,
                   compiled: bool = False) -> None:
        """Start tracking the run's tensors for one step (CPU; nothing on CUDA, whose allocator
        counts them, or with ``compiled``): ``held``, what the run holds as the step starts;
        ``optimizer`` and ``model``, what the step steps and calls (see
        :meth:`TensorTracker.watch`).  The step's variables must still be alive at
        :meth:`end_step` (its output and loss count as held by the next step)."""
        if self.device.type == "cuda" or compiled or self._tracker is not None:
            return
        tracker = TensorTracker(self.device, held)
        tracker.watch(optimizer, model)
        tracker.__enter__()
        self._tracker = tracker

    def end_step(self) -> None:
        """Stop tracking (idempotent: also called when a run ends with the step unfinished)."""
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        tracker.__exit__(None, None, None)
        self.tensor_peak = max(self.tensor_peak or 0, tracker.steady_peak)

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {"memory/rss_peak_bytes": float(rss_peak_bytes())}
        if self.device.type == "cuda":
            out["memory/peak_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
            out["memory/reserved_bytes"] = float(torch.cuda.max_memory_reserved(self.device))
            out[TENSOR_PEAK_KEY] = out["memory/peak_bytes"]
        else:
            out["memory/peak_bytes"] = out["memory/rss_peak_bytes"]
            if self.tensor_peak is not None:
                out[TENSOR_PEAK_KEY] = float(self.tensor_peak)
        return out


TENSOR_PEAK_KEY = "memory/tensor_peak_bytes"


class TensorTracker(TorchDispatchMode):
    """Live bytes of the storages on one device that the run holds or that operators return,
    and their peak (see the module docstring)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Leave ``__torch_dispatch__`` unwrapped: torch wraps a mode's dispatch in
        ``torch._disable_dynamo``, which imports ``torch._dynamo`` (2 s here) on the first
        operator, only to mark the function as not to be compiled.  Nothing is compiled while
        this mode is on (it is never used with ``train.compile``)."""
        return False

    def __init__(self, device: torch.device, held: Iterable[Any] = ()) -> None:
        super().__init__()
        self.device_type = device.type
        self._refs: dict[int, weakref.ref[Any]] = {}  # id(storage) -> its weak reference
        self._sizes: dict[int, int] = {}  # id(storage) -> its bytes, while it lives
        self.live = 0
        for t in held:
            self._track(t)
        self._held = set(self._refs)
        self.start = self.peak = self.live
        # What makes a first step's peak a steady step's (see watch()).
        self.after_forward: int | None = None  # the peak when the model's forward returned
        self.before_step: int | None = None  # the peak when the optimizer's step began
        self.state_grown = 0  # bytes of optimizer state the step allocated
        self.carried = 0  # bytes the step created that the next one holds through its forward
        self._optimizer: Any = None
        self._model: Any = None
        self._hooks: list[Any] = []

    def watch(self, optimizer: Any = None, model: Any = None) -> None:
        """Make the first step's peak a steady step's (:attr:`steady_peak`).

        A first step is not quite a steady one: the optimizer allocates its state (Adam's two
        moments) lazily, after forward and backward, where every later step holds it
        throughout; and a later step's forward runs while the previous step's output and loss
        (``out``, ``loss`` of the training loop) are still held.  So this notes the peak as
        ``model``'s forward returns and as ``optimizer``'s step begins (two hooks, removed when
        the step ends), then what the step left: the state it allocated, and what else it
        created that still lives (the output and loss; its gradients, which the next step's
        ``zero_grad`` frees, are not counted)."""
        if optimizer is not None and hasattr(optimizer, "register_step_pre_hook") \
                and hasattr(optimizer, "state"):  # a torch optimizer
            self._optimizer = optimizer
            self.state_grown = -self._state_bytes()
            self._hooks.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
        if model is not None:
            self._model = model
            self._hooks.append(model.register_forward_hook(self._after_model_forward))

    def _state_tensors(self) -> Iterator[Any]:
        for state in self._optimizer.state.values():
            yield from _leaves(list(state.values()))

    def _state_bytes(self) -> int:
        return storage_bytes(self._state_tensors(), torch.device(self.device_type))

    def _after_model_forward(self, *_: Any) -> None:
        if self.after_forward is None:
            self.after_forward = self.peak

    def _before_optimizer_step(self, *_: Any) -> None:
        if self.before_step is None:
            self.before_step = self.peak

    @property
    def steady_peak(self) -> int:
        """The peak of a step like this one in a run that already took one: the tracked peak,
        the peak before the optimizer's step plus the state it allocated, and the peak at the
        end of the forward pass plus that state and what the previous step leaves held."""
        peak = self.peak
        if self.before_step is not None:
            peak = max(peak, self.before_step + max(self.state_grown, 0))
        if self.after_forward is not None:
            peak = max(peak, self.after_forward + max(self.state_grown, 0) + self.carried)
        return peak

    def _track(self, t: Any) -> None:
        storage = _storage(t, self.device_type)
        if storage is None:
            return
        key = id(storage)  # torch keeps one Python object per storage while it lives
        size = storage.nbytes()
        if key in self._refs or size == 0:
            return
        self._refs[key] = weakref.ref(storage, functools.partial(self._freed, key, size))
        self._sizes[key] = size
        self.live += size

    def _freed(self, key: int, size: int, _ref: object) -> None:
        if self._refs.pop(key, None) is not None:
            self._sizes.pop(key, None)
            self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in _leaves(out):
            self._track(t)
        if self.live > self.peak:
            self.peak = self.live
        return out

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._optimizer is not None:
            self.state_grown += self._state_bytes()
        # What the step created and still lives, but its gradients and the optimizer's state.
        left = set(self._refs) - self._held
        device_type = self.device_type
        params = list(self._model.parameters()) if self._model is not None else []
        if self._optimizer is not None:
            params += [p for g in self._optimizer.param_groups for p in g["params"]]
        for t in [*(p.grad for p in params), *(self._state_tensors() if self._optimizer
                                                 is not None else ())]:
            storage = _storage(t, device_type)
            if storage is not None:
                left.discard(id(storage))
        self.carried = sum(self._sizes[k] for k in left if k in self._sizes)
        self._refs.clear()  # dropped references call back no more
        self._sizes.clear()


def _storage(t: Any, device_type: str) -> torch.UntypedStorage | None:
    if not isinstance(t, torch.Tensor) or t.device.type != device_type:
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return None


def storage_bytes(tensors: Iterable[Any], device: torch.device) -> int:
    """Bytes of the distinct storages on ``device`` behind ``tensors`` (a view counts its
    storage once)."""
    storages = {id(s): s for s in (_storage(t, device.type) for t in tensors) if s is not None}
    return sum(s.nbytes() for s in storages.values())


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def held_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 splits: Iterable[Any] = (), *others: Any) -> Iterator[Any]:
    """The tensors a run holds between steps: parameters, buffers and gradients, optimizer
    state, the tensors of in-memory data splits (anything with ``inputs`` and ``targets``) and
    ``others`` (the batch, the epoch's order; tuples and lists are walked)."""
    groups = getattr(optimizer, "param_groups", [])  # (an optimizer of the user's own: duck)
    params = [*model.parameters(), *(p for g in groups for p in g["params"])]
    yield from params
    yield from model.buffers()
    yield from (p.grad for p in params if p.grad is not None)
    for state in getattr(optimizer, "state", {}).values():
        for value in state.values():
            yield from _leaves(value)
    for split in splits:
        for name in ("inputs", "targets"):
            yield getattr(split, name, None)
    for other in others:
        yield from _leaves(other)


def grad_norm(params: Sequence[torch.Tensor], device: torch.device | str | None = None
              ) -> torch.Tensor:
    """The global L2 norm of the gradients, left on the device (no host sync).

    No gradient at all (every parameter frozen at this step) is a zero on ``device`` (the
    run's; default: the parameters', else the CPU), so it joins the step's other values on
    the device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device if device is not None
                           else params[0].device if params else None)
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: the public API
        # error_if_nonfinite=False: no check of the value, hence no host sync.
        return torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False)
    # torch 2.4 and 2.5: what get_total_norm does for tensors of one device and dtype.
    norms = torch._foreach_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``, whose zero for no gradient at all is on the CPU
    whatever the device: that zero is on ``device`` here, as :func:`grad_norm`'s."""
    if not any(p.grad is not None for p in params):
        return grad_norm(params, device)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def git_commit(cwd: str | None = None) -> str | None:
    """The commit of the git checkout the user runs in (``+dirty`` when modified)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a run ran: versions, device, host, git commit."""
    import numpy

    from trainlab import __version__

    env: dict[str, Any] = {
        "trainlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        # Which physical GPUs this process was given (a --jobs worker gets its own share).
        env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env
