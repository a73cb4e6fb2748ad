"""Config: the schema, YAML loading with overrides, and grid expansion."""

from trainlab.config.grid import ExpandedRun, expand, values_of, varied_keys
from trainlab.config.load import example_names, example_text, load_sweep
from trainlab.config.schema import RunConfig, SweepConfig, TrainSpec, resolve_run

__all__ = [
    "ExpandedRun", "RunConfig", "SweepConfig", "TrainSpec", "example_names", "example_text",
    "expand", "load_sweep", "resolve_run", "values_of", "varied_keys",
]
