"""Fuzzed configs: malformed YAML and wrong values for every field give exit code 2 and a
message, never a traceback, and leave the store untouched."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import store_content
from trainlab.cli import app
from trainlab.docs import describe

runner = CliRunner()

BASE: dict[str, Any] = {
    "name": "fuzz",
    "data": {"name": "synthetic", "n_samples": 64, "shape": [4], "n_classes": 3,
             "batch_size": 8},
    "model": {"name": "mlp", "hidden_dim": 4},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 1},
}
# Every (section, field) any component or the train section accepts, plus made-up ones.
FIELDS = sorted({(e["kind"], f["name"]) for e in describe(
    ["data", "model", "optimizer", "schedule", "finetune", "train"]) for f in e["fields"]}
    | {("model", "name"), ("data", "name"), ("optimizer", "name"), ("schedule", "name"),
       ("finetune", "name"), ("model", "nonsense"), ("train", "epoch")})
TOP = ["name", "grid", "runs", "seeds", "data", "model", "train", "colour"]

values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)


@st.composite
def broken_configs(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(BASE)
    kind = draw(st.sampled_from(["field", "field", "top", "grid", "yaml"]))
    if kind == "field":
        section, field = draw(st.sampled_from(FIELDS))
        doc.setdefault(section, {"name": "constant"} if section == "schedule" else {})
        if not isinstance(doc[section], dict):
            doc[section] = {}
        doc[section][field] = draw(values)
    elif kind == "top":
        doc[draw(st.sampled_from(TOP))] = draw(values)
    elif kind == "grid":
        section, field = draw(st.sampled_from(FIELDS))
        doc["grid"] = {f"{section}.{field}": draw(st.lists(values, max_size=3))}
    else:
        text = yaml.safe_dump(doc)
        cut = draw(st.integers(0, len(text)))
        return text[:cut] + draw(st.text(alphabet="{}[]:,-'\"\n\t #&*!|>%@`", max_size=8)) \
            + text[cut:]
    return yaml.safe_dump(doc, allow_unicode=True)


def _fuzz(text: str, store: Path, tmp: Path) -> None:
    config = tmp / "fuzz.yaml"
    config.write_text(text)
    before = store_content(store)
    planned = runner.invoke(app, ["plan", str(config), "--store", str(store)])
    assert planned.exit_code in (0, 2), planned.output  # 1 would be an uncaught exception
    assert "Traceback" not in planned.output
    if planned.exit_code == 2:
        assert planned.output.strip().startswith("error:")
        ran = runner.invoke(app, ["run", str(config), "--store", str(store), "-q"])
        assert ran.exit_code == 2, ran.output
        assert "Traceback" not in ran.output
        assert store_content(store) == before


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "base.yaml").write_text(yaml.safe_dump(BASE))
    done = runner.invoke(app, ["run", str(tmp / "base.yaml"), "--store", str(tmp / "s"), "-q"])
    assert done.exit_code == 0
    return tmp / "s", tmp


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=broken_configs())
def test_fuzzed_configs(fuzz_store: tuple[Path, Path], text: str) -> None:
    _fuzz(text, *fuzz_store)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=broken_configs())
def test_fuzzed_configs_long(fuzz_store: tuple[Path, Path], text: str) -> None:
    """python -m pytest -m slow tests/integration/test_fuzz.py"""
    _fuzz(text, *fuzz_store)


def test_a_model_too_large_to_describe_is_bad_input(fuzz_store: tuple[Path, Path]) -> None:
    """Found by the long fuzz run: 2.7e10 MLP layers raised MemoryError (exit 1) in `plan`."""
    raw = {**BASE, "model": {"name": "mlp", "hidden_dim": 4, "layers": 27050067134}}
    _fuzz(yaml.safe_dump(raw), *fuzz_store)
    store, tmp = fuzz_store
    (tmp / "huge.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["plan", str(tmp / "huge.yaml"), "--store", str(store)])
    assert result.exit_code == 2 and "does not fit in memory" in result.output
