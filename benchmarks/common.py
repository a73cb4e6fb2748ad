"""What the benchmarks share: workloads, contenders, and a steady allocator.

Every contender trains the same model on the same data with the same seed; each is timed over
the training steps of one epoch (validation and checkpoints excluded for all), after the same
warm-up.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def steady_allocator(module: str) -> None:
    """Re-execute ``python -m module`` with glibc's malloc thresholds set high.

    The defaults cause hundreds to thousands of page faults per step on these small models and
    2x timing outliers; every contender then runs under the same, steadier settings.
    """
    if any(os.environ.get(k) != v for k, v in _MALLOC.items()):
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]],
                  {**os.environ, **_MALLOC})


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainlab.components import build_model, build_optimizer, load_dataset  # noqa: E402
from trainlab.config.schema import resolve_component, resolve_run  # noqa: E402
from trainlab.devices import resolve_device, synchronize  # noqa: E402
from trainlab.engine import (  # noqa: E402
    Callback,
    RunState,
    StopTraining,
    epoch_permutation,
    train,
)
from trainlab.engine.speed import gathered  # noqa: E402
from trainlab.engine.tasks import IGNORE_INDEX, TASKS  # noqa: E402
from trainlab.store import open_store  # noqa: E402

FMNIST = {"name": "synthetic", "n_samples": 12000, "shape": [1, 28, 28], "n_classes": 10}
WORKLOADS: dict[str, dict[str, Any]] = {
    "mlp-fmnist-b10": {
        "data": {**FMNIST, "n_samples": 3000, "batch_size": 10},
        "model": {"name": "mlp", "hidden_dim": 256},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    "mlp-fmnist-b32": {
        "data": {**FMNIST, "n_samples": 6000, "batch_size": 32},
        "model": {"name": "mlp", "hidden_dim": 256},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    "mlp-fmnist-b256": {
        "data": {**FMNIST, "n_samples": 24000, "batch_size": 256},
        "model": {"name": "mlp", "hidden_dim": 256},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    "digits-mlp": {
        "data": {"name": "digits", "batch_size": 32},
        "model": {"name": "mlp", "hidden_dim": 128},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    "lstm-lm": {
        "data": {"name": "pydoc-lm", "seq_len": 32, "batch_size": 32, "limit": 1500},
        "model": {"name": "lstm", "embed_dim": 64, "hidden_dim": 128, "dropout": 0.1},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    "gpt-lm": {
        "data": {"name": "pydoc-lm", "seq_len": 32, "batch_size": 32, "limit": 1500},
        "model": {"name": "gpt", "embed_dim": 64, "hidden_dim": 128, "heads": 4},
        "optimizer": {"name": "adam", "lr": 1e-3},
    },
    # Full fine-tuning of the pretrained all-MiniLM-L6-v2 (22.7 M parameters, offline from
    # PyPI; needs trainlab[hf]) on VADER's sentiment lexicon: 12 steps of batch 32.
    "minilm-finetune": {
        "data": {"name": "vader-sentiment", "max_length": 16, "batch_size": 32,
                 "limit": 384, "eval_limit": 64},
        "model": {"name": "minilm"},
        "optimizer": {"name": "adamw", "lr": 2e-5},
    },
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->\n", f"<!-- {name}:end -->\n"


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` into ``path`` (BENCHMARKS.md) between ``name``'s markers: replaced where
    they are, appended where not (the file made if missing)."""
    start, end = _markers(name)
    old = path.read_text() if path.exists() else ""
    block = start + text.rstrip("\n") + "\n" + end
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + block
    path.write_text(new)


