"""The five studies shipped at their real sizes (hub data and models), run here on local
stand-ins in the hub's formats (tests/standins.py): a format change breaks a test, not a user's
GPU hour.

The default suite checks that every study config validates and expands at its real size, that
`trainlab examples` lists it with what it needs, and trains one run of each on the stand-ins;
the slow suite runs each whole study through the CLI (`run`, `lr-find --emit-grid`, `--nproc 2
--log wandb`) and reports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests import standins
from trainlab.cli import app
from trainlab.config.grid import expand
from trainlab.config.load import example_names, example_text, load_sweep, validate_sweep
from trainlab.examples import STUDIES
from trainlab.store import open_store

pytest.importorskip("datasets", reason="the studies need trainlab[hf]")
pytest.importorskip("transformers", reason="the studies need trainlab[hf]")

runner = CliRunner()

# Study -> (runs at its real size, the run trained in the default suite: its 1-based number).
# Each chosen run touches what is most format-sensitive: CoLA with adapters (GLUE test labels
# -1), the GPT decoder on WikiText's BPE windows, CIFAR-10's `img` column, lr: auto's range
# test on MNIST, prompt tuning on a GPT-2 without a pad token.
RUNS = {"glue-finetune": (20, 12), "wikitext-lm": (12, 5), "mlp-labs": (20, 11),
        "mnist-lr-range": (2, 1), "agnews-peft": (3, 3)}


@pytest.fixture(scope="session")
def standin_dirs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Build the stand-ins a study needs, once per session: ``get(doc) -> {name: folder}``."""
    root = tmp_path_factory.mktemp("standins")
    built: dict[str, str] = {}

    def get(doc: dict[str, Any]) -> dict[str, str]:
        missing = standins.needed(doc) - set(built)
        built.update(standins.build_standins(root, missing))
        return built

    return get


def _study_doc(name: str) -> dict[str, Any]:
    doc = yaml.safe_load(example_text(name))
    assert isinstance(doc, dict)
    return doc


def _relocated(name: str, standin_dirs: Any, tmp_path: Path) -> Path:
    doc = _study_doc(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(standins.relocate(doc, standin_dirs(doc),
                                                     standins.SIZES[name]), sort_keys=False))
    return path


def test_every_study_is_listed_with_what_it_needs() -> None:
    assert set(STUDIES) == set(RUNS) and set(STUDIES) <= set(example_names())
    result = runner.invoke(app, ["examples", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    for name, study in STUDIES.items():
        row = rows[name]
        assert row["kind"] == "study" and row["needs"] == study.needs and row["commands"]
        assert "network" in row["needs"] and rows[study.offline]["kind"] == "offline"
        assert any(f"--example {name}" in c for c in row["commands"])
    assert rows["quickstart"]["kind"] == "offline"
    listed = runner.invoke(app, ["examples"])
    assert listed.exit_code == 0 and "trainlab[hf,wandb]" in "".join(listed.output.split())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_study_validates_and_expands_at_its_real_size(name: str) -> None:
    runs = expand(load_sweep(example=name))
    assert len(runs) == RUNS[name][0]
    hub = set(standins.HUB_IDS)
    for run in runs:  # the real data and models: hub ids, never a local path
        assert run.config.data.path in hub  # type: ignore[attr-defined]
        model_path = getattr(run.config.model, "path", None)
        assert model_path is None or model_path in hub
    flat = [r.config.flat() for r in runs]
    if name == "glue-finetune":
        assert [f["data.config"] for f in flat].count("cola") == 10
        assert {f["finetune.name"] for f in flat} == {"full", "adapter", "discriminative-lr",
                                                     "gradual-unfreeze"}
    if name == "wikitext-lm":
        assert {f["data.max_length"] for f in flat} == {256}
        assert flat[0]["data.config"] == "wikitext-2-raw-v1"
    if name == "mlp-labs":
        assert [f["data.path"] for f in flat].count("uoft-cs/cifar10") == 10
    if name == "agnews-peft":
        assert [f["finetune.name"] for f in flat] == ["lora", "adapter", "prompt-tuning"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_one_run_of_a_study_trains_on_hub_format_standins(name: str, standin_dirs: Any,
                                                          tmp_path: Path) -> None:
    from trainlab.engine import train
    from trainlab.records import NullSink

    path = _relocated(name, standin_dirs, tmp_path)
    # Only locations and sizes changed: the same runs as at the real size.
    sweep = validate_sweep(yaml.safe_load(path.read_text()), str(path)).with_root(tmp_path)
    runs = expand(sweep)
    assert len(runs) == RUNS[name][0]
    config = runs[RUNS[name][1] - 1].config
    if name == "mnist-lr-range":  # lr: auto: the range test picks the LR, as `run` does
        from trainlab.lr.study import resolve_auto_lr

        config = resolve_auto_lr(config).apply(config)
    sink = NullSink()
    outcome = train(config, sink=sink)
    assert outcome.status == "ok", outcome.error
    keys = {r.key for r in sink.records}
    assert {"train/loss", "valid/loss", "test/loss"} <= keys
    assert ("test/perplexity" if name == "wikitext-lm" else "test/accuracy") in keys


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_whole_study_runs_and_reports_on_the_standins(
        name: str, standin_dirs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a user runs it (the commands `trainlab examples` lists), on the stand-ins: exit 0,
    every run ok, and a report."""
    path = _relocated(name, standin_dirs, tmp_path)
    store = tmp_path / "store"
    args = ["run", str(path), "--store", str(store), "-q"]
    sweep = name
    if name == "mnist-lr-range":
        followup = tmp_path / "followup.yaml"
        found = runner.invoke(app, ["lr-find", str(path), "--store", str(store),
                                    "--emit-grid", str(followup)])
        assert found.exit_code == 0, found.output
        args[1], sweep = str(followup), f"{name}-followup"
    if name == "agnews-peft":
        args += ["--nproc", "2"]
        if _has("wandb"):
            monkeypatch.setenv("WANDB_MODE", "offline")
            monkeypatch.setenv("WANDB_SILENT", "true")
            args += ["--log", "wandb"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = open_store(store).runs(sweep)
    expected = 16 if name == "mnist-lr-range" else RUNS[name][0]
    assert len(runs) == expected and set(runs["status"]) == {"ok"}
    report = runner.invoke(app, ["report", "--store", str(store), "--sweep", sweep,
                                 "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "Traceback" not in result.output + report.output


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_every_study_has_a_generated_tutorial_page() -> None:
    """docs/tutorials/<study>.md, written by `python -m docs.gen_tutorials` from a real run:
    it includes the shipped config (never a copy), says the numbers are the stand-in's, and its
    figures exist and stay small."""
    root = Path(__file__).resolve().parents[2]
    nav = (root / "mkdocs.yml").read_text()
    for name in STUDIES:
        page = root / "docs" / "tutorials" / f"{name}.md"
        text = page.read_text()
        assert "Generated by `python -m docs.gen_tutorials`" in text
        assert f'--8<-- "src/trainlab/examples/{name}.yaml"' in text
        assert "small stand-in" in text and f"tutorials/{name}.md" in nav
        figures = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines()
                   if line.startswith("![")]
        assert figures
        for figure in figures:
            size = (page.parent / figure).stat().st_size
            assert 0 < size < 200_000, (figure, size)
