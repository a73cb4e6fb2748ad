"""Models: linear, MLP, LeNet-5-style CNN, LSTM language model, GPT-1-style decoder.

Each builder takes its spec and the :class:`DataInfo` of the run's data and returns an
``nn.Module`` mapping a batch of inputs to outputs (logits, or ``[B, T, V]`` for language
models).  Shape problems are raised as :class:`ConfigError` so `trainlab plan` catches them
before anything trains (models are built on the meta device there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import Field, PositiveInt

from trainlab.components.base import Spec
from trainlab.errors import ConfigError
from trainlab.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from trainlab.components.datasets import DataInfo

# Specs import no torch (validating a config is cheap); builders import it when they build,
# and the module classes live in :mod:`.nets`.
Builder: TypeAlias = "Callable[..., nn.Module]"


class ModelSpec(Spec):
    """Options of a model; each model adds its own."""


MODELS: Registry[Builder] = Registry("model", base=ModelSpec)

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu"]
_ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh", "sigmoid": "Sigmoid",
                "leaky_relu": "LeakyReLU"}


def _activation(name: str) -> nn.Module:
    """A new activation layer (torch's ``nn`` class named in :data:`_ACTIVATIONS`)."""
    from torch import nn

    layer: nn.Module = getattr(nn, _ACTIVATIONS[name])()
    return layer


def build_model(spec: Spec, info: DataInfo) -> nn.Module:
    return MODELS.get(spec.name, field="model.name").build(spec, info)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts, each shared tensor counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def _needs(info: DataInfo, tasks: tuple[str, ...], model: str) -> None:
    if info.task not in tasks:
        raise ConfigError(
            f"`model.name`: {model!r} works on {' or '.join(tasks)} data, but dataset "
            f"{info.name!r} is a {info.task} task; for language modelling use lstm or gpt, "
            "for classification or regression use linear, mlp or cnn", field="model.name")


# --- MLP --------------------------------------------------------------------------------------


class MLPSpec(ModelSpec):
    """Fully connected network on flattened inputs."""

    hidden_dim: PositiveInt = Field(default=128, description="width of each hidden layer")
    layers: int = Field(default=1, ge=0, description="number of hidden layers")
    hidden: list[PositiveInt] | None = Field(
        default=None, description="explicit hidden sizes; overrides hidden_dim and layers")
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False


@MODELS.register("mlp", spec=MLPSpec)
def build_mlp(spec: MLPSpec, info: DataInfo) -> nn.Module:
    """Multi-layer perceptron: hidden sizes, activation, dropout, optional batch norm."""
    from torch import nn

    _needs(info, ("classification", "regression"), "mlp")
    sizes = spec.hidden if spec.hidden is not None else [spec.hidden_dim] * spec.layers
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(info.input_shape)
    for size in sizes:
        layers.append(nn.Linear(width, size))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(_activation(spec.activation))
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = size
    layers.append(nn.Linear(width, info.num_outputs))
    return nn.Sequential(*layers)


# --- linear ------------------------------------------------------------------------------------


class LinearSpec(ModelSpec):
    """One affine layer on flattened inputs: linear or logistic regression."""

    bias: bool = True


@MODELS.register("linear", spec=LinearSpec)
def build_linear(spec: LinearSpec, info: DataInfo) -> nn.Module:
    """One linear layer on flattened inputs: least squares (regression) or multinomial logistic
    regression (classification); the baseline every other model should beat."""
    from torch import nn

    _needs(info, ("classification", "regression"), "linear")
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(info.input_shape), info.num_outputs,
                                                 bias=spec.bias))


# --- CNN (LeNet-5 family) ---------------------------------------------------------------------


class CNNSpec(ModelSpec):
    """LeNet-5 family: conv-pool stages, then fully connected layers."""

    channels: list[PositiveInt] = Field(default_factory=lambda: [6, 16], min_length=1)
    kernel_size: PositiveInt = 5
    padding: Literal["same", "valid"] = "same"
    pool: Literal["max", "avg"] = "max"
    fc: list[PositiveInt] = Field(default_factory=lambda: [120, 84])
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