def kept_sections(path: Path) -> str:
    """Every marked section of ``path`` (written by :func:`write_section`), for a benchmark
    that rewrites the rest of the file to keep the others' results."""
    if not path.exists():
        return ""
    text, out = path.read_text(), []
    while "<!-- " in text:
        _, text = text.split("<!-- ", 1)
        name, _, text = text.partition(":start -->\n")
        if not _ or f"<!-- {name}:end -->\n" not in text:
            break
        body, text = text.split(f"<!-- {name}:end -->\n", 1)
        out.append(f"<!-- {name}:start -->\n{body}<!-- {name}:end -->\n")
    return "\n".join(out)


def with_options(raw: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with dotted ``options`` (``train.precision: bf16``) applied."""
    out = copy.deepcopy(raw)
    for key, value in options.items():
        section, field = key.split(".", 1)
        out.setdefault(section, {})[field] = value
    return out


def bench_device() -> torch.device:
    """Where every contender trains: where the engine's ``train.device: auto`` does (a GPU
    when there is one), so that no comparison puts one contender on the GPU and another on
    the CPU."""
    return resolve_device("auto")


class StepTimer(Callback):
    """Wall time from the start of an epoch to the end of its last step, and of each step
    (``marks``: the epoch's start, then the end of each step).

    On a GPU the clock reads at the epoch's start and last step wait for the queued kernels
    (the epoch time is the GPU's); the marks between are host-side times, which do not.
    """

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []
        self.marks: list[float] = []

    def on_epoch_start(self, state: RunState) -> None:
        synchronize(state.device)
        self.start, self.first_step = time.perf_counter(), state.step
        self.marks = [self.start]

    def on_step_end(self, state: RunState) -> None:
        if state.step % state.steps_per_epoch == 0:  # the epoch's last step
            synchronize(state.device)
        self.end = time.perf_counter()
        self.marks.append(self.end)
        self.steps = state.step - self.first_step

    def on_epoch_end(self, state: RunState, values: Any) -> None:
        self.epochs.append((self.end - self.start, self.steps))


def _durations(marks: list[float], into: list[float] | None) -> None:
    if into is not None:
        into.extend(b - a for a, b in itertools.pairwise(marks))


def _train_into_store(raw: dict[str, Any], store_root: Path, callback: Callback) -> Any:
    """One run of trainlab's engine, every measurement on, recording into a real SQLite
    store, with ``callback`` timing it."""
    config = resolve_run(raw)
    store = open_store(store_root)
    run_id = f"bench-{time.perf_counter_ns()}"
    store.register_sweep("bench", {}, [], [(run_id, 1, {}, config.to_dict())])
    outcome = train(config, run_id=run_id, run_dir=store.run_dir(run_id), sink=store,
                    callbacks=[callback], resume=False)
    assert outcome.status == "ok", outcome.error
    store.close()
    return outcome


def engine(raw: dict[str, Any], store_root: Path, steps: list[float] | None = None,
           summary: dict[str, Any] | None = None) -> float:
    """trainlab's engine, every measurement on, records into a real SQLite store.  Returns
    the epoch's seconds per step; ``steps`` receives each step's duration, ``summary`` the
    run's summary (its peak memory, speed options)."""
    timer = StepTimer()
    outcome = _train_into_store(raw, store_root, timer)
    if summary is not None:
        summary.update(outcome.summary)
    _durations(timer.marks, steps)
    seconds, n = timer.epochs[-1]
    return seconds / n


def torch_loss(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss people write with torch alone (``F.cross_entropy``, ``F.mse_loss``), where
    trainlab's LM loss has a leaner backward of its own (:mod:`trainlab.engine.tasks`)."""
    if task == "lm":
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1),
                                              ignore_index=IGNORE_INDEX)
    return F.cross_entropy if task == "classification" else F.mse_loss


def _prepare(raw: dict[str, Any], trainlab_optimizer: bool) -> tuple[Any, Any, Any, Any]:
    config = resolve_run(raw)
    data = load_dataset(config.data, config.model)  # a text set takes the model's tokenizer
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, data.info).to(bench_device())
    if trainlab_optimizer:
        opt = build_optimizer(config.optimizer, model.parameters())
    else:  # what people write: torch's defaults (the for-loop kernels on CPU)
        spec = config.optimizer
        opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "sgd": torch.optim.SGD}[spec.name](model.parameters(), lr=spec.lr)
    return config, data, model, opt


