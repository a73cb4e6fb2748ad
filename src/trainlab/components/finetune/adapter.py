"""Houlsby bottleneck adapters (Houlsby et al. 2019), implemented here.

Each block of the model gets two adapters: one on the output projection of its attention and
one on the output of its feed-forward block, both before the residual connection and layer
norm, as in the paper.  An adapter is ``h + up(act(down(h)))`` with a bottleneck of
``width / reduction`` and a near-identity start (small random weights, zero biases), so the
pretrained model's function is where training starts.  Adapter tuning freezes the pretrained
weights and trains the adapters, the layer norms and the head.

Why not the ``adapters`` package: it pins an older transformers than the 5.x this project
uses; the module here is ~100 lines, works on any model with recognisable blocks (BERT-like,
GPT-2-like, trainlab's gpt), and keeps the base model's parameter names unchanged (an adapter
is a child of the layer it follows, applied by a forward hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt

from trainlab.components.finetune.base import FINETUNE, FinetuneSetup, FinetuneSpec
from trainlab.components.finetune.layers import describe_modules, find_blocks, layer_groups
from trainlab.errors import ConfigError

if TYPE_CHECKING:  # torch and Adapter (.adapter_modules) are imported when adapters are added
    from torch import nn

    from trainlab.components.finetune.adapter_modules import Adapter

# (after attention, after feed-forward): module paths inside one block, per model family.
KNOWN_TARGETS: tuple[tuple[str, str], ...] = (
    ("attention.output.dense", "output.dense"),  # BERT, RoBERTa, MiniLM, ELECTRA
    ("attn.c_proj", "mlp.c_proj"),  # GPT-2
    ("attention.out_lin", "ffn.lin2"),  # DistilBERT
    ("self_attn.o_proj", "mlp.down_proj"),  # LLaMA, Mistral, Qwen
    ("self_attn.out_proj", "fc2"),  # OPT, BART
    ("proj", "ff.2"),  # trainlab's gpt
)


def _apply_adapter(module: nn.Module, args: Any, output: Any) -> Any:
    # A forward hook: the adapter follows the layer it is a child of.
    adapter = module.get_submodule("adapter")
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def _width(module: nn.Module) -> int | None:
    for attr in ("out_features", "nf"):  # nn.Linear; transformers' Conv1D (GPT-2)
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _block_targets(block: nn.Module, targets: list[str] | None) -> list[str] | None:
    names = dict(block.named_modules())
    if targets is not None:
        return targets if all(t in names for t in targets) else None
    for pair in KNOWN_TARGETS:
        if all(t in names and _width(names[t]) for t in pair):
            return list(pair)
    return None


def insert_adapters(model: nn.Module, reduction: int, targets: list[str] | None = None
                    ) -> list[Adapter]:
    """Add Houlsby adapters to every block of ``model``; the adapters, bottom to top."""
    from trainlab.components.finetune.adapter_modules import Adapter

    found = find_blocks(model)
    if found is None:
        raise ConfigError(
            "`finetune.name`: adapters go into the blocks of a transformer, but no stack of "
            f"blocks was recognised in this model ({describe_modules(model)}); use a "
            "transformer (hf, minilm, gpt) or a strategy without adapters", field="finetune.name")
    path, blocks = found
    adapters: list[Adapter] = []
    for i, block in enumerate(blocks):
        chosen = _block_targets(block, targets)
        if chosen is None:
            linear = [n for n, m in block.named_modules() if n and _width(m)]
            known = "; ".join(" + ".join(p) for p in KNOWN_TARGETS)
            raise ConfigError(
                f"`finetune.targets`: block {i} of `{path}` ({type(block).__name__}) has no "
                f"{'modules ' + repr(targets) if targets else 'recognised attention and feed-forward outputs'}"  # noqa: E501
                f". Its linear layers: {', '.join(linear) or 'none'}. Known layouts: {known}; "
                "or set finetune.targets to the module names inside a block",
                field="finetune.targets")
        modules = dict(block.named_modules())
        for name in chosen:
            target = modules[name]
            width = _width(target)
            if width is None:
                raise ConfigError(f"`finetune.targets`: {name!r} in block {i} is a "
                                  f"{type(target).__name__}, not a linear layer",
                                  field="finetune.targets")
            if hasattr(target, "adapter"):
                raise ConfigError(f"`finetune.targets`: {name!r} already has an adapter",
                                  field="finetune.targets")
            adapter = Adapter(width, max(1, width // reduction))
            target.add_module("adapter", adapter)
            target.register_forward_hook(_apply_adapter)
            adapters.append(adapter)
    return adapters


def adapter_trainables(model: nn.Module, adapters: list[Adapter], train_layer_norms: bool,
                       train_base: bool) -> set[int]:
    """Ids of the parameters adapter tuning trains: the adapters, the head, and (Houlsby)
    the layer norms inside the blocks; everything when ``train_base``."""
    from torch import nn

    if train_base:
        return {id(p) for p in model.parameters()}
    keep = {id(p) for a in adapters for p in a.parameters()}
    groups = layer_groups(model)
    keep |= {id(p) for p in groups[-1].params} if groups[-1].name == "head" else set()
    found = find_blocks(model)
    if train_layer_norms and found is not None:
        for module in found[1].modules():
            if isinstance(module, nn.LayerNorm):
                keep |= {id(p) for p in module.parameters()}
    return keep


def freeze_except(model: nn.Module, keep: set[int]) -> None:
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


class AdapterSpec(FinetuneSpec):
    """Houlsby adapter tuning: base frozen; adapters, layer norms and head train."""

    # What the schemes that can run with adapters call ``adapter``: always on here, so a
    # sweep's `adapter` column reads true on these runs (not a blank).  Not in the run id.
    adapter: Literal[True] = Field(
        default=True, description="always true: this strategy trains adapters (a sweep's "
        "adapter column reads true); not part of the run id", json_schema_extra={"run_id": False})
    reduction: PositiveInt = Field(default=16, description="bottleneck = width / reduction")
    train_layer_norms: bool = Field(default=True, description="train the blocks' layer norms")
    train_base: bool = Field(default=False,
                             description="also train the pretrained weights (full + adapters)")
    targets: list[str] | None = Field(
        default=None, description="modules inside each block to follow with an adapter "
                                  "(default: the attention and feed-forward outputs)")


@FINETUNE.register("adapter", spec=AdapterSpec)
def build_adapter(spec: AdapterSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    """Houlsby bottleneck adapters after attention and feed-forward of each block; base frozen."""
    adapters = insert_adapters(model, spec.reduction, spec.targets)
    freeze_except(model, adapter_trainables(model, adapters, spec.train_layer_norms,
                                            spec.train_base))
    params = [p for p in model.parameters() if p.requires_grad]
    return FinetuneSetup([{"params": params, "name": "adapter"}])


class WithAdapter(FinetuneSpec):
    """Options of schemes that can run with adapters (discriminative LR, gradual unfreezing)."""

    adapter: bool = Field(default=False,
                          description="insert Houlsby adapters and tune them under this scheme")
    reduction: PositiveInt = Field(default=16, description="with adapter: width / bottleneck")
    train_base: bool = Field(default=False,
                             description="with adapter: also train the pretrained weights")


def maybe_adapters(spec: WithAdapter, model: nn.Module) -> None:
    """With ``spec.adapter``: insert adapters and freeze what adapter tuning does not train."""
    if spec.adapter:
        adapters = insert_adapters(model, spec.reduction)
        freeze_except(model, adapter_trainables(model, adapters, True, spec.train_base))


def __getattr__(name: str) -> Any:
    # Adapter moved to .adapter_modules (torch only when adapters are added); still importable
    # from here.
    if name == "Adapter":
        from trainlab.components.finetune.adapter_modules import Adapter

        return Adapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
