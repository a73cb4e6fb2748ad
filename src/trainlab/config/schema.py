"""The config schema: a sweep file, and the resolved config of one run.

A sweep file holds free-form component sections (``data``, ``model``, ``optimizer``,
``schedule``) whose fields depend on the component's ``name``; each is validated against the
spec its registry entry declares once the run's values are known (after grid expansion).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from trainlab.components import REGISTRIES
from trainlab.components.base import Spec
from trainlab.components.datasets import DataSpec
from trainlab.components.finetune.base import FinetuneSpec
from trainlab.components.models import ModelSpec
from trainlab.components.optimizers import OptimizerSpec, is_auto
from trainlab.components.python import with_source
from trainlab.components.schedules import ScheduleSpec
from trainlab.errors import ConfigError, closest
from trainlab.registry import Registry
from trainlab.usercode import source_digest

S = TypeVar("S", bound=Spec)

SECTIONS = ("data", "model", "optimizer", "schedule", "finetune", "train")
COMPONENT_SECTIONS = ("data", "model", "optimizer", "schedule", "finetune")
DEFAULTS: dict[str, dict[str, Any]] = {
    "optimizer": {"name": "adam"}, "schedule": {"name": "constant"}, "finetune": {"name": "full"}}
# The names `lr_find.suggest` accepts: the single-LR methods of trainlab.lr.suggest (kept here
# so that the config does not import the LR package, which imports the config; a test checks
# that the two lists agree).
SUGGEST_METHODS = ("valley", "steepest", "minimum")
MONITORS = ("valid/loss", "valid/accuracy", "valid/perplexity", "valid/rmse", "valid/f1",
            "valid/mcc")
Monitor = Literal["valid/loss", "valid/accuracy", "valid/perplexity", "valid/rmse", "valid/f1",
                  "valid/mcc"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EarlyStoppingSpec(_Frozen):
    patience: PositiveInt = Field(default=3, description="evaluations without improvement")
    min_delta: float = Field(default=0.0, ge=0.0)


class ProfileSpec(_Frozen):
    """torch.profiler over a window of steps: where a step's time goes (train.profile)."""

    steps: PositiveInt = Field(default=20, description="steps recorded")
    warmup: NonNegativeInt = Field(
        default=5, description="steps run under the profiler before it records (its own "
        "start-up cost stays out of the recording)")
    epoch: PositiveInt = Field(
        default=1, description="the epoch whose last warmup + steps steps are profiled")
    memory: bool = Field(default=True, description="on CUDA, also record the memory timeline "
                         "(memory.pickle, for pytorch.org/memory_viz)")


