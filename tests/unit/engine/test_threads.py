"""``train.threads: auto``: the decision with made-up step times (no speed dependence), and the
run, probe and range test around it with the machine readings and the choice replaced."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainlab.config.schema import resolve_run
from trainlab.engine import threads, train
from trainlab.engine.bench import run_threads
from trainlab.engine.threads import ThreadChoice
from trainlab.estimate import estimate_run
from trainlab.estimate.probe import probe
from trainlab.records import NullSink

RAW: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 128, "shape": [8], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 8, "dropout": 0.5},
    "optimizer": {"name": "adam", "lr": 1e-2},
    "train": {"epochs": 2, "log_every": 2},
}


def _cfg(**train: Any):
    raw = copy.deepcopy(RAW)
    raw["train"].update(train)
    return resolve_run(raw)


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    threads.forget()
    yield
    threads.forget()


def fake_steps(per_count: dict[int, float], switch: float = 0.0
               ) -> tuple[Callable[[int], float], list[int]]:
    """A step function taking ``per_count[n]`` seconds at n threads (``switch`` more for the
    first step after a change of count), and the counts it was called with."""
    calls: list[int] = []

    def step(n: int) -> float:
        first = bool(calls) and calls[-1] != n
        calls.append(n)
        return per_count[n] + (switch if first else 0.0)

    return step, calls


# --- the decision --------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "counts"), [
    (1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]),
])
def test_candidates_are_one_the_powers_of_two_and_the_limit(limit: int, counts: list[int]
                                                            ) -> None:
    assert threads.candidates(limit) == counts


def test_the_fastest_count_is_picked() -> None:
    step, calls = fake_steps({1: 0.010, 2: 0.006, 4: 0.004, 8: 0.005})
    choice = threads.choose(step, 8)
    assert (choice.threads, choice.reason) == (4, "fastest")
    assert choice.step_s[4] == pytest.approx(0.004) and set(choice.step_s) == {1, 2, 4, 8}
    # Bounded by the budget: two rounds of about BUDGET_S, each slot's last step overshooting.
    assert sum({1: 0.010, 2: 0.006, 4: 0.004, 8: 0.005}[n] for n in calls) < 2 * threads.BUDGET_S


def test_more_threads_must_pay_for_themselves() -> None:
    # Two threads 2 % faster than one: inside the margin, so one thread (a core left free).
    step, _ = fake_steps({1: 0.0100, 2: 0.0098})
    assert threads.choose(step, 2).threads == 1
    step, _ = fake_steps({1: 0.0100, 2: 0.0090})  # 10 % faster: worth it
    assert threads.choose(step, 2).threads == 2


def test_a_tiny_model_gets_one_thread_without_timing_the_others() -> None:
    step, calls = fake_steps({1: threads.TINY_STEP_S / 2, 2: threads.TINY_STEP_S / 4})
    choice = threads.choose(step, 2)
    assert (choice.threads, choice.reason) == (1, "tiny")
    assert set(calls) == {1} and len(calls) == 5  # two warm-up steps, three timed


def test_a_count_slowed_by_other_work_is_dropped_after_one_step() -> None:
    # One other process on a 2-core machine: two threads wait at every barrier (20x here).
    step, calls = fake_steps({1: 0.002, 2: 0.040})
    choice = threads.choose(step, 2)
    assert (choice.threads, choice.reason) == (1, "fastest")
    assert calls.count(2) == 1  # the first step at two threads ruled them out


def test_a_large_model_gets_one_round() -> None:
    step, calls = fake_steps({1: 10.0, 2: 5.2, 4: 2.8})
    choice = threads.choose(step, 4)
    assert choice.threads == 4
    # warm-up 2 + 1 timed + one per count in the round (+ a first step at each new count)
    assert len(calls) == 2 + 1 + 1 + 2 * 2


def test_one_thread_to_give_or_a_busy_machine_need_no_timing() -> None:
    assert threads.before_timing(1, 0.0, cores=8) == ThreadChoice(1, "one thread")
    busy = threads.before_timing(2, 1.0, cores=2)  # one other runnable thread, two cores
    assert busy is not None and (busy.threads, busy.reason, busy.free_cores) == (1, "busy", 1)
    assert threads.before_timing(2, 0.0, cores=2) is None
    assert threads.before_timing(8, 3.0, cores=8) is None
    assert threads.room(8, 3.0, cores=8) == 5  # the others' cores are not offered
    assert threads.room(4, None, cores=8) == 4  # unknown (not Linux): the limit


def test_a_choice_is_remembered_per_setup_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    a, other_lr, other_model = _cfg(), resolve_run({**RAW, "optimizer": {"name": "adam",
                                                                        "lr": 0.5}}), \
        resolve_run({**RAW, "model": {"name": "mlp", "hidden_dim": 16}})
    threads.remember(a, 2, ThreadChoice(2, "fastest", {1: 2.0, 2: 1.0}, 0.3))
    hit = threads.recall(other_lr, 2)  # the LR does not change a step's time
    assert hit is not None and hit.threads == 2 and hit.shared and hit.seconds == 0.0
    assert threads.recall(other_model, 2) is None
    assert threads.recall(a, 2, most=1).threads == 1  # never above the cores free now
    assert threads.recall(a, 4) is None  # another ceiling (--jobs): another choice
    # A stack of N models steps N times the work: its choice is kept apart (scope).
    assert threads.recall(a, 2, scope=" stack of 16") is None
    threads.remember(a, 2, ThreadChoice(1, "fastest", {1: 1.0, 2: 1.5}, 0.2),
                     scope=" stack of 16")
    assert threads.recall(other_lr, 2, scope=" stack of 16").threads == 1
    assert threads.recall(a, 2).threads == 2  # the solo choice is untouched
    monkeypatch.setattr(threads, "FRESH_S", -1.0)
    assert threads.recall(a, 2) is None  # old: measured again


# --- around it: the run, the probe and the range test ---------------------------------------


def _pretend(monkeypatch: pytest.MonkeyPatch, *, others: float = 0.0, ceiling: int = 2,
             pick: int | None = None) -> list[int]:
    """Two threads to give and no other work, whatever the machine; with ``pick``, the timing
    steps the real model a few times and then says ``pick``.  Returns the counts stepped."""
    stepped: list[int] = []
    monkeypatch.setattr(threads, "ceiling", lambda: ceiling)
    monkeypatch.setattr(threads, "others_running", lambda *a, **k: others)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    if pick is not None:
        def choose(step: Callable[[int], float], limit: int, **kwargs: Any) -> ThreadChoice:
            for n in (1, 1, limit, limit):
                step(n)
                stepped.append(n)
            return ThreadChoice(pick, "fastest", {1: 2e-3, limit: 1e-3},
                                free_cores=kwargs.get("free_cores"))

        monkeypatch.setattr(threads, "choose", choose)
    return stepped


def test_a_set_count_is_kept_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend(monkeypatch, pick=1)
    assert run_threads(_cfg(threads=3)) == ThreadChoice(3, "set")
    outcome = train(_cfg(threads=2))
    assert outcome.summary["speed"]["threads"] == 2
    assert outcome.summary["speed"]["threads_auto"] is None


def test_auto_trains_with_the_pick_and_records_it(monkeypatch: pytest.MonkeyPatch) -> None:
    stepped = _pretend(monkeypatch, pick=2)
    before = torch.get_num_threads()
    sink = NullSink()
    outcome = train(_cfg(), sink=sink)
    assert outcome.status == "ok", outcome.error
    assert stepped  # the timing ran on a model of its own
    speed = outcome.summary["speed"]
    assert speed["threads"] == 2
    assert speed["threads_auto"]["reason"] == "fastest"
    assert speed["threads_auto"]["step_s"] == {"1": 2e-3, "2": 1e-3}
    assert not speed["threads_auto"]["shared"]
    recorded = [r for r in sink.records if r.key == "perf/threads"]
    assert [(r.step, r.epoch, r.value) for r in recorded] == [(0, 0, 2.0)]
    assert torch.get_num_threads() == before  # the caller's count comes back


def test_choosing_moves_neither_the_runs_rng_nor_its_results(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The same run with the timing done inside it (a dropout model stepped under the fork) and
    with the answer already known: identical results; the caller's RNG is untouched."""
    stepped = _pretend(monkeypatch, pick=1)
    state = torch.get_rng_state()
    run_threads(_cfg())
    assert stepped and torch.equal(torch.get_rng_state(), state)
    threads.forget()
    timed_inside = train(_cfg())
    assert timed_inside.summary["speed"]["threads_auto"]["shared"] is False
    known = train(_cfg())
    assert known.summary["speed"]["threads_auto"]["shared"] is True
    assert timed_inside.summary["test_loss"] == known.summary["test_loss"]
    assert timed_inside.summary["best_valid_loss"] == known.summary["best_valid_loss"]


