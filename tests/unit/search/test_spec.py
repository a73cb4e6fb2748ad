"""The `search:` section: valid forms parse, every bad input names the field and the forms."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config.schema import SweepConfig
from trainlab.errors import ConfigError
from trainlab.search.spec import parse_search

BASE: dict[str, Any] = {"name": "s", "data": {"name": "digits"}, "model": {"name": "mlp"},
                        "train": {"epochs": 2}}
SPACE = {"optimizer.lr": {"log": [1.0e-4, 1.0]}}


def _sweep(search: dict[str, Any], **extra: Any) -> SweepConfig:
    return SweepConfig.model_validate({**BASE, "search": search, **extra})


def test_the_contracts_example_parses() -> None:
    spec = parse_search(_sweep({
        "method": "tpe", "trials": 40, "metric": "valid/accuracy",
        "space": {"optimizer.lr": {"log": [1.0e-4, 1.0]},
                  "model.hidden_dim": {"int": [32, 512], "step": 32},
                  "optimizer.name": {"choice": ["sgd", "adam"]}},
        "prune": {"method": "asha", "min_epochs": 2}}))
    assert spec.direction == "maximize" and spec.trials == 40
    assert [p.kind for p in spec.space] == ["log", "int", "choice"]
    assert spec.space[1].step == 32 and spec.prune.method == "asha"
    assert parse_search(_sweep({"metric": "valid/loss", "space": SPACE})).direction == "minimize"


BAD = [
    ({"space": {"optimizer.lr": {"float": [1.0, 1.0]}}}, "search.space.optimizer.lr", "empty"),
    ({"space": {"optimizer.lr": {"float": [1.0, 0.1]}}}, "search.space.optimizer.lr",
     "inverted"),
    ({"space": {"optimizer.lr": {"log": [0, 1.0]}}}, "search.space.optimizer.lr", "above 0"),
    ({"space": {"optimizer.lr": {"log": [-1.0, 1.0]}}}, "search.space.optimizer.lr", "above 0"),
    ({"space": {"optimizer.name": {"choice": []}}}, "search.space.optimizer.name",
     "at least one value"),
    ({"space": {"model.widht": {"int": [1, 4]}}}, "model.widht", "not a config field"),
    ({"space": {"modle.width": {"int": [1, 4]}}}, "modle.width", "not a config field"),
    ({"metric": "test/accuracy", "space": SPACE, "prune": "asha"}, "search.prune",
     "not per epoch"),
    ({"trials": 0, "space": SPACE}, "search.trials", "at least 1"),
    ({"trials": -3, "space": SPACE}, "search.trials", "at least 1"),
    ({"space": {}}, "search.space", "at least one"),
    ({"space": {"optimizer.lr": [1, 2]}}, "search.space.optimizer.lr", "{log: [low, high]}"),
    ({"method": "bayes", "space": SPACE}, "search.method", "random, tpe, cmaes, grid"),
    ({"space": SPACE, "prune": {"method": "asha", "min_epochs": 0}},
     "search.prune.min_epochs", "at least 1"),
    ({"space": SPACE, "prune": "hyperbnd"}, "search.prune.method", "hyperband"),
    ({"metric": "valid/acc", "space": SPACE}, "search.metric", "valid/accuracy"),
    ({"method": "grid", "space": SPACE}, "search.space.optimizer.lr", "cannot enumerate"),
    ({"space": {"model.hidden_dim": {"from_range_test": True}}},
     "search.space.model.hidden_dim", "bounds optimizer.lr"),
    ({"space": {"optimizer.lr": {"from_range_test": True, "log": [0.1, 1.0]}}},
     "search.space.optimizer.lr", "(alone)"),
]


@pytest.mark.parametrize(("search", "field", "words"), BAD)
def test_bad_search_input_names_the_field(search: dict[str, Any], field: str,
                                         words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_search(_sweep(search))
    assert caught.value.field == field
    assert field in str(caught.value) and words in str(caught.value)


def test_a_grid_key_cannot_also_be_searched() -> None:
    with pytest.raises(ConfigError, match="also a grid key"):
        parse_search(_sweep({"space": SPACE}, grid={"optimizer.lr": [0.1, 0.2]}))


@pytest.mark.parametrize("command", ["run", "plan"])
def test_bad_search_exits_2_without_traceback_and_creates_no_store(tmp_path: Any,
                                                                  command: str) -> None:
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({**BASE, "search": {
        "space": {"optimizer.lr": {"log": [0.0, 1.0]}}}}))
    result = CliRunner().invoke(app, [command, str(config), "--store", str(tmp_path / "st")])
    assert result.exit_code == 2, result.output
    assert "search.space.optimizer.lr" in result.output and "log range" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "st").exists()
