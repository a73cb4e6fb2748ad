from __future__ import annotations

import copy
from typing import Any

import pytest

from trainlab.config import expand, load_sweep, varied_keys
from trainlab.config.load import apply_overrides, validate_sweep
from trainlab.config.schema import resolve_run
from trainlab.errors import ConfigError


def _sweep(doc: dict[str, Any], sets: list[str] | None = None):
    return validate_sweep(apply_overrides(doc, sets or []), "test")


def _set(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return doc


# Each bad input must raise ConfigError whose message names the field and the bad value.
BAD = [
    ("unknown model", "model.name", "lstmm", ["model.name", "lstmm", "did you mean 'lstm'"]),
    ("unknown dataset", "data.name", "digts", ["data.name", "digts", "digits"]),
    ("unknown optimizer", "optimizer.name", "adamm", ["optimizer.name", "adamm", "adam"]),
    ("unknown schedule", "schedule.name", "stepp", ["schedule.name", "stepp", "step"]),
    ("lr zero", "optimizer.lr", 0, ["optimizer.lr", "greater than 0", "0"]),
    ("lr negative", "optimizer.lr", -0.1, ["optimizer.lr", "-0.1"]),
    ("lr not a number", "optimizer.lr", "fast", ["optimizer.lr", "fast"]),
    ("batch size zero", "data.batch_size", 0, ["data.batch_size", "0"]),
    ("batch size negative", "data.batch_size", -4, ["data.batch_size", "-4"]),
    ("epochs wrong type", "train.epochs", "ten", ["train.epochs", "ten"]),
    ("unknown model field", "model.hiden_dim", 8, ["model.hiden_dim", "did you mean",
                                                   "hidden_dim"]),
    ("unknown train field", "train.epoch", 3, ["train.epoch", "epochs"]),
    ("bad activation", "model.activation", "swish", ["model.activation", "swish", "relu"]),
    ("bad device", "train.device", "tpu", ["train.device", "tpu"]),
    ("dropout too high", "model.dropout", 1.5, ["model.dropout", "1.5"]),
    ("weight decay negative", "optimizer.weight_decay", -1, ["optimizer.weight_decay", "-1"]),
    ("threads zero", "train.threads", 0, ["train.threads", "auto", "got 0"]),
    ("threads a word", "train.threads", "many", ["train.threads", "auto", "'many'"]),
    ("threads a fraction", "train.threads", 1.5, ["train.threads", "1.5"]),
]


@pytest.mark.parametrize(("case", "key", "value", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_field_and_value(tiny: dict, case: str, key: str, value: Any,
                                         expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        expand(_sweep(_set(tiny, key, value)))
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize("key", [".", "a.b", ""])
def test_a_key_holding_a_dot_is_an_unknown_field_not_a_crash(tiny: dict, key: str) -> None:
    # Found by the long fuzz test: `train: {".": null}` raised KeyError('').
    doc = {**tiny, "train": {**tiny.get("train", {}), key: None}}
    with pytest.raises(ConfigError) as info:
        expand(_sweep(doc))
    assert f"`train.{key}` is not a config field" in str(info.value)
    assert "epochs" in str(info.value)  # the valid train fields are listed


BAD_GRID = [
    ("grid key not a field", {"model.hiden_dim": [1, 2]}, ["model.hiden_dim", "hidden_dim"]),
    ("grid key bad section", {"modle.name": ["mlp"]}, ["modle.name", "model"]),
    ("grid key no field", {"model": ["mlp"]}, ["model"]),
    ("grid empty list", {"model.hidden_dim": []}, ["model.hidden_dim", "empty"]),
    ("grid value bad", {"optimizer.lr": [0.1, -1.0]}, ["optimizer.lr", "-1.0", "run 2"]),
    ("grid unknown name", {"model.name": ["mlp", "transformer"]}, ["transformer", "gpt"]),
]


@pytest.mark.parametrize(("case", "grid", "expected"), BAD_GRID, ids=[b[0] for b in BAD_GRID])
def test_bad_grids(tiny: dict, case: str, grid: dict, expected: list[str]) -> None:
    tiny["grid"] = grid
    with pytest.raises(ConfigError) as info:
        expand(_sweep(tiny))
    for part in expected:
        assert part in str(info.value)


def test_missing_sections_and_unknown_top_level(tiny: dict) -> None:
    del tiny["model"]
    with pytest.raises(ConfigError, match="model"):
        _sweep(tiny)
    with pytest.raises(ConfigError, match="did you mean `optimizer"):
        _sweep({**_set(tiny, "model", {"name": "mlp"}), "optimiser": {"name": "sgd"}})


def test_yaml_errors_and_missing_file(write_config, tmp_path) -> None:
    with pytest.raises(ConfigError, match="YAML syntax error at line 3"):
        load_sweep(write_config("name: x\ndata: {name: digits\nmodel: {}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_sweep(write_config("- a\n- b\n"))


def test_grid_runs_and_seeds_expand_in_order(tiny: dict) -> None:
    tiny["grid"] = {"model.hidden_dim": [8, 16], "optimizer.name": ["adam", "sgd"]}
    tiny["runs"] = [{"model.hidden_dim": 32, "optimizer.name": "adamw"},
                    {"model": {"hidden_dim": 8}, "optimizer": {"name": "adam"}}]  # a duplicate
    tiny["seeds"] = [0, 1]
    runs = expand(_sweep(tiny))
    assert len(runs) == (4 + 1) * 2
    assert [r.index for r in runs] == list(range(1, 11))
    assert runs[0].overrides == {"model.hidden_dim": 8, "optimizer.name": "adam", "train.seed": 0}
    assert runs[1].config.train.seed == 1
    assert runs[-1].config.optimizer.name == "adamw"
    assert len({r.run_id for r in runs}) == len(runs)
    assert varied_keys(runs) == ["model.hidden_dim", "optimizer.name", "train.seed"]


def test_run_id_is_stable_and_canonical(tiny: dict) -> None:
    a = resolve_run(tiny)
    b = resolve_run(_set(_set(tiny, "optimizer.lr", 1e-2), "model.activation", "relu"))
    assert a.run_id == b.run_id  # 0.01 == 1e-2, and relu is the default
    assert a.run_id == resolve_run(copy.deepcopy(tiny)).run_id
    c = resolve_run(_set(tiny, "optimizer.lr", 0.02))
    assert c.run_id != a.run_id
    assert len(a.run_id) == 12
    # int vs float for a float field is the same run
    assert resolve_run(_set(tiny, "optimizer.lr", 1)).run_id == \
        resolve_run(_set(tiny, "optimizer.lr", 1.0)).run_id


def test_threads_auto_is_the_default_and_keeps_the_ids_runs_had(tiny: dict) -> None:
    """``train.threads: auto`` took over from None (torch's default): a run stored before it,
    whose config says None, keeps its id, and reads back as auto."""
    import dataclasses

    auto = resolve_run(tiny)
    assert auto.train.threads == "auto"
    assert resolve_run(_set(tiny, "train.threads", "auto")).run_id == auto.run_id
    stored = resolve_run(_set(tiny, "train.threads", None))  # a config stored before auto
    assert stored.train.threads == "auto" and stored.run_id == auto.run_id
    # The id as it was computed before auto: the field's value None, hashed as null.
    before = dataclasses.replace(auto, train=auto.train.model_construct(
        **{**dict(auto.train), "threads": None}))
    assert before.to_dict()["train"]["threads"] is None
    assert before.run_id == auto.run_id
    assert resolve_run(_set(tiny, "train.threads", 2)).run_id != auto.run_id  # a set count


def test_fields_of_other_components_are_dropped_for_this_run(tiny: dict) -> None:
    # A base written for lstm can be swept over model.name: mlp ignores embed_dim.
    tiny["model"] = {"name": "mlp", "hidden_dim": 16, "embed_dim": 64, "heads": 2}
    cfg = resolve_run(tiny)
    assert "embed_dim" not in cfg.to_dict()["model"]


def test_set_pins_a_key_for_every_run(tiny: dict) -> None:
    tiny["grid"] = {"optimizer.lr": [0.1, 0.01], "model.hidden_dim": [4, 8]}
    tiny["runs"] = [{"optimizer.lr": 0.5}]
    sweep = _sweep(tiny, ["optimizer.lr=0.003", "train.epochs=1"])
    runs = expand(sweep)
    assert {r.config.optimizer.lr for r in runs} == {0.003}
    assert {r.config.train.epochs for r in runs} == {1}
    assert len(runs) == 3  # the explicit run lost its only key: it is the base config
    assert runs[-1].config.model.hidden_dim == 16
    sweep = _sweep(tiny, ["grid.model.hidden_dim=[1, 2, 3]"])
    assert sweep.grid["model.hidden_dim"] == [1, 2, 3]


@pytest.mark.parametrize("item", ["novalue", "=3", "model.hiden_dim=3", "grid.nope.x=[1]"])
def test_bad_set_items(tiny: dict, item: str) -> None:
    with pytest.raises(ConfigError):
        _sweep(tiny, [item])


def test_examples_expand() -> None:
    qs = expand(load_sweep(example="quickstart"))
    assert len(qs) == 8
    lm = load_sweep(example="lm-optimizers")
    runs = expand(lm)
    assert len(runs) == 12
    assert varied_keys(runs) == ["model.name", "model.layers", "optimizer.name"]
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        load_sweep(example="quickstrat")


def test_cross_puts_every_explicit_run_at_every_grid_point(tiny: dict) -> None:
    # "These schemes on each of two datasets": a grid over the data, the schemes as runs.
    from trainlab.config.grid import expansion

    tiny["grid"] = {"model.hidden_dim": [8, 16]}
    tiny["runs"] = [{}, {"optimizer.name": "sgd"}, {"optimizer.name": "adamw"}]
    plain = _sweep(tiny)
    assert len(expand(plain)) == 2 + 3 - 1  # unchanged meaning: {} is the base, a duplicate
    crossed = _sweep({**tiny, "cross": True})
    runs = expand(crossed)
    assert len(runs) == 2 * 3
    assert [(r.config.model.hidden_dim, r.config.optimizer.name) for r in runs] == [
        (8, "adam"), (8, "sgd"), (8, "adamw"), (16, "adam"), (16, "sgd"), (16, "adamw")]
    assert varied_keys(runs) == ["model.hidden_dim", "optimizer.name"]
    assert expansion(crossed, len(runs)) == (
        "2 grid point(s) x 3 explicit run(s) (cross: true) = 6 runs")
    assert expansion(plain, 4) == (
        "2 grid point(s) + 3 explicit run(s) = 5 runs (1 identical to an earlier one, kept once)")
    seeded = _sweep({**tiny, "cross": True, "seeds": [0, 1]})
    assert len(expand(seeded)) == 12
    assert expansion(seeded).endswith("x 2 seed(s) = 12 runs")
    # A run's own value of a grid key wins at every point (the duplicates are kept once).
    tiny["runs"] = [{"model.hidden_dim": 32}]
    assert [r.config.model.hidden_dim for r in expand(_sweep({**tiny, "cross": True}))] == [32]
    assert _sweep(tiny, ["cross=true"]).cross


def test_every_error_of_the_file_comes_at_once(tiny: dict) -> None:
    tiny["grid"] = {"model.hiden_dim": [8], "optimiser.name": ["sgd"]}
    tiny["runs"] = [{"train.epoch": 2}]
    with pytest.raises(ConfigError) as info:
        expand(_sweep(tiny))
    message = str(info.value)
    assert message.startswith("3 errors in this config:")
    for part in ("model.hiden_dim", "hidden_dim", "optimiser.name", "train.epoch", "epochs"):
        assert part in message
    # Values that fail in several runs: each message once, with the runs it was found in.
    tiny["grid"] = {"optimizer.lr": [-1.0, 0.1, -2.0], "model.activation": ["relu", "swish"]}
    tiny["runs"] = []
    with pytest.raises(ConfigError) as info:
        expand(_sweep(tiny))
    message = str(info.value)
    assert "-1.0" in message and "-2.0" in message and "swish" in message
    assert "runs 2, 4, 6" in message  # swish at every lr
    assert "got -1.0 (in sweep tiny, runs 1, 2)" in message
    tiny["grid"] = {"optimizer.lr": [0.1, -1.0]}
    with pytest.raises(ConfigError, match=r"-1.0 \(in sweep tiny, run 2: optimizer.lr=-1.0\)"):
        expand(_sweep(tiny))


def test_adapter_runs_read_adapter_true_and_keep_their_ids(tiny: dict) -> None:
    from trainlab.cli.common import format_value

    run = resolve_run({**tiny, "finetune": {"name": "adapter"}})
    assert run.flat()["finetune.adapter"] is True
    base = {"data": {"name": "digits"}, "model": {"name": "mlp"},
            "finetune": {"name": "adapter"}}
    assert resolve_run(base).run_id == "9026880f5a76"  # the id it had before the field
    assert format_value(None) == "-"  # a key this run's component does not take
