"""Models: linear, MLP, LeNet-5-style CNN, LSTM language model, GPT-1-style decoder.

Each builder takes its spec and the :class:`DataInfo` of the run's data and returns an
``nn.Module`` mapping a batch of inputs to outputs (logits, or ``[B, T, V]`` for language
models).  Shape problems are raised as :class:`ConfigError` so `trainlab plan` catches them
before anything trains (models are built on the meta device there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from trainlab.components.base import Spec
from trainlab.components.datasets import DataInfo
from trainlab.errors import ConfigError
from trainlab.registry import Registry

Builder = Callable[..., nn.Module]
class ModelSpec(Spec):
    """Options of a model; each model adds its own."""


MODELS: Registry[Builder] = Registry("model", base=ModelSpec)

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


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
    _needs(info, ("classification", "regression"), "mlp")
    sizes = spec.hidden if spec.hidden is not None else [spec.hidden_dim] * spec.layers
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(info.input_shape)
    for size in sizes:
        layers.append(nn.Linear(width, size))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(_ACTIVATIONS[spec.activation]())
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
                   _ACTIVATIONS[spec.activation](), pool(2)]
        c = out
    layers.append(nn.Flatten())
    width = c * h * w
    for size in spec.fc:
        layers += [nn.Linear(width, size), _ACTIVATIONS[spec.activation]()]
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


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int, spec: LSTMSpec) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, spec.embed_dim)
        self.drop = nn.Dropout(spec.dropout)
        self.lstm = nn.LSTM(spec.embed_dim, spec.hidden_dim, spec.layers, batch_first=True,
                            dropout=spec.dropout if spec.layers > 1 else 0.0)
        self.decoder = nn.Linear(spec.hidden_dim, vocab)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if spec.tie_weights:
            self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.drop(self.embed(tokens)))
        return self.decoder(self.drop(out))


@MODELS.register("lstm", spec=LSTMSpec)
def build_lstm(spec: LSTMSpec, info: DataInfo) -> nn.Module:
    """LSTM language model (embedding, hidden size, layers, dropout, tied weights)."""
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


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.heads, self.pre_norm, self.dropout = heads, pre_norm, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # One fused kernel (flash / memory-efficient where the device has them).
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self._attend(self.ln1(x))
            return x + self.drop(self.ff(self.ln2(x)))
        x = self.ln1(x + self._attend(x))
        return self.ln2(x + self.drop(self.ff(x)))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, spec: GPTSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(context, d)
        self.drop = nn.Dropout(spec.dropout)
        d_ff = spec.hidden_dim or 4 * d
        self.blocks = nn.ModuleList(
            _Block(d, spec.heads, d_ff, spec.dropout, spec.norm == "pre")
            for _ in range(spec.layers))
        self.ln_f = nn.LayerNorm(d) if spec.norm == "pre" else nn.Identity()
        self.head = nn.Linear(d, vocab, bias=False)
        self.apply(_init_gpt)
        if spec.tie_weights:
            self.head.weight = self.tokens.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.tokens(tokens) + self.positions(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _init_gpt(module: nn.Module) -> None:
    # GPT-1 initialises weights from N(0, 0.02).
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@MODELS.register("gpt", spec=GPTSpec)
def build_gpt(spec: GPTSpec, info: DataInfo) -> nn.Module:
    """GPT-1-style decoder (layers, heads, d_model, d_ff, dropout, context, tied embeddings)."""
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
