"""The CLI end to end, in process: exit codes, messages, and the store left untouched by bad
input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.store import open_store

runner = CliRunner()


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def _db_bytes(store: Path) -> bytes:
    """The store's content, as SQL.

    Not the files' bytes: a finished command's Store can sit in a reference cycle until the
    garbage collector closes its connection, and SQLite checkpoints the WAL into the main file
    on that close, which changes the bytes (not the content) at a moment that depends on what
    other tests allocated.  A read-only connection never checkpoints.
    """
    conn = sqlite3.connect(f"file:{store / 'trainlab.db'}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump()).encode()
    finally:
        conn.close()


def test_run_then_rerun_trains_nothing(tiny: dict, write_config, store_dir: Path) -> None:
    tiny["grid"] = {"model.hidden_dim": [4, 8]}
    cfg = write_config(tiny)
    first = _run("run", str(cfg), "--store", str(store_dir), "--quiet")
    assert first.exit_code == 0, first.output
    assert "2 to train" not in first.output  # --quiet
    runs = open_store(store_dir).runs("tiny")
    assert list(runs["status"]) == ["ok", "ok"]
    second = _run("run", str(cfg), "--store", str(store_dir))
    assert second.exit_code == 0
    assert "0 to train, 2 already done" in second.output
    plan = _run("plan", str(cfg), "--store", str(store_dir), "--json")
    assert [r["action"] for r in json.loads(plan.output)["runs"]] == ["skip", "skip"]


def test_json_outputs(tiny: dict, write_config, store_dir: Path) -> None:
    cfg = write_config(tiny)
    result = _run("run", str(cfg), "--store", str(store_dir), "--json")
    data = json.loads(result.output)
    assert data["runs"][0]["status"] == "ok" and "test_accuracy" in data["runs"][0]["summary"]
    run_id = data["runs"][0]["run_id"]
    shown = json.loads(_run("show", run_id[:6], "--store", str(store_dir), "--json").output)
    assert shown["run_id"] == run_id and shown["config"]["model"]["name"] == "mlp"
    assert any(m["key"] == "valid/loss" for m in shown["metrics"])
    listed = json.loads(_run("ls", "--store", str(store_dir), "--json").output)
    assert listed[0]["run_id"] == run_id
    assert _run("show", run_id, "--store", str(store_dir)).exit_code == 0
    assert _run("ls", "--store", str(store_dir)).exit_code == 0


BAD_INPUTS = [
    ("unknown model", {"model": {"name": "lstmm"}}, "did you mean 'lstm'"),
    ("wrong type", {"train": {"epochs": "many"}}, "train.epochs"),
    ("lr zero", {"optimizer": {"name": "adam", "lr": 0}}, "optimizer.lr"),
    ("batch size", {"data": {"name": "digits", "batch_size": 0}}, "data.batch_size"),
    ("grid key", {"grid": {"model.width": [1]}}, "model.width"),
    ("empty grid", {"grid": {"model.hidden_dim": []}}, "empty"),
    ("model vs data", {"model": {"name": "lstm"}}, "works on lm data"),
    ("no device", {"train": {"device": "cuda:7"}}, "not available"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_config_exits_2_and_leaves_the_store_untouched(
        tiny: dict, write_config, store_dir: Path, case: str, change: dict,
        message: str) -> None:
    good = write_config(tiny, "good.yaml")
    assert _run("run", str(good), "--store", str(store_dir), "-q").exit_code == 0
    before = _db_bytes(store_dir)
    bad = write_config({**tiny, **change}, "bad.yaml")
    result = _run("run", str(bad), "--store", str(store_dir))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert _db_bytes(store_dir) == before


@pytest.mark.parametrize(("args", "message"), [
    (["run", "missing.yaml"], "does not exist"),
    (["run", "--example", "quikstart"], "did you mean 'quickstart'"),
    (["run"], "give a CONFIG file or --example"),
    (["run", "--example", "quickstart", "--set", "optimizer.lr"], "expected key=value"),
    (["ls", "--store", "no-such-store"], "no trainlab store"),
    (["show", "abc", "--store", "no-such-store"], "no trainlab store"),
    (["run", "--bogus-flag"], "No such option"),
])
def test_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_yaml_syntax_error_exits_2(write_config, store_dir: Path) -> None:
    cfg = write_config("name: x\ndata: {name: digits\n")
    result = _run("run", str(cfg), "--store", str(store_dir))
    assert result.exit_code == 2 and "YAML syntax error" in result.output


def test_unwritable_store_exits_2(tiny: dict, write_config, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store directory would go")
    result = _run("run", str(write_config(tiny)), "--store", str(blocker / "store"))
    assert result.exit_code == 2 and "cannot be used" in result.output


def test_diverged_run_exits_1_and_the_sweep_goes_on(tiny: dict, write_config,
                                                    store_dir: Path) -> None:
    tiny["data"]["task"] = "regression"
    tiny["optimizer"] = {"name": "sgd", "lr": 0.01}
    tiny["grid"] = {"optimizer.lr": [1e12, 0.01]}
    result = _run("run", str(write_config(tiny)), "--store", str(store_dir))
    assert result.exit_code == 1
    statuses = list(open_store(store_dir).runs("tiny")["status"])
    assert statuses == ["diverged", "ok"]
    # Rerunning skips both (a diverged run is a result) and still reports the divergence.
    again = _run("run", str(write_config(tiny)), "--store", str(store_dir))
    assert again.exit_code == 1 and "0 to train" in again.output


def test_examples_command() -> None:
    listed = _run("examples")
    assert listed.exit_code == 0 and "quickstart" in listed.output
    shown = _run("examples", "lm-optimizers")
    assert "optimizer.name: [adam, adamw, sgd, momentum]" in shown.output
    assert _run("--version").output.startswith("trainlab ")


def test_a_run_that_raises_is_failed_and_the_sweep_goes_on(
        tiny: dict, write_config, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from trainlab.components.models import MODELS, MLPSpec, build_mlp
    from trainlab.registry import Entry

    class Flaky(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.training and self.calls > 3:
                raise RuntimeError("simulated crash in forward")
            return self.inner(x)

    def build_flaky(spec: MLPSpec, info: Any) -> torch.nn.Module:
        return Flaky(build_mlp(spec, info))

    monkeypatch.setitem(MODELS._entries, "flaky", Entry("flaky", MLPSpec, build_flaky, ""))
    tiny["grid"] = {"model.name": ["flaky", "mlp"]}
    result = _run("run", str(write_config(tiny)), "--store", str(store_dir))
    assert result.exit_code == 1
    runs = open_store(store_dir).runs("tiny")
    assert list(runs["status"]) == ["failed", "ok"]
    assert "simulated crash in forward" in runs["error"].iloc[0]
    assert "simulated crash" in result.output  # the reason is shown, not just "failed"
