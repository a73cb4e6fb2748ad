"""``name: python``: the user's own model, optimizer, schedule and loss, named in the config."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config import expand, load_sweep
from trainlab.engine import train
from trainlab.store import open_store

runner = CliRunner()

NETS = '''
import torch
from torch import nn

CALLS = {"loss": 0}


class TinyMLP(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=16):
        super().__init__()
        width = 1
        for d in input_shape:
            width *= d
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def make_mlp(input_shape, num_classes, hidden=16):
    return TinyMLP(input_shape, num_classes, hidden)


class Wrong(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=0):
        super().__init__()
        self.lin = nn.Linear(64, 3)

    def forward(self, x):
        return self.lin(x.flatten(1))


class Boom(TinyMLP):
    calls = 0

    def forward(self, x):
        Boom.calls += 1
        if Boom.calls > 3:
            raise RuntimeError("boom at step 4")
        return super().forward(x)


def doubled(out, y):
    CALLS["loss"] += 1
    return 2.0 * nn.functional.cross_entropy(out, y)


def warmup(optimizer, total_steps, warmup=5):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))


def not_an_optimizer(params, lr):
    return [params, lr]


def sgd(params, lr, momentum=0.0):
    return torch.optim.SGD(params, lr=lr, momentum=momentum)
'''


def _sweep(folder: Path, **sections: Any) -> Path:
    doc: dict[str, Any] = {
        "name": "own",
        "data": {"name": "digits", "batch_size": 64, "limit": 256},
        "model": {"name": "python", "target": "nets.py:TinyMLP", "args": {"hidden": 16}},
        "optimizer": {"name": "python", "target": "torch.optim:Adam", "lr": 0.01},
        "train": {"epochs": 2, "log_every": 2},
    }
    doc.update(sections)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "nets.py").write_text(NETS)
    return tmp_path / "proj"


def test_own_model_optimizer_schedule_and_loss_train(folder: Path, tmp_path: Path) -> None:
    config = _sweep(folder, schedule={"name": "python", "target": "nets.py:warmup",
                                      "args": {"warmup": 4}},
                    optimizer={"name": "python", "target": "nets.py:sgd", "lr": 0.1,
                               "args": {"momentum": 0.9}},
                    train={"epochs": 2, "log_every": 2, "loss": "nets.py:doubled"})
    run = expand(load_sweep(config))[0]
    outcome = train(run.config, run_id=run.run_id, run_dir=tmp_path / "run")
    assert outcome.status == "ok", outcome.error
    import sys

    nets = next(m for n, m in sys.modules.items() if n.startswith("trainlab_user_nets_")
                and getattr(m, "__file__", None) == str((folder / "nets.py").resolve()))
    assert nets.CALLS["loss"] == 2 * 4  # the user's loss was what trained: 4 steps an epoch
    assert outcome.summary["test_accuracy"] > 0.0


def test_a_grid_over_args_and_a_function_model(folder: Path) -> None:
    config = _sweep(folder, model={"name": "python", "target": "nets.py:make_mlp"},
                    grid={"model.args.hidden": [4, 8]})
    runs = expand(load_sweep(config))
    assert [r.config.model.args for r in runs] == [{"hidden": 4}, {"hidden": 8}]  # type: ignore[attr-defined]
    assert len({r.run_id for r in runs}) == 2


def test_editing_the_file_makes_new_runs_and_moving_the_folder_does_not(folder: Path,
                                                                        tmp_path: Path) -> None:
    config = _sweep(folder)
    before = expand(load_sweep(config))[0].run_id
    assert expand(load_sweep(config))[0].run_id == before
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    assert expand(load_sweep(moved / "sweep.yaml"))[0].run_id == before
    (moved / "nets.py").write_text(NETS + "\n# an edit\n")
    assert expand(load_sweep(moved / "sweep.yaml"))[0].run_id != before


def test_a_run_records_its_sources_and_keeps_a_copy(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(_sweep(folder)), "--store", str(store), "-q"])
    assert result.exit_code == 0, result.output
    with open_store(store) as st:
        row = st.runs().iloc[0]
        sources = {s["field"]: s for s in row["env"]["sources"]}
        run_dir = st.run_dir(row["run_id"])
    assert sources["model.target"]["file"] == str((folder / "nets.py").resolve())
    assert sources["optimizer.target"]["target"] == "torch.optim:Adam"
    digest = sources["model.target"]["sha256"]
    assert row["config"]["model"]["source"] == digest
    assert (run_dir / "sources" / digest / "nets.py").read_text() == NETS
    shown = runner.invoke(app, ["show", row["run_id"], "--store", str(store)])
    assert "own code: model.target = nets.py:TinyMLP" in shown.output


@pytest.mark.parametrize(("override", "expected"), [
    ("model.target=nope.py:X", "no file 'nope.py' (relative to"),
    ("model.target=nets.py:TinyMPL", "did you mean 'TinyMLP'? It defines: Boom, CALLS"),
    ("model.target=nets", "is not a target"),
    ("model.target=no_such_module:X", "no module 'no_such_module' is installed"),
    ("model.args.hiddn=3", "takes no argument 'hiddn' (did you mean 'hidden'?)"),
    ("model.target=nets.py:Wrong", "must return logits [B, C] = [2, 10]; it returned [2, 3]"),
    ("optimizer.target=torch.optim:Adamm", "did you mean 'Adam'?"),
    ("optimizer.target=nets.py:not_an_optimizer", "returned list, not a torch.optim.Optimizer"),
    ("optimizer.target=nets.py:TinyMLP", "TinyMLP(input_shape, num_classes, hidden=16) takes no "
                                         "argument 'lr'"),
    ("schedule.name=python", "`schedule.target` is required"),
    ("train.loss=nets.py:nothing", "`train.loss`: nets.py defines no 'nothing'"),
])
def test_bad_own_code_is_bad_input_with_the_field(folder: Path, tmp_path: Path, override: str,
                                                  expected: str) -> None:
    result = runner.invoke(app, ["run", str(_sweep(folder)), "--store", str(tmp_path / "s"),
                                 "--set", override, "-q"])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s" / "trainlab.db").exists() or open_store(
        tmp_path / "s").runs().empty


def test_errors_in_the_users_file_name_the_file_and_line(folder: Path, tmp_path: Path) -> None:
    (folder / "broken.py").write_text("import torch\n\ndef f(:\n    pass\n")
    (folder / "raises.py").write_text("import torch\n\nx = 1 / 0\n")
    (folder / "sched.py").write_text(
        "import torch\n\ndef s(optimizer, total_steps, warmup=1):\n"
        "    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: (i + 1) / warmup)\n")
    cases = [(["model.target=broken.py:f"], "syntax error in", "broken.py, line 3"),
             (["model.target=raises.py:f"], "ZeroDivisionError", "raises.py, line 3: x = 1 / 0"),
             (["schedule.name=python", "schedule.target=sched.py:s", "schedule.args.warmup=0"],
              "ZeroDivisionError", "sched.py, line 4")]
    for overrides, first, second in cases:
        sets = [arg for o in overrides for arg in ("--set", o)]
        result = runner.invoke(app, ["plan", str(_sweep(folder)), *sets])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and first in text and second in text, result.output
        assert "Traceback" not in result.output


def test_an_error_inside_the_users_code_while_training_fails_that_run_only(
        folder: Path, tmp_path: Path) -> None:
    config = _sweep(folder, grid={"model.target": ["nets.py:Boom", "nets.py:TinyMLP"]})
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(config), "--store", str(store), "-q"])
    assert result.exit_code == 1, result.output
    with open_store(store) as st:
        runs = st.runs().set_index("index")
    assert runs.loc[1, "status"] == "failed" and runs.loc[2, "status"] == "ok"
    error = runs.loc[1, "error"]
    assert "boom at step 4" in error and "nets.py" in error.strip().splitlines()[-3]


def test_existing_configs_keep_their_run_ids() -> None:
    # Ids of the built-in examples as the release before own code computed them.
    assert [r.run_id for r in expand(load_sweep(example="quickstart"))][:3] == [
        "c8214cc8d30b", "1bf6006dc162", "05f6caa82394"]
    assert [r.run_id for r in expand(load_sweep(example="lm-optimizers"))][:3] == [
        "7f8c1d2449b1", "65f3ce6ae7b8", "d18a6a801d12"]


def test_a_target_text_is_checked_for_shape() -> None:
    from trainlab.errors import ConfigError
    from trainlab.usercode import split_target

    assert split_target("pkg.mod:Name", "f") == ("pkg.mod", "Name")
    for bad in ["nets.py", "a:b:c", ":X", "nets.py:"]:
        with pytest.raises(ConfigError, match="is not a target"):
            split_target(bad, "model.target")


def test_user_files_beside_each_other_import_each_other(folder: Path, tmp_path: Path) -> None:
    (folder / "blocks.py").write_text(textwrap.dedent('''
        from torch import nn

        def head(width, classes):
            return nn.Linear(width, classes)
    '''))
    (folder / "model.py").write_text(textwrap.dedent('''
        from torch import nn
        from blocks import head

        def build(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), head(64, num_classes))
    '''))
    config = _sweep(folder, model={"name": "python", "target": "model.py:build"})
    run = expand(load_sweep(config))[0]
    assert train(run.config, run_id=run.run_id).status == "ok"
    # blocks.py is part of what the run trains: editing it makes a new run, as model.py does.
    (folder / "blocks.py").write_text((folder / "blocks.py").read_text() + "\n# edited\n")
    assert expand(load_sweep(config))[0].run_id != run.run_id
    from trainlab.usercode import config_sources, copy_sources

    (source,) = [s for s in config_sources(run.config) if s["field"] == "model.target"]
    assert source["imports"] == [str((folder / "blocks.py").resolve())]
    copy_sources([source], tmp_path / "copies")
    assert sorted(p.name for p in (tmp_path / "copies" / source["sha256"]).iterdir()) == [
        "blocks.py", "model.py"]