class PlainSteps:
    """A hand-written loop, one step per call: batches indexed from memory, nothing measured.

    The same model, data, seed, batch order and (with ``trainlab_optimizer``) optimizer and
    loss kernels as the engine (without it, torch's default optimizer and loss); a new epoch's
    shuffle and ``model.train()`` happen inside the step that starts it, so they count as they
    do in the engine's epoch time.
    """

    def __init__(self, raw: dict[str, Any], trainlab_optimizer: bool = True,
                 gather: bool = False) -> None:
        self.config, data, self.model, self.opt = _prepare(raw, trainlab_optimizer)
        self.loss_fn = (TASKS[data.info.task].loss if trainlab_optimizer
                        else torch_loss(data.info.task))
        # In the device's memory, as the engine keeps data that fits.
        self.device = bench_device()
        self.x_all = data.train.inputs.to(self.device)
        self.y_all = data.train.targets.to(self.device)
        self.steps_per_epoch = math.ceil(len(self.x_all) / self.config.data.batch_size)
        self.epoch = 0
        self.batches: Iterator[Any] = iter(())  # index tensors, or (idx, x, y) when gathered
        # gather: batches sliced from chunks gathered together, as the engine takes them
        # (trainlab.engine.speed.gathered), instead of two index ops per step.
        self.gather = gather

    def step(self) -> None:
        item = next(self.batches, None)
        if item is None:
            self.epoch += 1
            self.model.train()
            order = epoch_permutation(len(self.x_all), self.config.train.seed,
                                      self.epoch).to(self.device)
            batches = order.split(self.config.data.batch_size)
            self.batches = (gathered(self.x_all, self.y_all, batches) if self.gather
                            else iter(batches))
            item = next(self.batches)
        if self.gather:
            _, x, y = item
        else:
            x, y = self.x_all[item], self.y_all[item]
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn(self.model(x), y).backward()
        self.opt.step()


