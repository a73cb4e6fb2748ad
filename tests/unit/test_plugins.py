"""Components from installed packages: the entry-point group `trainlab.components`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

PLUGIN = '''
from pydantic import Field
from torch import nn

from trainlab.components.models import MODELS, ModelSpec


class WideSpec(ModelSpec):
    """A one-layer net from a plugin."""

    width: int = Field(default=8, description="hidden width")


@MODELS.register("plugin-wide", spec=WideSpec)
def build_wide(spec, info):
    """A one-hidden-layer net that a plugin package registers."""
    size = 1
    for d in info.input_shape:
        size *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(size, spec.width), nn.ReLU(),
                         nn.Linear(spec.width, info.num_outputs))
'''


def _install(site: Path, name: str, module: str, code: str) -> None:
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(code)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    info.joinpath("entry_points.txt").write_text(f"[trainlab.components]\n{module} = {module}\n")


def _trainlab(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_a_plugin_registers_components_that_list_and_train(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(site, "trainlab-wide", "trainlab_wide", PLUGIN)
    _install(site, "broken-plugin", "broken_plugin", "raise ImportError('no numpy 3 here')\n")
    listed = _trainlab(site, "components", "model", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert entries["plugin-wide"]["origin"] == "trainlab-wide"
    assert entries["mlp"]["origin"] == "trainlab"
    assert "plugin 'broken-plugin'" in listed.stderr and "no numpy 3 here" in listed.stderr
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "name": "plug", "data": {"name": "digits", "limit": 128, "batch_size": 64},
        "model": {"name": "plugin-wide", "width": 4}, "train": {"epochs": 1}}))
    run = _trainlab(site, "run", str(config), "--store", str(tmp_path / "s"), "-q", "--jobs",
                    "2", "--no-estimate")
    assert run.returncode == 0, run.stdout + run.stderr
