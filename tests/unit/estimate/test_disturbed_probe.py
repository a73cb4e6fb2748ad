"""The calibration probe carries the contention flag an epoch records: readings made up so that
its threads waited for a core (or did not), no busy machine needed."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config.schema import resolve_run
from trainlab.engine import machine
from trainlab.engine.contention import CPU_WAIT_MAX, Reading
from trainlab.estimate import estimate_run

RAW: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 128, "shape": [8], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 8, "layers": 1},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 1},
}


def fake_readings(monkeypatch: pytest.MonkeyPatch, wait_share: float) -> list[Reading]:
    """Replace the machine reading: each reading after the first adds 1 ms on a core per thread
    and ``wait_share`` of the runnable time waiting for one.  Returns the readings taken."""
    taken: list[Reading] = []
    counter = itertools.count()

    def read() -> Reading:
        k = next(counter)
        wait = round(1_000_000 * wait_share / (1 - wait_share))
        reading = Reading(wall=time.perf_counter(), cpu=time.process_time(),
                          threads={1: (k * 1_000_000, k * wait)}, stat=(0, 100 * k), load=0.5)
        taken.append(reading)
        return reading

    monkeypatch.setattr(machine, "read", read)
    return taken


def test_a_disturbed_probe_flags_its_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = fake_readings(monkeypatch, 0.5)
    estimate = estimate_run(resolve_run(RAW))
    assert len(taken) == 2  # one reading before the timed steps, one after: nothing more
    assert estimate.method == "probe" and estimate.disturbed is True
    assert estimate.cpu_wait == pytest.approx(0.5) and estimate.load == 0.5
    assert estimate.steal == 0.0
    stored = json.loads(json.dumps(estimate.to_dict()))  # as set_estimates stores it
    assert stored["disturbed"] is True and stored["cpu_wait"] == pytest.approx(0.5)


def test_a_quiet_probe_is_not_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_readings(monkeypatch, CPU_WAIT_MAX / 2)
    estimate = estimate_run(resolve_run(RAW))
    assert estimate.disturbed is False
    assert estimate.cpu_wait == pytest.approx(CPU_WAIT_MAX / 2, rel=1e-3)
    flops = estimate_run(resolve_run(RAW), calibrate=False)  # no probe, nothing timed
    assert flops.disturbed is False and flops.cpu_wait is None


@pytest.mark.parametrize("wait_share", [0.5, 0.01])
def test_estimate_command_marks_a_disturbed_prediction(monkeypatch: pytest.MonkeyPatch,
                                                       write_config: Any, tiny: dict,
                                                       wait_share: float) -> None:
    fake_readings(monkeypatch, wait_share)
    cfg: Path = write_config(tiny)
    busy = wait_share > CPU_WAIT_MAX
    runner = CliRunner()
    shown = runner.invoke(app, ["estimate", str(cfg), "--json"])
    assert shown.exit_code == 0, shown.output
    assert [r["disturbed"] for r in json.loads(shown.output)["runs"]] == [busy]
    table = runner.invoke(app, ["estimate", str(cfg)])
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if line.strip("│ ").startswith("1 "))
    assert row.count("†") == (3 if busy else 0)  # ms/step, s/epoch and run
    legend = [line for line in table.output.splitlines() if line.startswith("†:")]
    assert len(legend) == (1 if busy else 0)
    assert not busy or "calibration probe" in legend[0]
