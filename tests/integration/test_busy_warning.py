"""`trainlab run` and `trainlab lr-find` warn once, before training, on a busy machine (the
load average is made up: the real one on a shared test host is whatever it is)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.engine import machine

runner = CliRunner()
WARNING = "the machine is busy"


@pytest.mark.parametrize(("load", "threads", "warned"), [
    (1.9, 2, True), (0.1, 2, False), (1.4, 1, False), (2.4, 1, True)])
def test_run_warns_once_on_a_busy_machine(tiny: dict, write_config, store_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch, load: float,
                                          threads: int, warned: bool) -> None:
    monkeypatch.setattr(machine, "load_average", lambda: load)
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    tiny["train"] = {**tiny["train"], "threads": threads}
    cfg = write_config(tiny)
    result = runner.invoke(app, ["run", str(cfg), "--store", str(store_dir), "--quiet",
                                 "--no-estimate"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count(WARNING) == (1 if warned else 0), text
    if warned:
        assert ("train.threads=1" in text) == (threads > 1)
        assert "will be flagged" in text
    # A finished sweep trains nothing: no warning.
    again = runner.invoke(app, ["run", str(cfg), "--store", str(store_dir), "--quiet"],
                          catch_exceptions=False)
    assert WARNING not in again.output


def test_lr_find_warns_on_a_busy_machine(tiny: dict, write_config, store_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "load_average", lambda: 4.0)
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    tiny["lr_find"] = {"steps": 12}
    result = runner.invoke(app, ["lr-find", str(write_config(tiny)), "--store",
                                 str(store_dir)], catch_exceptions=False)
    assert " ".join(result.output.split()).count(WARNING) == 1, result.output