@MODELS.register("cnn", spec=CNNSpec)
def build_cnn(spec: CNNSpec, info: DataInfo) -> nn.Module:
    """LeNet-5-style CNN: [conv, activation, 2x2 pool] per stage, then fc layers."""
    from torch import nn

    _needs(info, ("classification", "regression"), "cnn")
    shape = info.input_shape
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ConfigError(
            f"`model.name`: cnn needs image data shaped (channels, height, width) or (height, "
            f"width); dataset {info.name!r} gives examples of shape {info.input_shape}",
            field="model.name")
    c, h, w = shape
    pad = spec.kernel_size // 2 if spec.padding == "same" else 0
    layers: list[nn.Module] = [nn.Unflatten(1, shape)] if shape != info.input_shape else []
    pool = nn.MaxPool2d if spec.pool == "max" else nn.AvgPool2d
    for out in spec.channels:
        h, w = h + 2 * pad - spec.kernel_size + 1, w + 2 * pad - spec.kernel_size + 1
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(
                f"`model.channels`: {len(spec.channels)} conv/pool stages with kernel "
                f"{spec.kernel_size} and {spec.padding!r} padding shrink {info.input_shape} "
                "images to nothing; use fewer stages, a smaller kernel or padding: same",
                field="model.channels")
        layers += [nn.Conv2d(c, out, spec.kernel_size, padding=pad),
                   _activation(spec.activation), pool(2)]
        c = out
    layers.append(nn.Flatten())
    width = c * h * w
    for size in spec.fc:
        layers += [nn.Linear(width, size), _activation(spec.activation)]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = size
    layers.append(nn.Linear(width, info.num_outputs))
    return nn.Sequential(*layers)


# --- LSTM language model ----------------------------------------------------------------------


class LSTMSpec(ModelSpec):
    """LSTM language model: embedding, stacked LSTM, dropout, linear decoder."""

    embed_dim: PositiveInt = 128
    hidden_dim: PositiveInt = Field(default=256, description="LSTM state size")
    layers: PositiveInt = 1
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    tie_weights: bool = Field(default=False, description="share embedding and decoder weights")


@MODELS.register("lstm", spec=LSTMSpec)
def build_lstm(spec: LSTMSpec, info: DataInfo) -> nn.Module:
    """LSTM language model (embedding, hidden size, layers, dropout, tied weights)."""
    from trainlab.components.nets import LSTMLanguageModel

    _needs(info, ("lm",), "lstm")
    if spec.tie_weights and spec.embed_dim != spec.hidden_dim:
        raise ConfigError(
            f"`model.tie_weights`: tied weights need embed_dim == hidden_dim; got embed_dim="
            f"{spec.embed_dim}, hidden_dim={spec.hidden_dim}", field="model.tie_weights")
    return LSTMLanguageModel(info.num_outputs, spec)


# --- GPT-1-style decoder ----------------------------------------------------------------------


class GPTSpec(ModelSpec):
    """GPT-1-style causal transformer decoder with learned positions."""

    embed_dim: PositiveInt = Field(default=128, description="d_model")
    hidden_dim: PositiveInt | None = Field(default=None, description="d_ff (default 4 x d_model)")
    layers: PositiveInt = 1
    heads: PositiveInt = 4
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    context: PositiveInt | None = Field(default=None, description="max positions (default seq_len)")
    tie_weights: bool = True
    norm: Literal["post", "pre"] = Field(
        default="post", description="post-LN as in GPT-1, or pre-LN as in GPT-2")


@MODELS.register("gpt", spec=GPTSpec)
def build_gpt(spec: GPTSpec, info: DataInfo) -> nn.Module:
    """GPT-1-style decoder (layers, heads, d_model, d_ff, dropout, context, tied embeddings)."""
    from trainlab.components.nets import GPT

    _needs(info, ("lm",), "gpt")
    if spec.embed_dim % spec.heads:
        raise ConfigError(
            f"`model.heads`: embed_dim ({spec.embed_dim}) must be divisible by heads "
            f"({spec.heads}); try heads in {[h for h in range(1, 17) if spec.embed_dim % h == 0]}",
            field="model.heads")
    context = spec.context or info.input_shape[0]
    if context < info.input_shape[0]:
        raise ConfigError(f"`model.context`: {context} positions cannot hold sequences of "
                          f"{info.input_shape[0]} tokens (data.seq_len)", field="model.context")
    return GPT(info.num_outputs, context, spec)


def __getattr__(name: str) -> Any:
    # The module classes moved to .nets (torch only when a model is built); still importable
    # from here.
    if name in ("LSTMLanguageModel", "GPT"):
        from trainlab.components import nets

        return getattr(nets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
