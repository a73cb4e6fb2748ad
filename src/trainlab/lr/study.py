"""LR range tests for a sweep, ``optimizer.lr: auto``, and the follow-up grid.

A sweep's runs fall into *range groups*: runs that share data, model, optimizer (its LR
aside), fine-tuning setup, gradient clipping and device give the same range test, so it runs
once per group (not once per run or per seed) and is stored under a *range id*, the hash of
those sections and of the ramp's settings.  A later `trainlab lr-find` or a run with
``optimizer.lr: auto`` reuses the stored test; the suggestions are pure functions of the
stored curve, so they are read again with the current suggestion settings.

A run with ``optimizer.lr: auto`` keeps ``auto`` in its config, so its run id is the hash of
the config as written (the ramp's settings included): rerunning the sweep finds the same run,
and the store says which LR it used (summary ``lr_chosen``, metric ``lr/chosen`` at step 0).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainlab.components.optimizers import is_auto, with_lr
from trainlab.config.grid import ExpandedRun, expand, set_dotted, values_of, varied_keys
from trainlab.config.schema import LRFindSpec, RunConfig, SweepConfig, resolve_lr_find
from trainlab.errors import ConfigError
from trainlab.lr.range_test import LRRangeResult, RangeTestInterrupted, lr_find
from trainlab.store import Store

# Sections whose keys change the range test; the schedule and the rest of `train` do not.
_RANGE_SECTIONS = ("data", "model", "optimizer", "finetune")
_RANGE_TRAIN_KEYS = ("train.clip_grad_norm", "train.device")


def range_id(config: RunConfig, settings: LRFindSpec) -> str:
    """The identity of a range test: what shapes its curve, hashed like a run id."""
    tree = config.to_dict()
    payload = {s: tree[s] for s in _RANGE_SECTIONS}
    payload["optimizer"] = {k: v for k, v in payload["optimizer"].items() if k != "lr"}
    payload["train"] = {k.split(".")[1]: tree["train"][k.split(".")[1]]
                        for k in _RANGE_TRAIN_KEYS}
    payload["lr_find"] = settings.curve_settings()
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _shapes_range(key: str) -> bool:
    return key != "optimizer.lr" and (key.split(".")[0] in _RANGE_SECTIONS
                                      or key in _RANGE_TRAIN_KEYS)


@dataclass(frozen=True)
class RangeGroup:
    """Runs of a sweep that share one range test."""

    range_id: str
    settings: LRFindSpec
    runs: list[ExpandedRun]
    label: dict[str, Any]  # the sweep's varied values that shape the test, e.g. optimizer.name

    @property
    def config(self) -> RunConfig:
        """The config the test runs on (the group's first run)."""
        return self.runs[0].config

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.label.items()) or "(the sweep's base)"


def range_groups(runs: Sequence[ExpandedRun],
                 settings_for: Callable[[ExpandedRun], LRFindSpec]) -> list[RangeGroup]:
    """The distinct range tests of ``runs``, in the order their first run appears."""
    keys = [k for k in varied_keys(list(runs)) if _shapes_range(k)]
    groups: dict[str, RangeGroup] = {}
    for run in runs:
        settings = settings_for(run)
        rid = range_id(run.config, settings)
        if rid not in groups:
            label = {k: v for k, v in values_of(run, keys).items() if v is not None}
            groups[rid] = RangeGroup(rid, settings, [], label)
        groups[rid].runs.append(run)
    return list(groups.values())


LONGER_RAMP = 4
"""When the default ramp's curve is flagged ``noisy`` the test runs once more with this many
times its steps (100 -> 400): on a model that learns nothing in 100 steps (a small CNN on
digits) each LR then has time to act.  An explicit ramp (``steps`` or ``epochs`` given) is kept."""


def is_default_ramp(settings: LRFindSpec) -> bool:
    """Whether ``settings`` ramp over the default steps, with neither ``steps`` nor ``epochs``
    given (a ramp the user chose is kept as given)."""
    given = {"steps", "epochs"} & settings.model_fields_set
    default = LRFindSpec.model_fields["steps"].default
    return not given and settings.epochs is None and settings.steps == default


def longer_ramp(settings: LRFindSpec) -> LRFindSpec | None:
    """The settings of the retry for a noisy default ramp (None: the ramp is the user's)."""
    if not is_default_ramp(settings):
        return None
    return settings.model_copy(update={"steps": settings.steps * LONGER_RAMP})


def is_noisy(result: LRRangeResult) -> bool:
    """The curve's drop is within its step-to-step noise: nothing learned within the ramp."""
    return any(f.code == "noisy" for f in result.suggestions.assessment.flags)