class TrainSpec(_Frozen):
    """How to train: epochs, seed, device, logging cadence and safety nets."""

    epochs: PositiveInt = 10
    seed: int = 0
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                        description="auto | cpu | cuda | cuda:N | mps")
    log_every: PositiveInt = Field(
        default=50, description="steps between train-loss / LR / grad-norm records")
    eval_every: PositiveInt | None = Field(
        default=None, description="validate every N steps (default: at the end of each epoch)")
    monitor: Monitor = Field(
        default="valid/loss", description="metric choosing the best checkpoint and early stopping")
    clip_grad_norm: PositiveFloat | None = None
    early_stopping: EarlyStoppingSpec | None = None
    checkpoint: bool = Field(default=True, description="checkpoint for resume (last.pt; how "
                             "often: checkpoint_every_s)")
    checkpoint_every_s: NonNegativeFloat = Field(
        default=10.0, description="epoch-end checkpoints at least this many seconds apart "
        "(0: every epoch); the last epoch, an early stop and Ctrl-C always write one. Not part of "
        "the run id", json_schema_extra={"run_id": False})
    threads: Literal["auto"] | PositiveInt = Field(
        default="auto", description="torch intra-op threads; auto: the count fastest for this "
        "model on this machine now, from a few timed steps (one for a tiny model or a busy "
        "machine; never more than the process has: --jobs and torchrun share the cores out); "
        "summary.speed.threads says what a run trained with",
        json_schema_extra={"run_id": {"auto": None}})
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="autocast dtype for forward and loss (fp16 adds a grad scaler)")
    compile: bool = Field(default=False, description="torch.compile the model (compile time "
                          "is recorded as time/compile, apart from training time)")
    deterministic: bool = Field(
        default=False, description="deterministic kernels while the run trains "
        "(torch.use_deterministic_algorithms, cuDNN benchmark off, CUBLAS_WORKSPACE_CONFIG): "
        "bit-identical reruns and resumes on CUDA too, at some speed; ops without a "
        "deterministic kernel warn",
        json_schema_extra={"run_id": "when set"})
    channels_last: Literal["auto"] | bool = Field(
        default="auto", description="channels-last memory format for conv models (auto: on CUDA)")
    gpu_sample_every: PositiveFloat = Field(
        default=0.5, description="seconds between NVML samples of GPU utilization and memory")
    data_on_device: Literal["auto"] | bool = Field(
        default="auto", description="keep the whole dataset on the accelerator (auto: when it "
        "takes under half the free memory); else pinned host batches copied asynchronously")
    loss: str | None = Field(
        default=None, description='your loss: "losses.py:name" or "package.module:name", a '
        "function (outputs, targets) -> scalar tensor that training minimises (default: the "
        "task's; validation and test always report the task's loss and metrics)",
        json_schema_extra={"run_id": "when set"})
    loss_source: str | None = Field(
        default=None, description="set by trainlab: sha256 of train.loss's source file (part of "
        "the run id)", json_schema_extra={"run_id": "when set"})
    steps_per_epoch: PositiveInt | None = Field(
        default=None, description="steps in an epoch of streaming data (a torch "
        "IterableDataset of your own, or hf data with streaming: true), which has no length: "
        "each epoch reads this many batches from a new pass over the stream (a pass that ends "
        "first is restarted); required for such data, refused for data with a length",
        json_schema_extra={"run_id": "when set"})
    nproc: PositiveInt = Field(
        default=1, description="processes training this run together with "
        "DistributedDataParallel (torchrun): one per GPU on CUDA (NCCL), or CPU processes (gloo); "
        "data.batch_size stays the global batch")
    profile: ProfileSpec | None = Field(
        default=None, description="profile a window of steps with torch.profiler: the share of "
        "data wait, forward, backward and optimizer, the top operators and a trace file "
        "(Perfetto, chrome://tracing, TensorBoard); the window is left out of time/train and "
        "throughput. e.g. {steps: 20, warmup: 5}. Not part of the run id",
        json_schema_extra={"run_id": False})

    stack: Literal["off", "auto"] | PositiveInt = Field(
        default="off", description="train the runs of a sweep that differ only in what can "
        "differ per model (LR and other optimizer hyperparameters, weight decay, schedule, seed) "
        "together as one stacked model (torch.func.vmap), up to N at a time (auto: up to 16, "
        "and no more than fit half the available RAM or half the GPU's free memory, counting "
        "each model's weights, gradients, optimizer state and activations; "
        "TRAINLAB_STACK_MEMORY sets that budget); each run keeps its own data order, init, "
        "metrics and status, and its wall-clock and memory are the stack's (off: one run at "
        "a time)", json_schema_extra={"run_id": "when set"})

    @field_validator("stack", mode="before")
    @classmethod
    def _stack(cls, value: Any) -> Any:
        if value is False or value is None:  # YAML reads a bare `off` as false
            return "off"
        if value in ("off", "auto") or (type(value) is int and value >= 1):
            return value
        raise ValueError("must be off, auto or the most runs trained together (an integer, "
                         "at least 1)")

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, value: Any) -> Any:
        if value is True:  # `train.profile: true`: the default window
            return {}
        return None if value is False else value

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        if value is None:  # configs stored before auto, whose None meant torch's default
            return "auto"
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("must be auto or a number of threads (an integer, at least 1)")


