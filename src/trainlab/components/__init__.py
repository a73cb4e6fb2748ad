"""Registries of the pluggable components; importing this package registers every entry."""

from typing import Any

# Importing these registers hf, minilm, vader-sentiment and the `python` entries (own code).
from trainlab.components import hf, python, text_data  # noqa: F401
from trainlab.components.datasets import DATASETS, DataInfo, Dataset, DataSpec, load_dataset
from trainlab.components.finetune import FINETUNE, FinetuneSetup, build_finetune
from trainlab.components.models import MODELS, build_model, count_parameters
from trainlab.components.optimizers import OPTIMIZERS, build_optimizer
from trainlab.components.schedules import SCHEDULES, Schedule, ScheduleContext, build_schedule
from trainlab.registry import Registry, load_plugins

# Installed packages add components through the entry-point group `trainlab.components`.
PLUGIN_WARNINGS = load_plugins()

REGISTRIES: dict[str, Registry[Any]] = {
    "data": DATASETS, "model": MODELS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
    "finetune": FINETUNE}

__all__ = [
    "DATASETS", "FINETUNE", "MODELS", "OPTIMIZERS", "REGISTRIES", "SCHEDULES", "DataInfo",
    "DataSpec", "Dataset", "FinetuneSetup", "Schedule", "ScheduleContext", "build_finetune",
    "build_model", "build_optimizer", "build_schedule", "count_parameters", "load_dataset",
]