@dataclass(frozen=True)
class RangeOutcome:
    group: RangeGroup  # the test that gave ``result`` (the longer one after a retry)
    result: LRRangeResult
    reused: bool  # read from the store, not run now
    lengthened_from: RangeOutcome | None = None  # the default ramp's noisy test it replaced

    @property
    def note(self) -> str | None:
        """What the retry did, in a sentence (None: no retry)."""
        short = self.lengthened_from
        if short is None:
            return None
        still = (" It is still noisy: the suggestions are not trusted."
                 if is_noisy(self.result) else "")
        return (f"the {short.result.planned_steps}-step default ramp (range "
                f"{short.group.range_id}) was too short to learn anything (flagged noisy), so "
                f"the test ran again with a {self.result.planned_steps}-step ramp (range "
                f"{self.group.range_id}); the suggestions are from the longer test.{still} "
                "Set lr_find.steps or lr_find.epochs to choose the ramp yourself")


def _one(group: RangeGroup, store: Store | None, rerun: bool) -> RangeOutcome:
    record = store.lr_range(group.range_id) if store is not None and not rerun else None
    if record is not None:
        return RangeOutcome(group, LRRangeResult.from_dict(record["result"], group.settings),
                            True)
    result = lr_find(group.config, group.settings)
    if store is not None:
        from trainlab.devices import resolve_device
        from trainlab.engine.measure import environment

        env = environment(resolve_device(group.config.train.device))
        store.write_lr_range(group.range_id, group.config.to_dict(),
                             group.settings.model_dump(mode="json"), result.status,
                             result.to_dict(), env)
    return RangeOutcome(group, result, False)


def _longer_group(group: RangeGroup, outcome: RangeOutcome) -> RangeGroup | None:
    longer = longer_ramp(group.settings) if is_noisy(outcome.result) else None
    if longer is None:
        return None
    return RangeGroup(range_id(group.config, longer), longer, group.runs, group.label)


def run_group(group: RangeGroup, store: Store | None, *, sweep: str | None = None,
              rerun: bool = False,
              on_lengthen: Callable[[RangeOutcome, RangeGroup], None] | None = None
              ) -> RangeOutcome:
    """The group's range test: from the store when it holds it (unless ``rerun``), else run
    now and stored.  Linked to ``sweep`` in the store when given.

    A default ramp whose curve is flagged ``noisy`` is followed by one test with a ramp
    :data:`LONGER_RAMP` times as long (its own range id, stored and reused the same way);
    the outcome is then the longer test's, with the short one in ``lengthened_from``.
    ``on_lengthen(short, longer_group)`` is called before the longer test runs.
    """
    outcome = _one(group, store, rerun)
    longer = _longer_group(group, outcome)
    if longer is not None:
        if on_lengthen is not None:
            on_lengthen(outcome, longer)
        second = _one(longer, store, rerun)
        outcome = RangeOutcome(longer, second.result, second.reused, lengthened_from=outcome)
    if store is not None and sweep is not None:
        store.link_lr_range(sweep, outcome.group.range_id, group.label)
    return outcome


def stored_outcome(group: RangeGroup, store: Store) -> RangeOutcome | None:
    """The outcome :func:`run_group` would give from the store alone; None while a test it
    needs (the group's, or the longer one after a noisy default ramp) is not stored."""
    outcome = _one(group, store, False) if store.lr_range(group.range_id) else None
    longer = _longer_group(group, outcome) if outcome is not None else None
    if outcome is None or longer is None:
        return outcome
    if store.lr_range(longer.range_id) is None:
        return None
    second = _one(longer, store, False)
    return RangeOutcome(longer, second.result, True, lengthened_from=outcome)


def find_ranges(sweep: SweepConfig, store: Store | None, *,
                overrides: dict[str, Any] | None = None, rerun: bool = False,
                on_result: Callable[[RangeOutcome], None] | None = None) -> list[RangeOutcome]:
    """`trainlab lr-find`: the range test of every range group of the sweep.

    Settings come from the sweep's ``lr_find`` section, then ``overrides`` (command-line
    options; None values are ignored).
    """
    settings = resolve_lr_find(sweep.lr_find, overrides)
    outcomes = []
    for group in range_groups(expand(sweep), lambda run: settings):
        outcome = run_group(group, store, sweep=sweep.name, rerun=rerun)
        outcomes.append(outcome)
        if on_result is not None:
            on_result(outcome)
    return outcomes


# --- optimizer.lr: auto ---------------------------------------------------------------------