class LRFindSpec(_Frozen):
    """The LR range test: `trainlab lr-find`, and `optimizer.lr: auto` in a sweep."""

    start: PositiveFloat = Field(default=1e-7, description="first LR of the ramp")
    end: PositiveFloat = Field(default=10.0, description="last LR of the ramp")
    steps: int = Field(default=100, ge=10, description="optimizer steps of the ramp")
    epochs: PositiveFloat | None = Field(
        default=None, description="ramp over this many epochs instead (overrides steps)")
    mode: Literal["exp", "linear"] = Field(default="exp", description="shape of the ramp")
    smooth: float = Field(default=0.9, ge=0.0, lt=1.0,
                          description="EMA weight of the past loss (0: no smoothing)")
    diverge: float = Field(default=4.0, gt=1.0,
                           description="stop once the smoothed loss passes this x its best")
    loss: Literal["train", "valid"] = Field(
        default="train", description="train: the next batch's loss; valid: the validation loss")
    # steepest, not valley: trained 3 epochs, valley's LR lost 4-6x in validation loss to a log
    # grid's best on digits MLPs (SGD and Adam) where steepest stayed within 1.2x
    # (benchmarks/lr_suggest.py). Part of the run id of lr: auto runs.
    suggest: str = Field(default="steepest",
                         description="what lr: auto uses: steepest | valley | minimum")
    candidates: int = Field(default=4, ge=1, le=32, description="candidate LRs to emit")
    seed: int = Field(default=0, description="seed of the test's initialisation and batches")

    @field_validator("suggest")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in SUGGEST_METHODS:
            guess = closest(value, SUGGEST_METHODS)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise ValueError(f"is not a suggestion method{hint} "
                             f"Valid: {', '.join(SUGGEST_METHODS)}")
        return value

    @field_validator("end")
    @classmethod
    def _range_increases(cls, end: float, info: ValidationInfo) -> float:
        start = info.data.get("start")
        if start is not None and end <= start:
            raise ValueError(f"must be above start ({start:g}): the range of LRs must increase")
        return end

    def curve_settings(self) -> dict[str, Any]:
        """The settings that shape the curve (not how it is read): the test's identity."""
        return self.model_dump(mode="json", exclude={"suggest", "candidates"})


class SweepConfig(_Frozen):
    """A sweep file, before expansion."""

    name: str = Field(min_length=1, pattern=r"^[^\s/\\]+$")
    description: str = ""
    data: dict[str, Any]
    model: dict[str, Any]
    optimizer: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULTS["optimizer"]))
    schedule: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULTS["schedule"]))
    finetune: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULTS["finetune"]))
    train: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    runs: list[dict[str, Any]] = Field(default_factory=list)
    # False: the grid's points, then the explicit runs (each on the base alone).  True: every
    # explicit run at every grid point (grid x runs); an entry ``{}`` stands for the base.
    cross: bool = False
    seeds: list[int] | None = None
    lr_find: dict[str, Any] = Field(default_factory=dict)
    # Optuna search over a space of keys (validated by trainlab.search.spec; a study per grid
    # point): trials are generated as the search goes, not expanded here.
    search: dict[str, Any] | None = None
    # The folder of the file this sweep was read from: relative file targets are found there.
    _root: str | None = PrivateAttr(default=None)

    @property
    def root(self) -> str | None:
        return self._root

    def with_root(self, root: str | Path | None) -> SweepConfig:
        """This sweep, with relative file targets found in ``root``."""
        out = self.model_copy()
        out._root = None if root is None else str(Path(root).resolve())
        return out

    @field_validator("grid")
    @classmethod
    def _grid_lists_not_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has an empty list; give at least one value")
        return grid

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"seeds must be a non-empty list of distinct integers; got {seeds}")
        return seeds


@functools.cache
def _run_id_rules(spec: type[BaseModel]
                  ) -> tuple[frozenset[str], frozenset[str], dict[str, dict[str, Any]]]:
    """The fields a run id leaves out, those it takes only when set (not None), and those
    where a value is hashed as another.

    Fields marked ``run_id: False`` say how a run is kept, not what it computes (how often it
    checkpoints): changing them does not make a new run.  Fields marked ``run_id: "when set"``
    were added after runs were stored: at their default (or None) they leave every existing
    id as it was.  A field marked with a mapping (``run_id: {"auto": None}``) got a new value that
    means what an old one did: ``train.threads: auto`` took over from None (torch's default;
    neither names a count, and the count a run got is recorded with it), so the ids of runs
    stored before stay theirs.
    """
    rules = {name: field.json_schema_extra.get("run_id") for name, field in
             spec.model_fields.items() if isinstance(field.json_schema_extra, dict)}
    return (frozenset(n for n, r in rules.items() if r is False),
            frozenset(n for n, r in rules.items() if r == "when set"),
            {n: r for n, r in rules.items() if isinstance(r, dict)})


