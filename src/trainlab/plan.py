"""Planning: which runs of a sweep to train, resume or skip, checked before anything trains."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from trainlab.components import (
    DataInfo,
    build_finetune,
    build_model,
    build_optimizer,
    build_schedule,
    load_dataset,
)
from trainlab.components.optimizers import is_auto, no_dynamo_import, resolved_lr, with_lr
from trainlab.components.python import PythonModelSpec, check_output
from trainlab.components.schedules import ScheduleContext
from trainlab.config import ExpandedRun, SweepConfig, expand, values_of, varied_keys
from trainlab.config.schema import SECTIONS, RunConfig, TrainSpec
from trainlab.devices import device_available, nproc_limit, usable_cpus
from trainlab.errors import ConfigError, combine
from trainlab.records import DONE
from trainlab.store import Store, held_elsewhere

if TYPE_CHECKING:  # torch and the engine's tasks are imported when there are runs to check
    import torch

Action = Literal["train", "resume", "retry", "skip", "busy"]


@dataclass(frozen=True)
class PlannedRun:
    run: ExpandedRun
    status: str  # the status in the store, or "new"
    action: Action
    varied: dict[str, Any]
    # Engine callbacks that travel with the run to whichever process trains it (pickled to a
    # pool worker or a Ray task): a search trial's pruner.  A callback may set
    # ``final_status`` (and ``final_summary``) to end an ``ok`` run with another status.
    callbacks: tuple[Any, ...] = ()

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def index(self) -> int:
        return self.run.index

    @property
    def todo(self) -> bool:
        return self.action in ("train", "resume", "retry")


@dataclass(frozen=True)
class Plan:
    sweep: SweepConfig
    runs: list[PlannedRun]
    varied: list[str]

    @property
    def todo(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.todo]

    def register(self, store: Store) -> None:
        """Write the sweep and its runs to the store (new runs as pending)."""
        store.register_sweep(
            self.sweep.name, self.sweep.model_dump(mode="json"), self.varied,
            [(r.run_id, r.index, _jsonable(r.run.overrides), r.run.config.to_dict())
             for r in self.runs])


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def make_plan(sweep: SweepConfig, store: Store | None, *, check: bool = True,
              devices: bool = True) -> Plan:
    """Expand the sweep, decide what to do with each run, and check that every run with
    something to do can be built (a finished run is skipped, so its data and model are not
    built again: a rerun of a finished sweep costs its planning alone).

    ``devices=False`` skips the checks against this machine's devices (a Ray cluster's nodes
    have their own; the Ray executor checks those).
    """
    runs = expand(sweep)
    keys = varied_keys(runs)
    statuses = store.statuses(r.run_id for r in runs) if store is not None else {}
    planned = []
    for run in runs:
        info = statuses.get(run.run_id)
        status = info["status"] if info else "new"
        planned.append(PlannedRun(run, status, _action(info), values_of(run, keys)))
    if check:
        check_runs(sweep, [p.run for p in planned if p.action != "skip"], devices=devices)
    return Plan(sweep, planned, keys)


def action_for(info: dict[str, Any] | None) -> Action:
    """What to do with a run whose store record (status, host, pid) is ``info`` (None: new)."""
    return _action(info)


def _action(info: dict[str, Any] | None) -> Action:
    if info is None or info["status"] == "pending":
        return "train"
    status = info["status"]
    if status in DONE:
        return "skip"
    if status == "running":
        if held_elsewhere(info):
            return "busy"
        return "resume"  # its process is gone: a crash or a kill
    if status == "interrupted":
        return "resume"
    return "retry"  # failed, oom


def check_runs(sweep: SweepConfig, runs: list[ExpandedRun], *, devices: bool = True) -> None:
    """Raise ConfigError for the runs that cannot be built, all of them at once: a missing
    device, data that does not load, a model that does not fit its data, more DDP processes
    than devices.  Models are built on the meta device (no memory, no time).  Nothing to check
    (a finished sweep) imports no torch."""
    if not runs:
        return
    with no_dynamo_import():
        _check_runs(sweep, runs, devices)


def _check_runs(sweep: SweepConfig, runs: list[ExpandedRun], devices: bool) -> None:
    import torch

    from trainlab.engine.tasks import TASKS, training_loss

    found: list[tuple[ConfigError, int | None, str]] = []
    # What a run's checks found, by its config without the seed (a seed cannot make a run
    # fail to build): a grid's seeds, and any duplicates, are checked once.  10,000 runs of 10
    # seeds: 14 s of meta builds become 1.4 s.
    checked: dict[tuple[Any, ...], list[ConfigError]] = {}
    train_keys: dict[int, str] = {}  # the runs (and so their sections) live until the end
    groups_of: dict[tuple[Any, ...], list[dict[str, Any]] | Exception] = {}
    for run in runs:
        cfg = run.config
        detail = ", ".join(f"{k}={v}" for k, v in run.overrides.items())
        key = _build_key(cfg, train_keys)
        if key in checked:
            found.extend((exc, run.index, detail) for exc in checked[key])
            continue
        before = len(found)
        if devices and not device_available(cfg.train.device):
            found.append((ConfigError(
                f"`train.device`: {cfg.train.device!r} is not available on this machine "
                f"(cuda available: {torch.cuda.is_available()}); use auto or cpu",
                field="train.device"), run.index, detail))
            continue
        try:
            data = load_dataset(cfg.data, cfg.model,
                                steps_per_epoch=cfg.train.steps_per_epoch)
            task = TASKS[data.info.task]
            if cfg.train.nproc > 1:
                check_nproc(cfg.train.nproc, cfg.train.device, len(data.train),
                            cfg.data.batch_size, devices)
            if devices and cfg.data.loader is not None:
                check_workers(cfg.data.loader.workers, cfg.train.nproc)
            monitor = cfg.train.monitor.split("/", 1)[1]
            if monitor not in ("loss", *task.metrics):
                valid = ", ".join(f"valid/{m}" for m in ("loss", *task.metrics))
                raise ConfigError(
                    f"`train.monitor`: {cfg.train.monitor!r} is not measured on {task.name} "
                    f"data; use one of {valid}", field="train.monitor")
            if (is_auto(cfg.optimizer) and cfg.lr_find is not None
                    and cfg.lr_find.loss == "valid" and len(data.valid) == 0):
                raise ConfigError("`lr_find.loss`: valid needs a validation split and this "
                                  "data has none; use train", field="lr_find.loss")
            training_loss(cfg, task)  # a train.loss target that does not load fails here
            # lr: auto is chosen at run time; any LR checks that the optimizer builds.
            opt_spec = with_lr(cfg.optimizer, 1.0) if is_auto(cfg.optimizer) else cfg.optimizer
            lr = resolved_lr(opt_spec)
            # One meta model per distinct data, model, fine-tuning and LR (what its parameter
            # groups depend on): the runs of a grid over optimizers share it.
            model_key = (id(cfg.data), id(cfg.model), id(cfg.finetune), cfg.root, lr)
            if model_key not in groups_of:
                try:
                    groups_of[model_key] = _meta_groups(cfg, data.info, lr)
                except Exception as exc:  # raised again for every run that shares it
                    groups_of[model_key] = exc
            built = groups_of[model_key]
            if isinstance(built, Exception):
                raise built
            with torch.device("meta"):
                # Fresh group dicts: the optimizer writes its defaults into them.
                optimizer = build_optimizer(opt_spec, [dict(g) for g in built])
                steps = -(-len(data.train) // cfg.data.batch_size)
                build_schedule(cfg.schedule, optimizer, ScheduleContext(cfg.train.epochs, steps))
            check_profile(cfg.train, steps)
        except ConfigError as exc:
            found.append((exc, run.index, detail))
        except (ValueError, TypeError) as exc:
            # A builder (torch, mostly) refused a value our specs let through: still bad input.
            found.append((ConfigError(f"the run cannot be built: {exc}"), run.index, detail))
        except MemoryError:
            # Even the meta model (no weights) does not fit: sizes such as 10^10 layers.
            found.append((ConfigError(
                "the run cannot be built: the model's description alone does not fit in "
                "memory; check model sizes such as model.layers, model.hidden_dim and the data "
                "shape"), run.index, detail))
        checked[key] = [exc for exc, _, _ in found[before:]]
    if found:  # every run's errors at once, each distinct message once
        raise combine(found, f"in sweep {sweep.name}")


def _meta_groups(cfg: RunConfig, info: DataInfo, lr: float) -> list[dict[str, Any]]:
    """The run's parameter groups on a meta model (no memory, no time).  Transformers are
    built from their config alone (no weights are read) and the fine-tuning strategy is
    applied to that meta model: unknown LoRA targets or adapters on an unrecognised model
    fail now, before anything trains."""
    import torch

    with torch.device("meta"):
        model = build_model(cfg.model, info)
        if isinstance(cfg.model, PythonModelSpec):
            _check_meta_output(model, info, cfg.model.target)
        groups = build_finetune(cfg.finetune, model, lr).param_groups
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ConfigError("nothing to train: the model has no trainable parameters "
                          f"under finetune.name={cfg.finetune.name!r}", field="finetune.name")
    return list(groups)


def _build_key(config: RunConfig, train_keys: dict[int, str]) -> tuple[Any, ...]:
    """What decides whether a run builds: its sections but the seed.  Sections are frozen and
    an expansion's runs share each distinct one (``expand``'s cache), so they count by object
    (equal ones that are distinct objects are checked twice, which costs time, not results);
    the train section, distinct per seed, by its content without the seed."""
    train = train_keys.get(id(config.train))
    if train is None:
        train = json.dumps(config.train.model_dump(mode="json", exclude={"seed"}),
                           sort_keys=True, default=str)
        train_keys[id(config.train)] = train
    return (*(id(getattr(config, s)) for s in SECTIONS if s != "train"), id(config.lr_find),
            config.root, train)


def check_nproc(nproc: int, device: str, n_train: int, batch_size: int, devices: bool) -> None:
    """Raise ConfigError when ``train.nproc`` ranks cannot train this run."""
    import torch

    if device.startswith("cuda:"):
        raise ConfigError(f"`train.nproc`: {nproc} processes need one GPU each, but "
                          f"train.device={device!r} pins one; use device auto or cuda",
                          field="train.nproc")
    if not torch.distributed.is_available():
        raise ConfigError("`train.nproc` > 1 needs torch.distributed, which this torch build "
                          "lacks", field="train.nproc")
    if devices:
        limit, why = nproc_limit(device)
        if nproc > limit:
            raise ConfigError(f"`train.nproc`: {nproc} processes, but this machine allows "
                              f"{limit} ({why}); use train.nproc <= {limit}",
                              field="train.nproc")
    last = n_train % batch_size
    if batch_size < nproc or 0 < last < nproc:
        short = batch_size if batch_size < nproc else last
        raise ConfigError(f"`data.batch_size`: a batch of {short} examples cannot be split "
                          f"over train.nproc={nproc} processes ({n_train} training examples "
                          f"in batches of {batch_size}); choose a batch size (or data.limit) "
                          f"that leaves at least {nproc} examples in every batch",
                          field="data.batch_size")


def check_profile(train: TrainSpec, steps_per_epoch: int) -> None:
    """Raise ConfigError when ``train.profile``'s window does not fit: its warm-up and recorded
    steps are an epoch's last, after at least one other (the process's first step, which pays
    for lazy initialisation and is timed apart)."""
    spec = train.profile
    if spec is None:
        return
    if spec.epoch > train.epochs:
        raise ConfigError(f"`train.profile.epoch`: {spec.epoch} is after the last epoch "
                          f"(train.epochs={train.epochs}); use 1 to {train.epochs}",
                          field="train.profile.epoch")
    room = steps_per_epoch - 1
    if spec.steps + spec.warmup > room:
        most = f"train.profile.steps <= {room - spec.warmup}" if room > spec.warmup else (
            "a larger epoch (data.batch_size smaller, or data.limit larger)")
        raise ConfigError(f"`train.profile.steps`: {spec.steps} steps after {spec.warmup} "
                          f"warm-up steps do not fit in an epoch of {steps_per_epoch} steps: "
                          f"the window (warmup + steps) must leave at least one step before "
                          f"it; use {most}", field="train.profile.steps")


def check_workers(workers: int, nproc: int = 1) -> None:
    """Raise ConfigError when ``data.loader.workers`` asks for more loading processes than
    this machine has CPUs (each DDP rank starts its own)."""
    cores = usable_cpus()
    if workers * nproc > cores:
        per = f" per process x train.nproc={nproc}" if nproc > 1 else ""
        raise ConfigError(f"`data.loader.workers`: {workers}{per} worker processes, but this "
                          f"machine has {cores} usable CPU(s); workers beyond the CPUs only "
                          f"wait for one another. Use data.loader.workers <= {cores // nproc}",
                          field="data.loader.workers")


def _check_meta_output(model: torch.nn.Module, info: DataInfo, target: str) -> None:
    """A user's model on one meta batch: an output shape that does not fit the task is bad
    input now.  A model the meta device cannot run (one that reads a value, say) is checked
    at its first training step instead."""
    try:
        out = model(info.example_batch(2).to("meta"))
    except Exception:
        return
    check_output(out, info, 2, target)