@dataclass(frozen=True)
class AutoLR:
    """The LR a range test chose for the runs of one range group (or why it could not)."""

    range_id: str
    method: str
    lr: float | None
    outcome: RangeOutcome | None = None
    error: str | None = None  # why there is no LR: the test diverged at once, or raised

    def summary(self) -> dict[str, Any]:
        """What a run's summary records about its LR."""
        out: dict[str, Any] = {"lr_chosen": self.lr, "lr_method": self.method,
                               "lr_range_id": self.range_id}
        if self.outcome is not None:
            verdict = self.outcome.result.suggestions.assessment
            out["lr_trusted"] = verdict.trusted
            out["lr_flags"] = [f.code for f in verdict.flags]
            out["lr_range_seconds"] = self.outcome.result.seconds
            out["lr_range_steps"] = self.outcome.result.planned_steps
            short = self.outcome.lengthened_from
            if short is not None:
                out["lr_range_lengthened_from"] = short.group.range_id
        return out

    def apply(self, config: RunConfig) -> RunConfig:
        """``config`` with the chosen LR in place of ``auto`` (for training, not for its id)."""
        if self.lr is None:
            raise ValueError(f"range test {self.range_id} chose no LR: {self.error}")
        return replace(config, optimizer=with_lr(config.optimizer,
                                                 self.lr))


def auto_group(config: RunConfig) -> tuple[str, LRFindSpec]:
    """(range id, settings) of a config with ``optimizer.lr: auto``."""
    if not is_auto(config.optimizer):
        raise ValueError("the config's optimizer.lr is not auto")
    settings = config.lr_find or LRFindSpec()
    return range_id(config, settings), settings


def resolve_auto_lr(config: RunConfig, store: Store | None = None, *,
                    sweep: str | None = None, label: dict[str, Any] | None = None) -> AutoLR:
    """The LR for a config with ``optimizer.lr: auto``: its range test (from the store when
    there) read with ``lr_find.suggest``.  Exceptions of the test propagate."""
    rid, settings = auto_group(config)
    group = RangeGroup(rid, settings, [ExpandedRun(1, config)], label or {})
    outcome = run_group(group, store, sweep=sweep)
    return _choose(outcome)


def _choose(outcome: RangeOutcome) -> AutoLR:
    settings = outcome.group.settings
    lr = outcome.result.suggestions.get(settings.suggest)
    error = None
    if lr is None:
        error = (f"optimizer.lr: auto: the LR range test {outcome.group.range_id} gives no "
                 f"{settings.suggest} suggestion: {outcome.result.explain()}")
    return AutoLR(outcome.group.range_id, settings.suggest, lr, outcome, error)


def resolve_auto_lrs(runs: Sequence[ExpandedRun], store: Store | None, *,
                     sweep: str | None = None,
                     on_result: Callable[[AutoLR], None] | None = None) -> dict[str, AutoLR]:
    """Run (or read) the range test of every range group among ``runs`` that uses
    ``optimizer.lr: auto``, once per group; keyed by range id.

    A test that raises becomes an :class:`AutoLR` with the traceback as its error, so one bad
    group does not stop the sweep (its runs are stored as failed).
    """
    import traceback

    auto = [r for r in runs if is_auto(r.config.optimizer)]
    chosen: dict[str, AutoLR] = {}
    for group in range_groups(auto, lambda run: auto_group(run.config)[1]):
        try:
            choice = _choose(run_group(group, store, sweep=sweep))
        except RangeTestInterrupted:
            break  # Ctrl-C: the caller sees the stop request and starts no run
        except Exception:
            choice = AutoLR(group.range_id, group.settings.suggest, None,
                            error="the LR range test failed:\n" + traceback.format_exc())
        chosen[group.range_id] = choice
        if on_result is not None:
            on_result(choice)
    return chosen


# --- the follow-up grid ---------------------------------------------------------------------

DEFAULT_SCHEDULES = ("constant", "step")