class ScriptSteps:
    """A typical course script, one step per call: DataLoader over a TensorDataset,
    ``loss.item()`` every step, a tqdm bar (when tqdm is installed), torch's default
    optimizer; on a GPU, pinned batches copied with ``.to(device, non_blocking=True)``."""

    def __init__(self, raw: dict[str, Any]) -> None:
        config, data, self.model, self.opt = _prepare(raw, False)
        self.loss_fn = torch_loss(data.info.task)
        self.device = bench_device()
        self.loader = DataLoader(TensorDataset(data.train.inputs, data.train.targets),
                                 batch_size=config.data.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(0),
                                 pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = len(self.loader)
        try:
            from tqdm import tqdm

            self.bar: Any = tqdm(total=None, leave=False, file=sys.stderr, mininterval=0.1)
        except ImportError:
            self.bar = None
        self.batches: Any = iter(())
        self.running = 0.0

    def step(self) -> None:
        batch = next(self.batches, None)
        if batch is None:
            self.model.train()
            self.batches = iter(self.loader)
            batch = next(self.batches)
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.running += loss.item()  # the habit: a host sync every step
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _time_epoch(stepper: PlainSteps | ScriptSteps, steps: list[float] | None) -> float:
    """One epoch of ``stepper``, timed from its start (shuffle included) with a clock read at
    each step's end (a perf_counter call, as the engine's timing callback makes); seconds per
    step, and each step's duration into ``steps``."""
    synchronize(stepper.device)
    start = time.perf_counter()
    marks = [start]
    for _ in range(stepper.steps_per_epoch):
        stepper.step()
        marks.append(time.perf_counter())
    synchronize(stepper.device)  # on a GPU, the epoch ends when its kernels have run
    marks[-1] = time.perf_counter()
    _durations(marks, steps)
    return (marks[-1] - start) / stepper.steps_per_epoch


def plain(raw: dict[str, Any], _: Path, trainlab_optimizer: bool = False,
          steps: list[float] | None = None) -> float:
    """One epoch of a hand-written loop (:class:`PlainSteps`): seconds per step."""
    return _time_epoch(PlainSteps(raw, trainlab_optimizer), steps)


def script(raw: dict[str, Any], _: Path, steps: list[float] | None = None) -> float:
    """One epoch of a typical course script (:class:`ScriptSteps`): seconds per step."""
    stepper = ScriptSteps(raw)
    try:
        return _time_epoch(stepper, steps)
    finally:
        stepper.close()


class Interleave(Callback):
    """Runs ``others`` in turn with the engine, in blocks of steps, timing every step apart.

    After every ``block`` engine steps, each of ``others`` takes ``block`` steps of its own
    (their order alternating from block to block).  A block lasts about ``block_s`` seconds
    (its step count is set at each epoch's start from the plain loop's median step in the
    epoch before; the first epoch runs one step a block): short enough that the contenders
    see the same machine (a shared machine's speed drifts by tens of percent within seconds),
    long enough that each keeps its model in the caches for most of its steps, as it would
    alone.  An engine step is timed from the end of the one before (or of the others' block)
    to its ``on_step_end``, so its bookkeeping and log points are inside it; an epoch's
    validation and checkpoint, after its last step, are outside it, as for the others.
    ``rounds`` holds, per engine epoch, each contender's step times (the first is warm-up).
    Training stops after the epoch that completes ``rounds`` measured epochs and ``seconds``
    of measured plain-loop steps.

    On a GPU a step's clock read would not wait for its kernels, and waiting at every step
    would serialize what the engine overlaps; so each block is timed whole, waiting for the
    GPU at its ends, and each of its steps counts the block's mean.
    """

    def __init__(self, others: dict[str, Any], rounds: int, seconds: float = 0.0,
                 block_s: float = 0.01, whole_blocks: bool | None = None) -> None:
        self.others, self.block_s = others, block_s
        self.min_rounds, self.min_seconds = rounds, seconds
        self.block, self.pending, self.blocks = 1, 0, 0
        self.rounds: list[dict[str, list[float]]] = []
        self.device = bench_device()
        # Blocks timed whole: on a GPU (``whole_blocks`` forces it, for tests on a CPU).
        self.whole_blocks = self.device.type != "cpu" if whole_blocks is None else whole_blocks

    def on_eval_end(self, state: RunState, values: Any) -> None:
        measured = self.rounds[1:]
        seconds = sum(sum(r.get("plain", r["engine"])) for r in measured)
        if len(measured) >= self.min_rounds and seconds >= self.min_seconds:
            raise StopTraining("measured enough")

    def on_epoch_start(self, state: RunState) -> None:
        if self.rounds and "plain" in self.rounds[-1]:
            step = statistics.median(self.rounds[-1]["plain"])
            self.block = max(1, min(64, round(self.block_s / step)))
        self.times: dict[str, list[float]] = {"engine": [], **{k: [] for k in self.others}}
        self.rounds.append(self.times)
        synchronize(self.device)
        self.mark = self.block_start = time.perf_counter()

    def _whole(self, times: list[float], start: float) -> None:
        """On a GPU: the block's last ``pending`` step times replaced by the block's mean,
        its end read after the GPU has run it."""
        if self.whole_blocks:
            synchronize(self.device)
            mean = (time.perf_counter() - start) / self.pending
            times[-self.pending:] = [mean] * self.pending

    def on_step_end(self, state: RunState) -> None:
        now = time.perf_counter()
        self.times["engine"].append(now - self.mark)
        self.pending += 1
        if self.pending < self.block and state.step % state.steps_per_epoch:
            self.mark = time.perf_counter()
            return
        self._whole(self.times["engine"], self.block_start)
        names = list(self.others)
        self.blocks += 1
        for name in names if self.blocks % 2 else reversed(names):
            stepper, times = self.others[name], self.times[name]
            block_start = time.perf_counter()
            for _ in range(self.pending):
                start = time.perf_counter()
                stepper.step()
                times.append(time.perf_counter() - start)
            self._whole(times, block_start)
        self.pending = 0
        self.mark = self.block_start = time.perf_counter()


def interleaved(raw: dict[str, Any], store_root: Path, rounds: int, others: dict[str, Any],
                seconds: float = 0.0, block_s: float = 0.01, whole_blocks: bool | None = None
                ) -> list[dict[str, list[float]]]:
    """Train the engine (every measurement on, a real SQLite store) with ``others`` stepping
    in turn (see :class:`Interleave`); each epoch's step times per contender, the first
    (warm-up) epoch left out."""
    timer = Interleave(others, rounds, seconds, block_s, whole_blocks)
    # Epochs without end: the timer stops the run once it has measured enough.
    _train_into_store({**raw, "train": {**raw.get("train", {}), "epochs": 100_000}},
                      store_root, timer)
    return timer.rounds[1:]


def epoch_groups(per_epoch: list[dict[str, list[float]]], groups: int
                 ) -> list[dict[str, list[float]]]:
    """The epochs of :func:`interleaved` pooled into at most ``groups`` contiguous groups, each
    contender's step times concatenated: the groups' spread shows how stable a ratio is."""
    size = -(-len(per_epoch) // groups)
    return [{k: [t for r in per_epoch[i:i + size] for t in r[k]] for k in per_epoch[0]}
            for i in range(0, len(per_epoch), size)]


def median_step_ratio(group: dict[str, list[float]], a: str, b: str) -> float:
    """The median of ``a``'s step times over ``b``'s, step by step (interleaved in turn)."""
    return statistics.median([x / y for x, y in zip(group[a], group[b])])


def lightning(raw: dict[str, Any], _: Path, progress_bar: bool = False) -> float:
    """Lightning's Trainer with a DataLoader over the same tensors."""
    import lightning as L

    config, data, model, _opt = _prepare(raw, False)
    loss_fn = torch_loss(data.info.task)
    spec = config.optimizer

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return loss_fn(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
            return cls[spec.name](self.model.parameters(), lr=spec.lr)

    device = bench_device()

    class Timer(L.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            synchronize(device)
            self.start, self.n = time.perf_counter(), 0

        def on_train_batch_end(self, *args: Any) -> None:
            self.end, self.n = time.perf_counter(), self.n + 1

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            if device.type != "cpu":  # the last batch's kernels, on a GPU
                synchronize(device)
                self.end = time.perf_counter()

    timer = Timer()
    loader = DataLoader(TensorDataset(data.train.inputs, data.train.targets),
                        batch_size=config.data.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(max_epochs=1, devices=1, logger=False,
                            accelerator="gpu" if bench_device().type == "cuda" else "cpu",
                            enable_checkpointing=False, enable_model_summary=False,
                            enable_progress_bar=progress_bar, num_sanity_val_steps=0,
                            callbacks=[timer])
        trainer.fit(Module(), loader)
    return (timer.end - timer.start) / timer.n


Contender = Callable[[dict[str, Any], Path], float]


def model_spec(raw: dict[str, Any]) -> Any:
    return resolve_component("model", raw["model"])


# --- Where a result was measured: one block of BENCHMARKS.md per machine ------------------


def listed_batches_loader(split: Any, settings: Any, batches: list[list[int]]) -> Any:
    """A plain PyTorch ``DataLoader`` over a Dataset split's items with ``data.loader``'s
    settings, whose batches are the index lists in ``batches`` (filled by the caller before
    each epoch, so a plain loop reads the batches trainlab's run reads)."""
    from torch.utils.data import DataLoader

    class Sampler:
        def __iter__(self) -> Any:
            return iter(batches)

        def __len__(self) -> int:
            return len(batches)

    extra = ({"prefetch_factor": settings.prefetch, "persistent_workers": settings.persistent}
             if settings.workers else {})
    return DataLoader(split.items, batch_sampler=Sampler(), num_workers=settings.workers,
                      collate_fn=split.collate, generator=torch.Generator().manual_seed(0),
                      **extra)


def _slug(text: str) -> str:
    """``text`` as a marker-safe key: lower case, letters, digits and single dashes."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "unknown"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def machine_key(device: torch.device | None = None) -> str:
    """What tells one machine's results from another's, for a section name: on a GPU its
    kind (``cuda-nvidia-h100-80gb-hbm3``), on a CPU its model and the threads torch uses
    (``cpu-amd-epyc-7b13-2threads``).  ``device``: where the benchmark trains (default: where
    :func:`bench_device` puts every contender)."""
    device = bench_device() if device is None else device
    if device.type == "cuda":
        return _slug(f"cuda-{torch.cuda.get_device_name(device)}")
    if device.type != "cpu":
        return _slug(device.type)
    return _slug(f"cpu-{cpu_model()}-{torch.get_num_threads()}threads")


def machine_description(device: torch.device | None = None) -> str:
    """The machine in words: CPU model, cores, torch's threads, and the GPU where one trains."""
    device = bench_device() if device is None else device
    threads = torch.get_num_threads()
    text = (f"{cpu_model()}, {os.cpu_count()} CPUs, torch on {threads} "
            f"thread{'s' if threads != 1 else ''}")
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    elif device.type == "cpu":
        text += "; no GPU used"
    else:
        text += f"; device {device.type}"
    return text


def section_name(benchmark: str, device: torch.device | None = None) -> str:
    """The marker name of ``benchmark``'s section for this machine
    (``benchmarks.loader@cpu-amd-epyc-7b13-2threads``): a run on another machine (a GPU)
    adds its own block instead of replacing this one's."""
    return f"{benchmark}@{machine_key(device)}"


def command_line(module: str) -> str:
    """The command that ran this benchmark, as a user would type it again."""
    return " ".join(["python -m", module, *sys.argv[1:]])


def provenance(command: str, load_before: tuple[float, ...] | list[float],
               versions: dict[str, str] | None = None,
               device: torch.device | None = None) -> str:
    """The lines a generated section opens with: the command, the date, the machine, the
    1-minute load average at the start and now (the end), and the versions."""
    import datetime
    import platform

    import trainlab

    load_after = os.getloadavg()
    names = {"python": platform.python_version(), "torch": torch.__version__,
             "trainlab": trainlab.__version__, **(versions or {})}
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"- command: `{command}`",
        f"- date: {stamp}",
        f"- machine: {machine_description(device)}",
        f"- load average (1 min): {load_before[0]:.2f} at the start, {load_after[0]:.2f} at "
        f"the end ({os.cpu_count()} CPUs)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in names.items()),
    ])


def write_result(path: Path, benchmark: str, title: str, command: str,
                 load_before: tuple[float, ...] | list[float], body: str,
                 versions: dict[str, str] | None = None,
                 device: torch.device | None = None) -> str:
    """Write ``benchmark``'s dated section for this machine into ``path`` (BENCHMARKS.md):
    a heading (``title`` and the machine), :func:`provenance`, then ``body``.  Returns the
    section's marker name."""
    name = section_name(benchmark, device)
    device = bench_device() if device is None else device
    threads = torch.get_num_threads()
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu_model()}, {threads} thread{'s' if threads != 1 else ''}")
    text = (f"## {title}: {where}\n\n"
            + provenance(command, load_before, versions, device) + "\n\n" + body.strip("\n"))
    write_section(path, name, text)
    return name