def _canonical(tree: dict[str, Any]) -> str:
    return json.dumps(tree, sort_keys=True, separators=(",", ":"))


# Per section object (specs are frozen): its part of the run id and its flattened fields.
# Keyed by id() with the object held, so an id is never reused while its entry lives.
_VIEWS: dict[int, tuple[Any, str, dict[str, Any]]] = {}


def _section_views(spec: BaseModel, section: str) -> tuple[str, dict[str, Any]]:
    """The canonical JSON a run id hashes for this section (the fields the id takes, see
    :func:`_run_id_rules`) and the section's fields by dotted name (``section.field``; not
    to be modified: every run with this section shares it)."""
    hit = _VIEWS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1], hit[2]
    dumped = spec.model_dump(mode="json")
    hidden, when_set, aliases = _run_id_rules(type(spec))
    fields = type(spec).model_fields
    kept = {k: aliases[k].get(v, v) if k in aliases and isinstance(v, str) else v
            for k, v in dumped.items()
            if k not in hidden and not (k in when_set and (v is None or v == fields[k].default))}
    views = (_canonical(kept), flatten(dumped, f"{section}."))
    if len(_VIEWS) > 100_000:  # a long-lived process (a search) does not grow without end
        _VIEWS.clear()
    _VIEWS[id(spec)] = (spec, *views)
    return views


@dataclass(frozen=True)
class RunConfig:
    """The resolved config of one run: concrete component specs, every default filled in.

    Each section is typed by its kind's base spec (what every entry of that registry shares,
    such as ``data.batch_size`` and ``optimizer.lr``); the value is the spec of the entry its
    ``name`` picked, whose own fields the component's builder reads.
    """

    data: DataSpec
    model: ModelSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    finetune: FinetuneSpec
    train: TrainSpec
    lr_find: LRFindSpec | None = None  # only with optimizer.lr: auto (then part of the run id)
    # The folder relative file targets (name: python, train.loss) are found in: the config
    # file's.  Not part of the run id (the targets' source hashes are).
    root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {s: getattr(self, s).model_dump(mode="json") for s in SECTIONS}
        if self.lr_find is not None:
            out["lr_find"] = self.lr_find.model_dump(mode="json")
        if self.root is not None:
            out["root"] = self.root
        return out

    @cached_property
    def run_id(self) -> str:
        """A stable id: the hash of the canonical resolved config (computed once per config;
        each section's part once per section object, which thousands of runs share)."""
        parts = {s: _section_views(getattr(self, s), s)[0] for s in SECTIONS}
        if self.lr_find is not None:
            parts["lr_find"] = _canonical(self.lr_find.model_dump(mode="json"))
        # What json.dumps(sort_keys=True) of the whole dict writes, from the sections' parts.
        canonical = "{" + ",".join(f"\"{k}\":{v}" for k, v in sorted(parts.items())) + "}"
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """The config as dotted keys (``model.hidden_dim``) to plain values."""
        out: dict[str, Any] = {}
        for s in SECTIONS:
            out.update(_section_views(getattr(self, s), s)[1])
        if self.lr_find is not None:
            out.update(flatten({"lr_find": self.lr_find.model_dump(mode="json")}))
        if self.root is not None:
            out["root"] = self.root
        return out

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> RunConfig:
        return resolve_run(raw)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def component_fields(registry: Registry[Any]) -> set[str]:
    """Every field name any entry of ``registry`` accepts."""
    return {f for entry in registry for f in entry.spec.model_fields}