def followup_document(sweep: SweepConfig, outcomes: Sequence[RangeOutcome],
                      schedules: Sequence[str] = DEFAULT_SCHEDULES,
                      name: str | None = None) -> tuple[dict[str, Any], list[RangeOutcome]]:
    """The follow-up sweep: each candidate LR of each range test, with each schedule.

    Returns the document and the outcomes left out (no candidates).  The base is the first
    run; ``runs`` lists every run of the study (trainlab keeps identical runs once), since one
    cartesian grid cannot hold a different candidate set per optimizer.
    """
    from trainlab.components import SCHEDULES

    for s in schedules:
        SCHEDULES.get(s, field="--schedules")
    usable = [o for o in outcomes if o.result.suggestions.candidates]
    skipped = [o for o in outcomes if not o.result.suggestions.candidates]
    if not usable:
        raise ConfigError("no range test gave candidate learning rates; nothing to emit")
    doc = sweep.model_dump(mode="json", exclude_defaults=False)
    for key in ("grid", "runs"):
        doc.pop(key, None)
    if not doc.get("seeds"):
        doc.pop("seeds", None)
    if not doc.get("lr_find"):
        doc.pop("lr_find", None)
    doc["name"] = name or f"{sweep.name}-followup"
    doc["description"] = (f"Follow-up of sweep {sweep.name!r} (written by trainlab lr-find "
                          f"--emit-grid): {len(usable)} range test(s) x "
                          f"{usable[0].group.settings.candidates} candidate LRs x "
                          f"schedules {', '.join(schedules)}.")
    schedule = dict(doc.get("schedule") or {})
    if "step" in schedules:
        epochs = int(usable[0].group.config.train.epochs)
        schedule.setdefault("step_size", max(1, epochs // 3))
        schedule.setdefault("gamma", 0.1)
    schedule["name"] = schedules[0]
    doc["schedule"] = schedule
    entries: list[dict[str, Any]] = []
    for outcome in usable:
        for lr in outcome.result.suggestions.candidates or []:
            for s in schedules:
                entries.append({**outcome.group.label, "optimizer.lr": _round(lr),
                                "schedule.name": s})
    # The base is the first entry, so the grid's single point is that run, not an extra one.
    for key, value in entries[0].items():
        set_dotted(doc, key, value)
    doc["runs"] = entries
    return doc, skipped


def write_followup(doc: dict[str, Any], path: str | Path,
                   outcomes: Sequence[RangeOutcome]) -> int:
    """Write the follow-up YAML (after checking it loads and expands); returns its run count."""
    import yaml

    from trainlab.config.load import validate_sweep

    runs = expand(validate_sweep(copy.deepcopy(doc), str(path)))
    lines = [f"# {doc['description']}",
             "# The base is the first run; `runs` lists every run of the study. Range tests:"]
    for o in outcomes:
        verdict = o.result.suggestions.assessment
        trust = "trusted" if verdict.trusted else "NOT trusted: " + ", ".join(
            f.code for f in verdict.flags)
        lines.append(f"#   {o.group.describe()}: range {o.group.range_id}, {trust}")
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    Path(path).write_text("\n".join(lines) + "\n" + body)
    return len(runs)


def _round(lr: float) -> float:
    """Three significant digits: LRs a person can read, as a study would write them."""
    return float(f"{lr:.3g}") if math.isfinite(lr) else lr


@dataclass
class LRFindReport:
    """What `trainlab lr-find` did, for the CLI and the Python API."""

    sweep: str
    outcomes: list[RangeOutcome] = field(default_factory=list)
    figures: dict[str, list[str]] = field(default_factory=dict)
    grid_path: str | None = None
    grid_runs: int | None = None
    skipped: list[str] = field(default_factory=list)
    suggest: str = "steepest"  # the suggestion `optimizer.lr: auto` would use (lr_find.suggest)

    @property
    def exit_code(self) -> int:
        """0 every test suggested an LR; 1 some test could not (it diverged at once)."""
        return 0 if all(o.result.usable for o in self.outcomes) else 1

    def to_dict(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "suggest": self.suggest, "grid": self.grid_path,
                "grid_runs": self.grid_runs,
                "tests": [{"range_id": o.group.range_id, "label": o.group.label,
                           "reused": o.reused, "runs": [r.run_id for r in o.group.runs],
                           "lengthened_from": _short(o), "note": o.note,
                           "figures": self.figures.get(o.group.range_id, []),
                           **o.result.to_dict()} for o in self.outcomes]}


def _short(outcome: RangeOutcome) -> dict[str, Any] | None:
    short = outcome.lengthened_from
    if short is None:
        return None
    return {"range_id": short.group.range_id, "steps": short.result.planned_steps,
            "status": short.result.status, "explanation": short.result.explain(),
            "suggestions": short.result.suggestions.to_dict()}


__all__ = ["LONGER_RAMP", "AutoLR", "LRFindReport", "RangeGroup", "RangeOutcome", "find_ranges",
           "followup_document", "is_default_ramp", "is_noisy", "longer_ramp", "range_groups",
           "range_id", "resolve_auto_lr", "resolve_auto_lrs", "run_group", "stored_outcome",
           "write_followup"]
