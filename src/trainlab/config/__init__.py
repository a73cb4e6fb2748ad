"""Config: the schema, YAML loading with overrides, and grid expansion.

- :mod:`.schema`: the sweep file and the resolved config of one run (typed component specs).
- :mod:`.grid`: expansion of ``grid``, ``runs`` and ``seeds`` into runs and their ids.
- :mod:`.load`: YAML files, built-in examples and ``--set`` overrides.
- :mod:`.keys`: dotted keys as column labels (light: no schema, no torch).

The names below load on first use: validating a config imports every component's specs
(pydantic; torch only when a component is built), which the commands that only read the store
(``ls``, ``show``, ``report``) never need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ExpandedRun": "grid", "expand": "grid", "values_of": "grid", "varied_keys": "grid",
    "example_names": "load", "example_text": "load", "load_sweep": "load",
    "RunConfig": "schema", "SweepConfig": "schema", "TrainSpec": "schema", "resolve_run": "schema",
}

if TYPE_CHECKING:
    from trainlab.config.grid import ExpandedRun, expand, values_of, varied_keys
    from trainlab.config.load import example_names, example_text, load_sweep
    from trainlab.config.schema import RunConfig, SweepConfig, TrainSpec, resolve_run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"trainlab.config.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'trainlab.config' has no attribute {name!r}")


__all__ = [
    "ExpandedRun", "RunConfig", "SweepConfig", "TrainSpec", "example_names", "example_text",
    "expand", "load_sweep", "resolve_run", "values_of", "varied_keys",
]