def section_fields(section: str) -> set[str]:
    if section == "train":
        return set(TrainSpec.model_fields)
    return component_fields(REGISTRIES[section])


def resolve_component(section: str, raw: Any) -> Spec:
    """Validate one component section against the spec of the entry its ``name`` picks.

    Fields that belong to another entry of the same kind are dropped, so a grid over
    ``model.name`` can share one base section; a field no entry knows is an error.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"`{section}` must be a mapping with a `name`; got {raw!r}",
                          field=section)
    registry = REGISTRIES[section]
    if "name" not in raw:
        raise ConfigError(f"`{section}.name` is missing; choose one of: "
                          f"{', '.join(registry.names())}", field=f"{section}.name")
    entry = registry.get(raw["name"], field=f"{section}.name")
    own = entry.spec.model_fields
    others = component_fields(registry)
    for key in raw:
        if key not in own and key not in others:
            raise unknown_field(section, key, set(own))
    values = {k: v for k, v in raw.items() if k in own}
    try:
        spec: Spec = entry.spec.model_validate(values)  # type: ignore[assignment]
        return spec
    except ValidationError as exc:
        raise config_error(exc, section) from None


def _section(raw: dict[str, Any], section: str, base: type[S]) -> S:
    spec = resolve_component(section, raw[section] if section in raw else DEFAULTS.get(section))
    if not isinstance(spec, base):  # the registry refuses such entries; a guard for mypy
        raise TypeError(f"{section}: {type(spec).__name__} is not a {base.__name__}")
    return spec


def resolve_run(raw: dict[str, Any], root: str | None = None,
                cache: dict[str, Any] | None = None) -> RunConfig:
    """A fully resolved :class:`RunConfig` from nested sections; ``root`` (else the raw
    config's own ``root``) is where relative file targets are found.  ``cache``: resolved
    sections by their raw values, shared by the runs of one expansion (a grid repeats each
    section's few distinct values over thousands of runs; specs are frozen)."""
    root = root or raw.get("root")
    found: list[ConfigError] = []  # every section's errors, raised together

    def section(name: str, base: type[S]) -> S | None:
        # repr, not canonical JSON: 5x cheaper over 10,000 runs, and at worst a miss (a mapping
        # in another order), never a false hit (plain YAML values repr their content).
        key = repr((name, raw.get(name), root)) if cache is not None else ""
        try:
            if cache is not None and key in cache:
                hit = cache[key]
                if isinstance(hit, ConfigError):
                    raise hit
                spec: S = hit
            else:
                spec = with_source(_section(raw, name, base), root, name)
                if cache is not None:
                    cache[key] = spec
        except ConfigError as exc:
            if cache is not None:
                cache[key] = exc
            found.append(exc)
            return None
        return spec

    def train_section() -> TrainSpec:
        train_raw = raw.get("train") or {}
        if not isinstance(train_raw, dict):
            raise ConfigError(f"`train` must be a mapping; got {train_raw!r}", field="train")
        try:
            return TrainSpec.model_validate(train_raw)
        except ValidationError as exc:
            raise config_error(exc, "train") from None

    optimizer = section("optimizer", OptimizerSpec)
    data, model = section("data", DataSpec), section("model", ModelSpec)
    schedule, finetune = section("schedule", ScheduleSpec), section("finetune", FinetuneSpec)
    train: TrainSpec | None = None
    lr_find: LRFindSpec | None = None
    try:
        train_key = repr(("train", raw.get("train"))) if cache is not None else ""
        cached = cache.get(train_key) if cache is not None else None
        train = cached if isinstance(cached, TrainSpec) else train_section()
        if cache is not None:
            cache[train_key] = train
    except ConfigError as exc:
        found.append(exc)
    try:
        lr_find = resolve_lr_find(raw.get("lr_find"))
    except ConfigError as exc:
        found.append(exc)
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigError("\n".join(str(e) for e in found), field=found[0].field, parts=found)
    assert optimizer and data and model and schedule and finetune and train and lr_find
    # The range test's settings belong to a run only when they choose its LR.
    if train.loss is not None:
        train = train.model_copy(update={"loss_source": source_digest(train.loss, root,
                                                                      "train.loss")})
    return RunConfig(data=data, model=model, optimizer=optimizer, schedule=schedule,
                     finetune=finetune, train=train,
                     lr_find=lr_find if is_auto(optimizer) else None, root=root)


def resolve_lr_find(raw: Any, overrides: dict[str, Any] | None = None) -> LRFindSpec:
    """The ``lr_find`` section (plus command-line ``overrides``) as validated settings."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"`lr_find` must be a mapping; got {raw!r}", field="lr_find")
    values = {**(raw or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return LRFindSpec.model_validate(values)
    except ValidationError as exc:
        raise config_error(exc, "lr_find") from None


def unknown_field(section: str, key: str, valid: set[str]) -> ConfigError:
    prefix = f"{section}." if section else ""
    guess = closest(key, valid)
    hint = f" did you mean `{prefix}{guess}`?" if guess else ""
    return ConfigError(f"`{prefix}{key}` is not a config field.{hint} Valid fields: "
                       f"{', '.join(sorted(valid))}.", field=f"{prefix}{key}")


def config_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    """A pydantic ValidationError as one readable message naming each field and value."""
    lines = []
    first_field = None
    errors = _merge_union_errors(exc.errors())
    for err in errors:
        parts = [prefix] * bool(prefix) + [str(p) for p in err["loc"]]
        loc = ".".join(parts)
        first_field = first_field or loc
        if err["type"] == "extra_forbidden":
            # From the parts, not the joined text: a key may itself hold a dot ("." or "a.b").
            section, key = ".".join(parts[:-1]), parts[-1] if parts else ""
            valid = _fields_at(section)
            lines.append(str(unknown_field(section, key, valid)))
            continue
        if err["type"] == "missing":
            lines.append(f"`{loc}` is required")
            continue
        msg = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        got = err.get("input")
        lines.append(f"`{loc}` {msg}; got {got!r}" if loc else f"{msg}; got {got!r}")
    return ConfigError("\n".join(lines), field=first_field)


# What pydantic appends to a location for each member of a union (``Literal["auto"] | bool``
# fails as ``channels_last.literal['auto']`` and ``channels_last.bool``): one field, one message.
_UNION_MEMBER = re.compile(r"^(literal\[.*\]|bool|int|float|str|none|list\[.*\]|"
                           r"dict\[.*\]|function-.*|is-instance\[.*\])$")


def _merge_union_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Errors of one union field as one, its location without the members' tags and its
    message the members' choices joined by "or" (``must be 'auto' or true/false``)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err["loc"])
        if len(loc) < 2 or not _UNION_MEMBER.match(str(loc[-1])):
            out.append(dict(err))
            continue
        msg = ("true or false" if err["type"] == "bool_parsing"
               else err["msg"].replace("Input should be ", "").replace("Value error, ", ""))
        if loc[:-1] in merged:
            first = merged[loc[:-1]]
            first["msg"] = f"{first['msg']} or {msg}"
            continue
        first = {**err, "loc": loc[:-1], "msg": f"Input should be {msg}", "type": "union"}
        merged[loc[:-1]] = first
        out.append(first)
    return out


def _nested_fields(model: type[BaseModel], parts: list[str]) -> set[str]:
    """The fields of the model at ``parts`` below ``model`` (``loader`` of a DataSpec)."""
    for part in parts:
        if part not in model.model_fields:
            break
        ann = model.model_fields[part].annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)), model)
    return set(model.model_fields)


def _fields_at(section: str) -> set[str]:
    if section == "train" or section.startswith("train."):
        return _nested_fields(TrainSpec, section.split(".")[1:])
    head, _, rest = section.partition(".")
    if head in COMPONENT_SECTIONS and rest:
        specs = [entry.spec for entry in REGISTRIES[head]]
        return set().union(*(_nested_fields(spec, rest.split(".")) for spec in specs
                             if rest.split(".")[0] in spec.model_fields))
    if section in COMPONENT_SECTIONS:
        return section_fields(section)
    if section == "lr_find":
        return set(LRFindSpec.model_fields)
    return set(SweepConfig.model_fields) if not section else set()
