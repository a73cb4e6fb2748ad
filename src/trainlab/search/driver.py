"""The search loop: ask Optuna for trials, train them as ordinary runs, tell it the results.

A trial is one set of values for the searched keys, set on the base config (at one grid point)
through the same dotted keys as ``--set``, times the sweep's seeds: its runs have the normal
run ids, so the store, the executors and the reports treat them like any other run.  Each
grid point (and each explicit ``runs:`` entry) is a study of its own.

Nothing of a study is kept but its runs: a rerun rebuilds every study from the store (the
finished trials added to a fresh in-memory study), trains first the trials a kill or a Ctrl-C
left unfinished (they resume from their checkpoints), then asks for new ones until each study
has ``search.trials``.  A finished trial never trains again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainlab.config.grid import ExpandedRun, points, set_dotted
from trainlab.config.schema import SECTIONS, RunConfig, SweepConfig, resolve_run
from trainlab.errors import ConfigError
from trainlab.execute import Executor, SweepObserver
from trainlab.plan import Plan, PlannedRun, action_for, make_plan
from trainlab.search.optuna_glue import (
    add_trial,
    best_of,
    distributions,
    grid_size,
    import_optuna,
    study_for,
)
from trainlab.search.prune import PruneCallback
from trainlab.search.ranges import bound_lr_ranges
from trainlab.search.spec import SearchSpec, parse_search
from trainlab.store import Store

_INCOMPLETE = ("pending", "running", "interrupted", "failed", "oom")


@dataclass
class Trial:
    params: dict[str, Any]
    runs: list[ExpandedRun] = field(default_factory=list)
    state: str = "new"  # new | incomplete | complete | pruned | failed
    value: float | None = None
    handle: Any = None  # the Optuna trial of this session (None: rebuilt from the store)
    number: int = 0


@dataclass
class Study:
    """One grid point's study: its fixed settings, Optuna study and trials in order."""

    label: str
    point: dict[str, Any]
    study: Any = None
    trials: list[Trial] = field(default_factory=list)
    queue: list[Trial] = field(default_factory=list)  # unfinished trials to train first
    repeats: int = 0  # proposals of a trial it already had (a small or exhausted space)

    def run_ids(self) -> list[str]:
        return [r.run_id for t in self.trials for r in t.runs]


@dataclass
class SearchResult:
    studies: list[Study]
    outcomes: list[Any] = field(default_factory=list)
    interrupted: bool = False
    trained: int = 0
    log: list[tuple[str, int]] = field(default_factory=list)  # asks and tells, in order

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            from trainlab.engine import interrupt

            return interrupt.exit_code()
        return 1 if any(o.status not in ("ok", "busy", "pruned") for o in self.outcomes) else 0


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "all"


