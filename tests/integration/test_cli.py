"""The CLI end to end, in process: exit codes, messages, and the store left untouched by bad
input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import store_content
from trainlab.cli import app
from trainlab.store import open_store

runner = CliRunner()


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


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
    human = _run("show", run_id, "--store", str(store_dir))
    assert human.exit_code == 0
    # Tables a person reads, not the JSON (that is --json's): config sections as field=value,
    # the summary a row per key with bytes in MiB, the cumulative column said to be one.
    assert '"config"' not in human.output and "{" not in human.output
    assert "hidden_dim=" in human.output and "test_accuracy" in human.output
    assert "MiB" in human.output and "T cum (s)" in human.output
    assert "time/train, cumulative" in " ".join(human.output.split())
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
    before = store_content(store_dir)
    bad = write_config({**tiny, **change}, "bad.yaml")
    result = _run("run", str(bad), "--store", str(store_dir))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert store_content(store_dir) == before


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
    # Brackets are text, not rich markup: the finetune example needs the hf extra.
    assert "trainlab[hf,examples]" in "".join(listed.output.split()).replace("│", "")
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


def test_estimate_command_and_stored_estimates(tiny: dict, write_config,
                                               store_dir: Path) -> None:
    tiny["grid"] = {"model.hidden_dim": [4, 8]}
    cfg = write_config(tiny)
    shown = _run("estimate", str(cfg), "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert [r["method"] for r in data["runs"]] == ["probe", "probe"]
    assert data["total_run_s"] == pytest.approx(sum(r["run_s"] for r in data["runs"]))
    assert data["runs"][0]["params_total"] == 8 * 4 + 4 + 4 * 3 + 3
    table = _run("estimate", str(cfg), "--no-calibrate")
    assert table.exit_code == 0 and "flops method" in table.output
    ran = _run("run", str(cfg), "--store", str(store_dir), "-q")
    assert ran.exit_code == 0
    runs = open_store(store_dir).runs("tiny")
    assert all(e["method"] == "probe" and e["peak_bytes"] > 0 for e in runs["estimate"])


def test_fit_memory_refuses_runs_that_do_not_fit(tiny: dict, write_config,
                                                 store_dir: Path) -> None:
    cfg = write_config(tiny)
    result = _run("run", str(cfg), "--store", str(store_dir), "--fit-memory", "10MB")
    assert result.exit_code == 2
    assert "will not fit" in result.output and "predicted peak" in result.output
    assert not (store_dir / "trainlab.db").exists() or open_store(store_dir).runs().empty
    assert _run("estimate", str(cfg), "--fit-memory", "1TiB").exit_code == 0
    bad = _run("estimate", str(cfg), "--fit-memory", "plenty")
    assert bad.exit_code == 2 and "is not a size" in bad.output


@pytest.mark.parametrize("bf16_gflops", [1.3, 400.0])
def test_run_warns_when_the_precision_is_slower_than_fp32_on_this_cpu(
        tiny: dict, write_config, store_dir: Path, monkeypatch: pytest.MonkeyPatch,
        bf16_gflops: float) -> None:
    import torch

    from trainlab.engine import flops

    # The peaks this process would measure (cached per device, threads and dtype): a CPU
    # without native bf16, then one with it.
    threads = torch.get_num_threads()
    monkeypatch.setattr(flops, "_PEAKS", {("cpu", threads, "torch.float32"): 120e9,
                                          ("cpu", threads, "torch.bfloat16"): bf16_gflops * 1e9})
    tiny["train"] = {**tiny.get("train", {}), "precision": "bf16", "device": "cpu"}
    result = _run("run", str(write_config(tiny)), "--store", str(store_dir), "--quiet")
    assert result.exit_code == 0, result.output
    warned = "warning: `train.precision: bf16` on this CPU: matmuls measured 1.3 GFLOP/s"
    assert (warned in " ".join(result.output.split())) == (bf16_gflops < 120)


def test_bad_config_creates_no_store_and_names_every_error(
        tiny: dict, write_config, store_dir: Path) -> None:
    # Two typos in the grid: both reported by one run; no store folder left behind.
    bad = write_config({**tiny, "grid": {"model.hiden_dim": [8], "optimizer.nme": ["sgd"]}})
    result = _run("run", str(bad), "--store", str(store_dir))
    assert result.exit_code == 2, result.output
    assert "2 errors" in result.output and "hiden_dim" in result.output
    assert "optimizer.nme" in result.output and "Traceback" not in result.output
    assert not store_dir.exists()
    # An error found only when the run is built (the model does not fit the data) as well.
    result = _run("run", str(write_config({**tiny, "model": {"name": "lstm"}})),
                  "--store", str(store_dir))
    assert result.exit_code == 2 and "works on lm data" in result.output
    assert not store_dir.exists()


def test_plan_says_what_the_sweep_expanded_to(tiny: dict, write_config,
                                              store_dir: Path) -> None:
    tiny.update(grid={"model.hidden_dim": [4, 8]}, cross=True,
                runs=[{}, {"optimizer.name": "sgd"}, {"optimizer.name": "adamw"}])
    cfg = write_config(tiny)
    result = _run("plan", str(cfg), "--store", str(store_dir))
    assert result.exit_code == 0, result.output
    assert "2 grid point(s) x 3 explicit run(s) (cross: true) = 6 runs" in result.output
    data = json.loads(_run("plan", str(cfg), "--store", str(store_dir), "--json").output)
    assert len(data["runs"]) == 6 and "cross: true" in data["expansion"]


def test_a_large_plan_shows_a_screenful_and_checks_each_setup_once(tiny: dict, write_config,
                                                                   store_dir: Path) -> None:
    """60 runs (3 widths x 4 LRs x 5 seeds): the table lists the first and last runs with a
    count between and a tally; --json lists all.  A bad value found in one setup is reported
    for every run (seed) that has it, though the setup was built once."""
    tiny.update(grid={"model.hidden_dim": [4, 8, 16], "optimizer.lr": [0.1, 0.01, 0.001, 1e-4]},
                seeds=[0, 1, 2, 3, 4])
    cfg = write_config(tiny)
    result = _run("plan", str(cfg), "--store", str(store_dir))
    assert result.exit_code == 0, result.output
    assert "20 more" in result.output and "60 new, train" in result.output
    data = json.loads(_run("plan", str(cfg), "--store", str(store_dir), "--json").output)
    assert len(data["runs"]) == 60
    tiny.update(grid={"model.hidden_dim": [4]}, seeds=[0, 1, 2])
    tiny["train"] = {**tiny.get("train", {}), "monitor": "valid/perplexity"}
    bad = _run("plan", str(write_config(tiny)), "--store", str(store_dir))
    assert bad.exit_code == 2, bad.output
    assert "train.monitor" in bad.output and "runs 1, 2, 3" in " ".join(bad.output.split())
