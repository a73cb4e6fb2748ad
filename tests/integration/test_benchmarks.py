"""The benchmarks still run: one round of the overhead comparison on the smallest workload.

Their numbers are not asserted (timings are noise on a shared machine); what is asserted is
that every contender trained the same number of steps and the paired ratios are computed."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repository_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))


def test_overhead_benchmark_measures_every_contender(tmp_path: Path) -> None:
    from benchmarks.overhead import CONTENDERS, measure

    result = measure("digits-mlp", 1, tmp_path)
    assert set(result["step_ms"]) == set(CONTENDERS)
    assert all(v > 0 for v in result["step_ms"].values())
    assert result["engine_vs_plain"] > 0 and result["script_vs_plain"] > 0
    lo, hi = result["engine_vs_plain_range"]
    assert lo == hi == result["engine_vs_plain"]  # one round: one paired ratio


def test_own_code_benchmark_trains_the_same_mlp_from_a_users_file(tmp_path: Path) -> None:
    from benchmarks.overhead import measure_own_code

    result = measure_own_code(2, tmp_path, epochs=1)
    assert result["own_vs_builtin"] > 0 and set(result["step_ms"]) == {"builtin", "own"}
    assert result["same_results"]  # the same network, built by trainlab or by the user


def test_engine_and_plain_take_the_same_steps(tmp_path: Path) -> None:
    from benchmarks.common import WORKLOADS, engine, plain, script

    raw = {**WORKLOADS["digits-mlp"], "train": {"epochs": 1, "seed": 0}}
    counts = []
    for contender in (engine, plain, script):
        steps: list[float] = []
        contender(raw, tmp_path / contender.__name__, steps=steps)
        counts.append(len(steps))
    assert counts[0] == counts[1] == counts[2] > 0, counts


def test_interleaved_overhead_steps_every_contender_once_per_engine_step(tmp_path: Path) -> None:
    from benchmarks.overhead import measure_interleaved

    result = measure_interleaved("digits-mlp", 2, tmp_path)
    assert result["mode"] == "interleaved" and result["rounds"] == 2
    assert result["steps"] > 0
    assert set(result["step_ms"]) == {"engine", "plain", "gathered", "script"}
    assert all(v > 0 for v in result["step_ms"].values())
    for key in ("engine_vs_plain", "script_vs_plain", "engine_vs_gathered",
                "gathered_vs_plain"):
        lo, hi = result[f"{key}_range"]
        assert lo <= result[key] <= hi


def test_interleave_times_each_contender_at_every_engine_step(tmp_path: Path) -> None:
    from benchmarks.common import WORKLOADS, PlainSteps, interleaved

    raw = {**WORKLOADS["digits-mlp"], "train": {"seed": 0}}
    plain_steps = PlainSteps(raw)
    rounds = interleaved(raw, tmp_path, 2, {"plain": plain_steps}, block_s=0.005)
    assert len(rounds) == 2  # the warm-up epoch is left out
    for times in rounds:
        assert len(times["engine"]) == len(times["plain"]) > 0
    # The plain loop went through as many epochs as the engine: warm-up and two rounds.
    assert plain_steps.epoch == 3


def test_interleave_times_whole_blocks_as_on_a_gpu(tmp_path: Path) -> None:
    # On a GPU each block is timed whole (its ends wait for the kernels) and each of its steps
    # counts the block's mean; forced here on the CPU, where the synchronizations are no-ops.
    from benchmarks.common import WORKLOADS, PlainSteps, interleaved

    raw = {**WORKLOADS["digits-mlp"], "train": {"seed": 0}}
    rounds = interleaved(raw, tmp_path, 2, {"plain": PlainSteps(raw)}, block_s=0.005,
                         whole_blocks=True)
    for times in rounds:
        for name in ("engine", "plain"):
            steps = times[name]
            assert len(steps) == len(times["engine"]) > 0 and all(t > 0 for t in steps)
            # Runs of equal values (a block's mean), far fewer distinct values than steps.
            assert len(set(steps)) < len(steps) / 2
            assert sum(steps[i] != steps[i + 1] for i in range(len(steps) - 1)) < len(steps) / 2


def test_interleave_trains_until_enough_plain_seconds_are_measured(tmp_path: Path) -> None:
    from benchmarks.common import WORKLOADS, PlainSteps, interleaved

    raw = {**WORKLOADS["digits-mlp"], "train": {"seed": 0}}
    rounds = interleaved(raw, tmp_path, 1, {"plain": PlainSteps(raw)}, seconds=0.2)
    assert sum(sum(r["plain"]) for r in rounds) >= 0.2
    assert len(rounds) > 1  # one digits epoch of the plain loop is far under 0.2 s


def test_suite_mfu_uses_the_bf16_peak_only_for_fast_options_in_bf16() -> None:
    from benchmarks.suite import add_mfu

    result = {"flops_per_step": 2e9, "fast_options": {"train.precision": "bf16"},
              "step_ms": {"trainlab": 20.0, "trainlab-fast": 10.0, "plain": 40.0}}
    add_mfu(result, {"fp32": 200e9, "bf16": 400e9})
    # 2 GFLOP in 20 ms = 100 GFLOP/s: half the fp32 peak; in 10 ms, half the bf16 peak.
    assert result["mfu"] == {"trainlab": 0.5, "trainlab-fast": 0.5, "plain": 0.25}
    result["fast_options"] = {"train.threads": 1}
    add_mfu(result, {"fp32": 200e9, "bf16": 400e9})
    assert result["mfu"]["trainlab-fast"] == 1.0


def test_suite_interleaves_the_engine_with_a_plain_loop_of_torch_defaults(tmp_path: Path) -> None:
    from benchmarks.common import WORKLOADS
    from benchmarks.suite import _interleaved_vs_plain

    ratio, lo, hi = _interleaved_vs_plain(dict(WORKLOADS["digits-mlp"]), tmp_path)
    assert 0 < lo <= ratio <= hi


def test_suite_tries_bf16_only_where_its_matmuls_beat_fp32() -> None:
    from benchmarks.suite import FAST_CANDIDATES, candidates_for

    # A CPU without native bf16 (measured on a Zen 3 EPYC: 1.3 against 120 GFLOP/s).
    slow = candidates_for({"fp32": 120e9, "bf16": 1.3e9})
    assert slow and all(c.get("train.precision") != "bf16" for c in slow)
    assert candidates_for({"fp32": 190e9, "bf16": 420e9}) == FAST_CANDIDATES  # no GPU here


def test_threads_benchmark_runs_each_setting_and_writes_its_section(tmp_path: Path) -> None:
    from benchmarks.common import kept_sections, write_section
    from benchmarks.threads import SECTION, markdown, measure

    result = measure("digits-mlp", 1, tmp_path, busy=1)
    for phase in ("quiet", "busy"):
        assert set(result[phase]["median"]) == {*map(str, result["fixed"]), "auto"}
        assert len(result[phase]["auto_picked"]) == 1
    assert result["quiet_auto_vs_best"] > 0 and result["busy_speedup"] > 0
    text = markdown(result, {"date": "today", "cpu": "cpu", "torch": "x"}, "cmd")
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n")
    write_section(out, SECTION, text)
    write_section(out, SECTION, text)  # replaced, not appended again
    assert out.read_text().count("## train.threads: auto") == 1
    assert kept_sections(out).startswith(f"<!-- {SECTION}:start -->")


def test_process_benchmark_plain_script_trains_trainlabs_data_and_split() -> None:
    """--mode process: the plain script's data are the engine's (same split, same shapes),
    an epoch of it trains, and the table states both ratios with their ranges."""
    import torch
    from benchmarks.overhead import DIGITS_RUN, plain_class, process_markdown

    from trainlab.components import load_dataset
    from trainlab.config.schema import resolve_run

    config = resolve_run(DIGITS_RUN)
    data = load_dataset(config.data, config.model)
    plain = plain_class()(torch.Generator().manual_seed(0))
    for (x, y), split in zip((plain.train, plain.valid, plain.test),
                             (data.train, data.valid, data.test)):
        assert torch.allclose(x, split.inputs) and torch.equal(y, split.targets)
    loss, accuracy = plain.epoch()
    assert loss > 0 and 0 <= accuracy <= 1 and plain.best_state is not None
    ratio = {"plain_vs_trainlab": 1.0, "range": [0.9, 1.1]}
    text = process_markdown({
        "per_epoch": {**ratio, "epoch_ms": {"trainlab": 30.0, "plain": 30.0},
                      "threads": {"trainlab": [1], "plain": 1}},
        "whole_process": {**ratio, "seconds": {"trainlab": 5.0, "plain": 5.0}},
        "load_before": [1.0], "load_after": [1.0], "cores": 2}, 5)
    assert "| per epoch" in text and "1.000 [0.900-1.100]" in text


def test_loader_benchmark_pairs_every_epoch_with_a_plain_loop_epoch(tmp_path: Path) -> None:
    from benchmarks.loader import DATA, _raw, parity_round

    (tmp_path / "benchdata.py").write_text(DATA)
    raw = _raw(tmp_path, 0, 3, 256, 0.0)
    got = parity_round(raw)
    for side in ("trainlab", "plain", "trainlab_wait", "plain_wait"):
        assert sorted(got[side]) == [1, 2, 3], side
    assert all(got["plain"][e] > got["plain_wait"][e] >= 0 for e in (1, 2, 3))