class Search:
    """A sweep's search, rebuilt from ``store`` (None: nothing stored yet).

    ``run_range_tests``: run the LR range tests an ``optimizer.lr: {from_range_test: true}``
    needs and the store lacks (a search that trains); otherwise stored ones are read."""

    def __init__(self, sweep: SweepConfig, store: Store | None,
                 run_range_tests: bool = False) -> None:
        self.sweep, self.store = sweep, store
        self.spec: SearchSpec = parse_search(sweep)
        import_optuna()
        self.seeds: list[int | None] = list(sweep.seeds) if sweep.seeds else [None]
        self.base = {s: copy.deepcopy(getattr(sweep, s)) for s in SECTIONS}
        self.base["lr_find"] = copy.deepcopy(sweep.lr_find)
        self.epochs = int(sweep.train.get("epochs", 10))
        self.cache: dict[str, Any] = {}
        self.studies = [Study(point_label(p), p) for p in points(sweep)]
        if any(p.from_range for p in self.spec.space):
            self.spec = bound_lr_ranges(
                self.spec, [(s.point, self._resolve(s.point)) for s in self.studies], store,
                sweep=sweep.name, run=run_range_tests and store is not None)
        self.dists = distributions(self.spec)
        self.members: dict[str, tuple[str, int, dict[str, Any], dict[str, Any]]] = {}
        self.next_index = 1
        self.warn: Callable[[str], None] = lambda message: None
        self.on_plan: Callable[[Plan], None] = lambda plan: None  # each plan made (trackers)
        self._rebuild()

    # --- the store -------------------------------------------------------------------------

    def _rebuild(self) -> None:
        keys = self.spec.keys
        by_label = {json.dumps(s.point, sort_keys=True, default=str): s for s in self.studies}
        stored: dict[tuple[str, str], Trial] = {}
        rows = self.store.runs(self.sweep.name) if self.store is not None else None
        if rows is not None and not rows.empty:
            self.next_index = int(rows["index"].max()) + 1
            for row in rows.to_dict(orient="records"):
                overrides = dict(row["overrides"])
                if not all(k in overrides for k in keys):
                    continue
                point = {k: v for k, v in overrides.items()
                         if k not in keys and not (k == "train.seed" and self.sweep.seeds)}
                study = by_label.get(json.dumps(point, sort_keys=True, default=str))
                if study is None:
                    continue  # a grid point no longer in the file
                params = {k: overrides[k] for k in keys}
                tkey = (study.label, json.dumps(params, sort_keys=True, default=str))
                trial = stored.get(tkey)
                if trial is None:
                    trial = stored[tkey] = Trial(params)
                    study.trials.append(trial)
                run_id, index = str(row["run_id"]), int(row["index"])
                trial.runs.append(ExpandedRun(index, _StoredConfig(  # type: ignore[arg-type]
                    run_id, row["config"]), overrides))
                self.members[run_id] = (run_id, index, overrides, row["config"])
        for i, study in enumerate(self.studies):
            direction = self.spec.direction
            seed = _mix(self.spec.seed, i, len(study.trials))
            study.study = study_for(self.spec, seed, direction)
            for number, trial in enumerate(study.trials):
                trial.number = number
                self._settle(trial)
                inside = all(p.contains(trial.params[p.key]) for p in self.spec.space)
                if trial.state == "incomplete" and inside:
                    study.queue.append(trial)
                elif trial.state == "incomplete":
                    trial.state = "outside"  # unfinished, and the space no longer holds it
                elif not add_trial(study.study, self.spec, trial.params, trial.state,
                                   trial.value, self._curve(trial)):
                    trial.state = "outside"  # the space changed: not this study's any more

    def _settle(self, trial: Trial) -> None:
        """The trial's state and value from its runs in the store."""
        assert self.store is not None
        ids = [r.run_id for r in trial.runs]
        statuses = [s["status"] for s in self.store.statuses(ids).values()]
        if len(statuses) < len(ids) or any(s in _INCOMPLETE for s in statuses):
            trial.state = "incomplete"
            return
        if "pruned" in statuses:
            trial.state = "pruned"
            return
        if any(s != "ok" for s in statuses):
            trial.state = "failed"
            return
        values = self.store.metrics(ids, keys=[self.spec.metric])
        per_run = [best_of(list(g["value"]), self.spec.direction)
                   for _, g in values.groupby("run_id") if len(g)]
        if len(per_run) < len(ids) or not all(math.isfinite(v) for v in per_run):
            trial.state = "failed"  # a run that never recorded the metric
            return
        trial.state, trial.value = "complete", statistics.fmean(per_run)

    def _curve(self, trial: Trial) -> list[float]:
        """The trial's metric per evaluation: the mean over its runs (seeds)."""
        if self.store is None or not trial.runs:
            return []
        frame = self.store.metrics([r.run_id for r in trial.runs], keys=[self.spec.metric])
        curves = [list(g.sort_values("step")["value"]) for _, g in frame.groupby("run_id")]
        n = min((len(c) for c in curves), default=0)
        return [statistics.fmean(c[i] for c in curves) for i in range(n)]

    # --- planning --------------------------------------------------------------------------

    def check(self) -> None:
        """Check that every config the search can produce builds: each grid point with each
        searched key at its bounds (every value of a choice), on the meta device."""
        probe = self.sweep.model_dump(mode="json", exclude={"search"})
        probe["grid"] = {**self.sweep.grid, **{p.key: p.corners() for p in self.spec.space
                                               if p.corners()}}
        probe["seeds"] = None
        make_plan(SweepConfig.model_validate(probe).with_root(self.sweep.root), None)

    def remaining(self, study: Study) -> int:
        """Trials still to ask: up to ``trials`` (method grid: at most the grid's size),
        unless the sampler keeps proposing trials the study has (a small space, covered)."""
        done = sum(t.state != "outside" for t in study.trials)
        total = (min(self.spec.trials, grid_size(self.spec)) if self.spec.method == "grid"
                 else self.spec.trials)
        return max(0, total - done) if study.repeats < 3 * self.spec.trials else 0

    def varied(self) -> list[str]:
        grid = [k for k in self.sweep.grid if len(self.sweep.grid[k]) > 1]
        return [*grid, *self.spec.keys, *(["train.seed"] if self.sweep.seeds else [])]

    def next_batch(self, width: int) -> list[tuple[Study, Trial]]:
        """Up to ``width`` trials to train now: unfinished ones first, then new proposals,
        taken from the studies in turn."""
        batch: list[tuple[Study, Trial]] = []
        while len(batch) < width:
            added = False
            for study in self.studies:
                if len(batch) >= width:
                    break
                trial = self._take(study)
                if trial is not None:
                    batch.append((study, trial))
                    added = True
            if not added:
                break
        return batch

    def _take(self, study: Study) -> Trial | None:
        if study.queue:
            trial = study.queue.pop(0)
            # Resolved again (the store keeps configs as data); same settings, same ids.
            trial.runs = [ExpandedRun(r.index, self._resolve(r.overrides), r.overrides)
                          for r in trial.runs]
            # Seeds added to the file since it was asked: it gains their runs (a finished
            # trial keeps the seeds its value was measured over).
            have = {r.overrides.get("train.seed") for r in trial.runs}
            if None not in have:
                trial.runs += self._runs(study.point, trial.params,
                                         [s for s in self.seeds if s not in have])
            study.study.enqueue_trial(trial.params, skip_if_exists=False)
            trial.handle = study.study.ask(self.dists)
            return trial
        while self.remaining(study) > 0:
            handle = study.study.ask(self.dists)
            params = {k: handle.params[k] for k in self.spec.keys}
            known = next((t for t in study.trials if t.params == params), None)
            if known is not None:
                # A proposal it already has: tell the known outcome, train nothing (a trial
                # still training: told failed, which TPE's model leaves out, rather than
                # training the same runs twice).
                study.repeats += 1
                if known.state in ("complete", "pruned", "failed"):
                    self._tell(study, handle, known)
                else:
                    study.study.tell(handle, state=import_optuna().trial.TrialState.FAIL)
                continue
            trial = Trial(params, handle=handle, number=len(study.trials))
            try:
                trial.runs = self._runs(study.point, params)
            except ConfigError as exc:
                trial.state = "failed"
                study.trials.append(trial)
                study.study.tell(handle, state=import_optuna().trial.TrialState.FAIL)
                self.warn(f"trial {trial.number + 1} ({point_label(params)}) does not build: "
                          f"{exc}")
                continue
            study.trials.append(trial)
            return trial
        return None

    def _runs(self, point: dict[str, Any], params: dict[str, Any],
              seeds: list[int | None] | None = None) -> list[ExpandedRun]:
        runs = []
        for seed in self.seeds if seeds is None else seeds:
            overrides = {**point, **params}
            if seed is not None:
                overrides["train.seed"] = seed
            runs.append(ExpandedRun(self.next_index, self._resolve(overrides),
                                    _jsonable(overrides)))
            self.next_index += 1
        return runs

    def _resolve(self, overrides: dict[str, Any]) -> RunConfig:
        raw = copy.deepcopy(self.base)
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        return resolve_run(raw, root=self.sweep.root, cache=self.cache)

    def plan(self, batch: list[tuple[Study, Trial]]) -> Plan:
        """The batch as a plan for an executor (each run with its pruner), after writing the
        sweep's membership (every trial so far) to the store."""
        assert self.store is not None
        varied = self.varied()
        ids = [r.run_id for _, t in batch for r in t.runs]
        infos = self.store.statuses(ids)
        planned = []
        for study, trial in batch:
            for run in trial.runs:
                self.members[run.run_id] = (run.run_id, run.index, run.overrides,
                                            run.config.to_dict())
                flat = {k: run.overrides.get(k) for k in varied}
                callbacks: tuple[Any, ...] = ()
                if self.spec.prune.method != "none":
                    peers = tuple(r for r in study.run_ids() if r != run.run_id)
                    callbacks = (PruneCallback(str(self.store.root / "trainlab.db"),
                                               self.spec.metric, self.spec.direction,
                                               self.spec.prune, self.epochs, self.spec.trials,
                                               peers),)
                info = infos.get(run.run_id)
                planned.append(PlannedRun(run, info["status"] if info else "new",
                                          action_for(info), flat, callbacks))
        self.store.register_sweep(self.sweep.name, self.sweep.model_dump(mode="json"), varied,
                                  sorted(self.members.values(), key=lambda m: m[1]))
        plan = Plan(self.sweep, planned, varied)
        self.on_plan(plan)
        return plan

    # --- results ---------------------------------------------------------------------------

    def tell(self, batch: list[tuple[Study, Trial]]) -> None:
        for study, trial in batch:
            self._settle(trial)
            if trial.state != "incomplete" and trial.handle is not None:
                self._tell(study, trial.handle, trial)

    def _tell(self, study: Study, handle: Any, trial: Trial) -> None:
        state = import_optuna().trial.TrialState
        for step, value in enumerate(self._curve(trial), 1):
            if math.isfinite(value):
                handle.report(value, step)
        if trial.state == "complete":
            study.study.tell(handle, trial.value)
        elif trial.state == "pruned":
            study.study.tell(handle, state=state.PRUNED)
        else:
            study.study.tell(handle, state=state.FAIL)


