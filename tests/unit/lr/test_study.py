"""Range groups and ids, optimizer.lr: auto through the executor, and the follow-up grid."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import trainlab
from trainlab.api import plan as api_plan
from trainlab.config import expand, load_sweep
from trainlab.config.grid import ExpandedRun
from trainlab.config.load import validate_sweep
from trainlab.config.schema import LRFindSpec, resolve_run
from trainlab.errors import ConfigError
from trainlab.lr import study as lr_study
from trainlab.lr.range_test import LRRangeResult
from trainlab.lr.study import (
    RangeOutcome,
    followup_document,
    range_groups,
    range_id,
    write_followup,
)
from trainlab.lr.suggest import suggest
from trainlab.store import open_store

BASE: dict[str, Any] = {
    "name": "auto",
    "data": {"name": "synthetic", "n_samples": 160, "shape": [6], "n_classes": 3,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 8},
    "optimizer": {"name": "sgd", "lr": "auto"},
    "train": {"epochs": 1, "log_every": 4},
    "lr_find": {"steps": 40, "start": 1e-4, "end": 100.0},
}


def _config(**changes: Any):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return resolve_run(raw)


# --- ids and groups ----------------------------------------------------------------------------


def test_range_id_depends_on_what_shapes_the_curve_only() -> None:
    settings = LRFindSpec()
    base = range_id(_config(), settings)
    same = [_config(**{"optimizer.lr": 0.3}), _config(**{"train.epochs": 9}),
            _config(**{"train.seed": 5}), _config(**{"schedule.name": "step"})]
    assert all(range_id(c, settings) == base for c in same)
    assert range_id(_config(), LRFindSpec(suggest="valley", candidates=7)) == base
    different = [_config(**{"optimizer.name": "adam"}), _config(**{"model.hidden_dim": 9}),
                 _config(**{"data.batch_size": 8}), _config(**{"train.clip_grad_norm": 1.0})]
    assert len({range_id(c, settings) for c in different} | {base}) == 5
    assert range_id(_config(), LRFindSpec(steps=50)) != base


def test_run_ids_keep_auto_and_the_ramp_settings() -> None:
    auto = _config()
    assert auto.to_dict()["optimizer"]["lr"] == "auto" and "lr_find" in auto.to_dict()
    assert _config(**{"lr_find.steps": 41}).run_id != auto.run_id
    fixed = _config(**{"optimizer.lr": 0.1})
    assert fixed.lr_find is None and "lr_find" not in fixed.to_dict()
    # The lr_find section does not touch runs that do not use it.
    assert _config(**{"optimizer.lr": 0.1, "lr_find.steps": 41}).run_id == fixed.run_id


def test_one_group_per_optimizer_whatever_the_seeds_and_schedules() -> None:
    sweep = validate_sweep({**BASE, "grid": {"optimizer.name": ["sgd", "adam"],
                                             "schedule.name": ["constant", "step"]},
                            "seeds": [0, 1]}, "test")
    groups = range_groups(expand(sweep), lambda run: LRFindSpec())
    assert [g.label for g in groups] == [{"optimizer.name": "sgd"}, {"optimizer.name": "adam"}]
    assert [len(g.runs) for g in groups] == [4, 4]


# --- lr: auto through trainlab.run --------------------------------------------------------------


def test_auto_runs_one_test_per_group_and_records_the_choice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = lr_study.lr_find

    def counting(config: Any, settings: Any) -> LRRangeResult:
        calls.append(config.optimizer.name)
        return real(config, settings)

    monkeypatch.setattr(lr_study, "lr_find", counting)
    doc = {**BASE, "grid": {"optimizer.name": ["sgd", "adam"]}, "seeds": [0, 1]}
    store = tmp_path / "store"
    result = trainlab.run(doc, store=store)
    assert result.exit_code == 0
    assert sorted(calls) == ["adam", "sgd"]  # once per optimizer, not once per seed
    st = open_store(store)
    runs = st.runs("auto")
    assert list(runs["status"]) == ["ok"] * 4
    planned = api_plan(doc, store=store)
    assert list(runs["run_id"]) == [p.run_id for p in planned.runs]  # ids of the config as written
    assert all(r["config"]["optimizer"]["lr"] == "auto" for r in runs.to_dict("records"))
    ranges = st.lr_ranges("auto")
    assert len(ranges) == 2 and set(ranges["status"]) <= {"ok", "untrusted"}
    by_label = {r["label"]["optimizer.name"]: r for r in ranges.to_dict("records")}
    metrics = st.metrics(list(runs["run_id"]))
    for run in runs.to_dict("records"):
        summary, name = run["summary"], run["config"]["optimizer"]["name"]
        chosen = summary["lr_chosen"]
        assert chosen == pytest.approx(by_label[name]["steepest"])  # the default suggestion
        assert summary["lr_method"] == "steepest"
        assert summary["lr_range_id"] == by_label[name]["range_id"]
        mine = metrics[metrics["run_id"] == run["run_id"]]
        row = mine[mine["key"] == "lr/chosen"]
        assert list(row["step"]) == [0] and row["value"].iloc[0] == pytest.approx(chosen)
        assert mine[mine["key"] == "lr"]["value"].iloc[0] == pytest.approx(chosen)  # trained at it
    # A rerun trains nothing and runs no test; the stored choice stays.
    again = trainlab.run(doc, store=store)
    assert again.exit_code == 0 and not again.outcomes and len(calls) == 2


# A workload whose default 100-step curve is flat noise: LRs far too low to learn anything
# within the ramp, and batches of 4 for a noisy loss (flagged `noisy`, not `no-descent`).
NOISY: dict[str, Any] = {**BASE, "data": {**BASE["data"], "batch_size": 4},
                         "lr_find": {"start": 1e-7, "end": 1e-6, "seed": 0}}


def test_longer_ramp_only_for_the_default_ramp() -> None:
    assert lr_study.longer_ramp(LRFindSpec(smooth=0.8)) == LRFindSpec(smooth=0.8, steps=400)
    # A ramp the user chose is kept, even one equal to the default.
    assert lr_study.longer_ramp(LRFindSpec(steps=100)) is None
    assert lr_study.longer_ramp(LRFindSpec(steps=50)) is None
    assert lr_study.longer_ramp(LRFindSpec(epochs=1.0)) is None


def test_a_noisy_default_ramp_is_run_again_longer_and_both_tests_are_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = lr_study.lr_find

    def counting(config: Any, settings: Any) -> LRRangeResult:
        calls.append(settings.steps)
        return real(config, settings)

    monkeypatch.setattr(lr_study, "lr_find", counting)
    config = resolve_run(copy.deepcopy(NOISY))
    st = open_store(tmp_path / "store")
    choice = lr_study.resolve_auto_lr(config, st, sweep="noisy", label={"x": 1})
    outcome = choice.outcome
    assert outcome is not None and outcome.lengthened_from is not None
    short = outcome.lengthened_from
    assert calls == [100, 400]
    assert [f.code for f in short.result.suggestions.assessment.flags] == ["noisy"]
    assert short.result.planned_steps == 100 and outcome.result.planned_steps == 400
    assert short.group.range_id == range_id(config, config.lr_find)
    assert outcome.group.range_id == range_id(config, LRFindSpec(**NOISY["lr_find"], steps=400))
    assert outcome.group.range_id != short.group.range_id
    assert outcome.note is not None and "100-step default ramp" in outcome.note
    assert "400-step ramp" in outcome.note and outcome.group.range_id in outcome.note
    summary = choice.summary()
    assert summary["lr_range_id"] == outcome.group.range_id and summary["lr_range_steps"] == 400
    assert summary["lr_range_lengthened_from"] == short.group.range_id
    assert choice.lr == outcome.result.suggestions.get("steepest")  # from the longer test
    # Both tests are stored under their own ids; the sweep links the one it used.
    stored = st.lr_range(outcome.group.range_id)
    assert stored is not None and stored["result"]["planned_steps"] == 400
    assert st.lr_range(short.group.range_id) is not None
    assert list(st.lr_ranges("noisy")["range_id"]) == [outcome.group.range_id]
    # Again: both read from the store, no test runs, same choice.
    again = lr_study.resolve_auto_lr(config, st)
    assert calls == [100, 400] and again.lr == choice.lr
    assert again.outcome is not None and again.outcome.reused
    group = lr_study.RangeGroup(short.group.range_id, config.lr_find,
                                [ExpandedRun(1, config)], {})
    found = lr_study.stored_outcome(group, st)
    assert found is not None and found.group.range_id == outcome.group.range_id


def test_an_explicit_ramp_is_kept_even_when_noisy(tmp_path: Path) -> None:
    doc = {**NOISY, "lr_find": {**NOISY["lr_find"], "steps": 100}}
    choice = lr_study.resolve_auto_lr(resolve_run(doc), open_store(tmp_path / "store"))
    assert choice.outcome is not None and choice.outcome.lengthened_from is None
    assert choice.outcome.result.planned_steps == 100 and choice.outcome.note is None
    assert "noisy" in [f.code for f in choice.outcome.result.suggestions.assessment.flags]


def test_a_stored_valley_run_is_not_taken_for_a_steepest_one(tmp_path: Path) -> None:
    # The default suggestion moved from valley to steepest: it is hashed into the run id of an
    # lr: auto run, so a run trained at valley's LR is not "done" for a default config (its id
    # differs; it would otherwise be reported at an LR the config no longer asks for), while a
    # config that still says `suggest: valley` finds it.
    valley_doc = {**BASE, "lr_find": {**BASE["lr_find"], "suggest": "valley"}}
    store = tmp_path / "store"
    assert trainlab.run(valley_doc, store=store).exit_code == 0
    assert open_store(store).runs("auto")["summary"].iloc[0]["lr_method"] == "valley"
    again = api_plan(valley_doc, store=store).runs
    assert [(r.status, r.action) for r in again] == [("ok", "skip")]
    default = api_plan(BASE, store=store).runs
    assert [(r.status, r.action) for r in default] == [("new", "train")]
    assert default[0].run_id != again[0].run_id
    assert default[0].run.config.lr_find is not None
    assert default[0].run.config.lr_find.suggest == "steepest"


def test_auto_with_a_test_that_diverges_at_once_is_a_stored_divergence(tmp_path: Path) -> None:
    doc = {**BASE, "data": {**BASE["data"], "task": "regression"},
           "lr_find": {"start": 1e8, "end": 1e12, "steps": 20}}
    store = tmp_path / "store"
    result = trainlab.run(doc, store=store)
    assert result.exit_code == 1
    st = open_store(store)
    run = st.runs("auto").iloc[0]
    assert run["status"] == "diverged"
    assert "no steepest suggestion" in run["error"] and run["summary"]["lr_chosen"] is None
    assert list(st.lr_ranges("auto")["status"]) == ["diverged"]


def test_a_config_with_auto_cannot_be_trained_unresolved() -> None:
    from trainlab.engine import train

    outcome = train(_config())
    assert outcome.status == "failed" and "optimizer.lr is 'auto'" in (outcome.error or "")


@pytest.mark.parametrize(("change", "message"), [
    ({"lr_find": {"start": 1.0, "end": 0.1}}, "lr_find.end"),
    ({"lr_find": {"steps": 5}}, "lr_find.steps"),
    ({"lr_find": {"suggest": "valey"}}, "did you mean 'valley'"),
    ({"lr_find": {"stpes": 100}}, "did you mean `lr_find.steps`"),
    ({"optimizer": {"name": "sgd", "lr": "automatic"}}, "or auto"),
])
def test_bad_lr_find_settings_are_config_errors(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand(validate_sweep({**BASE, **change}, "test"))


# --- the follow-up grid -----------------------------------------------------------------------


def _fake_outcomes(sweep: Any) -> list[RangeOutcome]:
    """Range outcomes with hand-made curves (no training): a fall around 1e-2 or 1e-4."""
    outcomes = []
    for i, group in enumerate(range_groups(expand(sweep), lambda run: LRFindSpec())):
        lrs = np.geomspace(1e-7, 10, 100)
        centre = 1e-2 if i == 0 else 1e-4
        loss = 0.3 + 2.0 / (1 + np.exp((np.log10(lrs) - np.log10(centre)) / 0.3))
        found, smoothed = suggest(lrs, loss, beta=0.9, stopped="end")
        result = LRRangeResult(list(lrs), list(loss), list(smoothed), float(loss[0]), "end",
                               100, 100, 1.0, LRFindSpec().model_dump(), found)
        outcomes.append(RangeOutcome(group, result, False))
    return outcomes


def test_followup_grid_loads_and_expands_to_candidates_times_schedules(tmp_path: Path) -> None:
    sweep = load_sweep(example="lr-range")
    outcomes = _fake_outcomes(sweep)
    doc, skipped = followup_document(sweep, outcomes)
    path = tmp_path / "followup.yaml"
    assert write_followup(doc, path, outcomes) == 16 and not skipped
    followup = load_sweep(path)  # what `trainlab run followup.yaml` reads, unchanged
    runs = expand(followup)
    assert len(runs) == 16 and followup.name == "lr-range-followup"
    seen = {(r.config.optimizer.name, r.config.optimizer.lr, r.config.schedule.name)
            for r in runs}
    for outcome in outcomes:
        name = outcome.group.label["optimizer.name"]
        for lr in outcome.result.suggestions.candidates or []:
            for schedule in ("constant", "step"):
                assert (name, float(f"{lr:.3g}"), schedule) in seen
    step = next(r for r in runs if r.config.schedule.name == "step").config.schedule
    assert step.step_size == 5 and step.gamma == 0.1  # the example's StepLR settings
    assert "# Follow-up of sweep 'lr-range'" in path.read_text()
    assert yaml.safe_load(path.read_text())["runs"][0] == {
        "optimizer.name": "sgd", "optimizer.lr": runs[0].config.optimizer.lr,
        "schedule.name": "constant"}


def test_followup_defaults_step_size_and_checks_schedule_names(tmp_path: Path) -> None:
    sweep = validate_sweep({**BASE, "train": {"epochs": 9}}, "test")
    outcomes = _fake_outcomes(sweep)
    doc, _ = followup_document(sweep, outcomes, ["step", "cosine"])
    assert doc["schedule"] == {"name": "step", "step_size": 3, "gamma": 0.1}
    assert write_followup(doc, tmp_path / "f.yaml", outcomes) == 8
    with pytest.raises(ConfigError, match="did you mean 'step'"):
        followup_document(sweep, outcomes, ["stepp"])