def test_a_busy_machine_gets_one_thread_without_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    stepped = _pretend(monkeypatch, others=1.0, pick=2)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    outcome = train(_cfg())
    assert outcome.summary["speed"]["threads"] == 1
    assert outcome.summary["speed"]["threads_auto"]["reason"] == "busy"
    assert not stepped


def test_one_thread_to_give_means_one(monkeypatch: pytest.MonkeyPatch) -> None:
    stepped = _pretend(monkeypatch, ceiling=1, pick=2)
    assert run_threads(_cfg()).reason == "one thread" and not stepped


def test_accelerator_and_torchrun_ranks_keep_the_process_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stepped = _pretend(monkeypatch, pick=2)
    count = torch.get_num_threads()
    assert run_threads(_cfg(), distributed=True) == ThreadChoice(count, "distributed")
    module = importlib.import_module("trainlab.engine.bench")
    monkeypatch.setattr(module, "resolve_device", lambda name: torch.device("cuda"))
    assert run_threads(_cfg()) == ThreadChoice(count, "accelerator")
    assert not stepped


def test_the_estimates_probe_picks_for_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """One timing per setup: the estimate's probe picks (on its own model) and times at the
    pick; the run then reuses the answer."""
    stepped = _pretend(monkeypatch, pick=2)
    estimate = estimate_run(_cfg())
    assert estimate.threads == 2
    assert len(stepped) == 4
    outcome = train(_cfg())
    assert outcome.summary["speed"]["threads"] == 2
    assert outcome.summary["speed"]["threads_auto"]["shared"] is True
    assert len(stepped) == 4  # nothing timed again
    assert probe(_cfg(), max_steps=3, budget_s=0.0).threads_reason == "fastest"
    # The load is checked afresh by every run: busy now, one thread, whatever was picked.
    monkeypatch.setattr(threads, "others_running", lambda *a, **k: 7.0)
    assert train(_cfg()).summary["speed"]["threads_auto"]["reason"] == "busy"


def test_the_range_test_runs_at_the_runs_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.lr import range_test

    _pretend(monkeypatch, pick=2)
    seen: list[int] = []
    real = range_test._lr_find

    def spy(config: Any, settings: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(config, settings)

    monkeypatch.setattr(range_test, "_lr_find", spy)
    before = torch.get_num_threads()
    cfg = resolve_run({**RAW, "optimizer": {"name": "adam", "lr": "auto"},
                       "lr_find": {"steps": 10}})
    range_test.lr_find(cfg)
    assert seen == [2] and torch.get_num_threads() == before


def test_a_bad_thread_count_exits_2_naming_the_field(tiny: dict, write_config: Any) -> None:
    from typer.testing import CliRunner

    from trainlab.cli import app

    for bad in ("0", "many"):
        result = CliRunner().invoke(app, ["plan", str(write_config(tiny)), "--set",
                                          f"train.threads={bad}"])
        assert result.exit_code == 2, result.output
        assert "`train.threads` must be auto or a number of threads" in result.output