class _Feed:
    """The search as a :class:`trainlab.execute.pool.RunFeed`: each trial is told as soon as
    its last run is stored, and the next trial is asked when the executor has room, so
    ``--jobs N`` keeps N runs in flight and no trial waits for a slower one."""

    def __init__(self, search: Search) -> None:
        self.search = search
        self.owner: dict[str, tuple[Study, Trial]] = {}  # run id -> its trial, while queued
        self.log: list[tuple[str, int]] = []  # ("ask" | "tell", trial number): for tests

    def track(self, batch: list[tuple[Study, Trial]], plan: Plan) -> None:
        queued = {p.run_id for p in plan.todo}
        for study, trial in batch:
            self.log.append(("ask", trial.number))
            ids = [r.run_id for r in trial.runs if r.run_id in queued]
            self.owner.update((i, (study, trial)) for i in ids)
            if not ids:  # nothing of it to train (finished meanwhile): tell it now
                self._tell(study, trial)

    def finished(self, planned: PlannedRun, outcome: Any) -> None:
        pair = self.owner.pop(planned.run_id, None)
        if pair is not None and not any(t is pair[1] for _, t in self.owner.values()):
            self._tell(*pair)

    def first(self, width: int) -> Plan | None:
        """The opening plan: trials (unfinished ones first) until ``width`` runs."""
        batch: list[tuple[Study, Trial]] = []
        while sum(len(t.runs) for _, t in batch) < width:
            more = self.search.next_batch(1)
            if not more:
                break
            batch += more
        if not batch:
            return None
        plan: Plan | None = self.search.plan(batch)
        assert plan is not None
        self.track(batch, plan)
        while plan is not None and not plan.todo:  # all of it finished meanwhile
            plan = self.more()
        return plan

    def more(self) -> Plan | None:
        from trainlab.engine import interrupt

        if interrupt.stop_requested():
            return None
        batch = self.search.next_batch(1)
        if not batch:
            return None
        plan = self.search.plan(batch)
        self.track(batch, plan)
        return plan

    def _tell(self, study: Study, trial: Trial) -> None:
        self.log.append(("tell", trial.number))
        self.search.tell([(study, trial)])


def run_search(sweep: SweepConfig, store: Store, executor: Executor, width: int,
               observer: Callable[[Plan], SweepObserver] | None = None,
               warn: Callable[[str], None] | None = None,
               trackers: Sequence[Any] = ()) -> SearchResult:
    """Train the search into ``store`` until every study has its trials (or a Ctrl-C), with
    ``width`` runs at once.  An executor that takes a feed (pool, Ray) gets the first
    ``width`` runs' trials and then one trial each time it has room, each trial told as it
    finishes, on one set of workers; others train batches of ``width`` runs' trials.
    ``observer(plan)`` shows the progress; ``trackers`` (``--log``) mirror every trial's runs
    as a sweep's, and are closed at the end."""
    from trainlab.loggers import TrackedStore

    target: Any = store
    if trackers:  # each trial's runs join the mirror's plan as the search plans them
        target = TrackedStore(store, trackers, Plan(sweep, [], []))
    try:
        return _run_search(sweep, store, target, executor, width, observer, warn)
    finally:
        if trackers:
            target.close_trackers()


def _run_search(sweep: SweepConfig, store: Store, target: Any, executor: Executor, width: int,
                observer: Callable[[Plan], SweepObserver] | None,
                warn: Callable[[str], None] | None) -> SearchResult:
    from trainlab.engine import interrupt
    from trainlab.lr.range_test import RangeTestInterrupted

    try:
        search = Search(sweep, store, run_range_tests=True)
    except RangeTestInterrupted:  # Ctrl-C in an LR range test: nothing trained yet
        return SearchResult([], interrupted=True)
    if warn is not None:
        search.warn = warn
    if target is not store:
        search.on_plan = lambda plan: target.plan.update({p.run_id: p for p in plan.runs})
    result = SearchResult(search.studies)
    per_trial = len(search.seeds)
    if getattr(executor, "accepts_feed", False):
        feed = _Feed(search)
        first = feed.first(max(1, width)) if not interrupt.stop_requested() else None
        if first is None:
            return result
        plan = first
        executor.prepare(plan)
        done = executor.execute(plan, target, observer(plan) if observer else None,
                                feed=feed)  # type: ignore[call-arg]
        result.outcomes += done.outcomes
        result.trained += len(done.outcomes)
        result.interrupted, result.log = done.interrupted, feed.log
        return result
    while not interrupt.stop_requested():
        batch = search.next_batch(max(1, math.ceil(width / per_trial)))
        if not batch:
            break
        plan = search.plan(batch)
        executor.prepare(plan)
        done = executor.execute(plan, target, observer(plan) if observer else None)
        result.outcomes += done.outcomes
        result.trained += len(done.outcomes)
        search.tell(batch)
        if done.interrupted:
            result.interrupted = True
            break
    return result


class _StoredConfig:
    """A stored run's id and resolved config, standing in for a RunConfig (a rebuilt trial
    needs no more of its finished runs)."""

    def __init__(self, run_id: str, config: dict[str, Any]) -> None:
        self.run_id, self.config = run_id, config

    def to_dict(self) -> dict[str, Any]:
        return self.config


def _mix(*numbers: int) -> int:
    digest = hashlib.sha256(json.dumps(numbers).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def search(sweep: SweepConfig, store: Store, *, executor: str | None = None,
           jobs: int | None = None, **options: Any) -> SearchResult:
    """The Python API's search: check, pick the executor (``jobs``, ``address``,
    ``cpus_per_run``, ``gpus_per_run`` as for a sweep), train, close."""
    from trainlab.engine.interrupt import graceful_sigint
    from trainlab.execute import make_executor

    Search(sweep, None).check()
    chosen = make_executor(executor, jobs=jobs, **options)
    if hasattr(chosen, "store_root"):
        chosen.store_root = store.root
    try:
        with graceful_sigint():
            return run_search(sweep, store, chosen, int(jobs or getattr(chosen, "jobs", 1) or 1))
    finally:
        chosen.close()
