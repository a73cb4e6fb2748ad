"""Layer groups: a model's parameters split bottom to top (embeddings, each block, head).

Found automatically: the model's stack of blocks is its largest ``nn.ModuleList`` of modules of
one class (``bert.encoder.layer`` in BERT-like models, ``transformer.h`` in GPT-2,
``blocks`` in trainlab's gpt).  Parameters registered before the first block form
``embeddings``, each block is ``block<i>``, and the rest is ``head`` (pooler, classifier, final
norm).  A model without such a stack (mlp, cnn, lstm) is split into its top-level children
in order.  ``finetune.groups`` overrides this with name patterns: ``{name: regex, ...}`` from
bottom to top, each parameter going to the first pattern that matches its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import Field

from trainlab.components.finetune.base import FinetuneSpec
from trainlab.errors import ConfigError

if TYPE_CHECKING:  # no torch where specs are validated
    from torch import nn


class WithLayerGroups(FinetuneSpec):
    """Strategies that work on layer groups may override how the model is split."""

    groups: dict[str, str] | None = Field(
        default=None, description="layer groups as {name: regex}, bottom to top "
                                  "(default: embeddings, each block, head)")


@dataclass
class LayerGroup:
    """One group's name and its parameters (each shared tensor once, in model order)."""

    name: str
    params: list[nn.Parameter] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, name: str, param: nn.Parameter) -> None:
        self.params.append(param)
        self.names.append(name)

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) in registration order, each shared tensor once (its first name)."""
    return list(model.named_parameters())


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(path, list) of the model's stack of transformer (or other) blocks, or None."""
    from torch import nn

    best: tuple[int, str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(m) for m in module}
        size = sum(p.numel() for p in module.parameters())
        if len(kinds) == 1 and size > 0 and (best is None or size > best[0]):
            best = (size, path, module)
    return None if best is None else (best[1], best[2])


def _child_groups(model: nn.Module) -> list[LayerGroup]:
    root = model
    # Descend through wrappers that hold a single child (trainlab's HF wrapper, PEFT models).
    while True:
        children = [c for c in root.children() if any(True for _ in c.parameters())]
        if len(children) == 1 and not any(True for _ in root.parameters(recurse=False)):
            root = children[0]
        else:
            break
    owner: dict[int, str] = {}
    for name, child in root.named_children():
        label = f"layer{name}" if name.isdigit() else name
        for p in child.parameters():
            owner.setdefault(id(p), label)
    groups: dict[str, LayerGroup] = {}
    for pname, p in unique_parameters(model):
        label = owner.get(id(p), "head")
        groups.setdefault(label, LayerGroup(label)).add(pname, p)
    return list(groups.values())


def _block_groups(model: nn.Module, blocks: nn.ModuleList) -> list[LayerGroup]:
    block_of: dict[int, int] = {}
    for i, block in enumerate(blocks):
        for p in block.parameters():
            block_of[id(p)] = i
    embeddings, head = LayerGroup("embeddings"), LayerGroup("head")
    per_block = [LayerGroup(f"block{i}") for i in range(len(blocks))]
    seen_block = False
    for name, p in unique_parameters(model):
        if id(p) in block_of:
            per_block[block_of[id(p)]].add(name, p)
            seen_block = True
        else:
            (head if seen_block else embeddings).add(name, p)
    return [g for g in (embeddings, *per_block, head) if g.params]


def _pattern_groups(model: nn.Module, patterns: dict[str, str]) -> list[LayerGroup]:
    compiled = []
    for name, pattern in patterns.items():
        try:
            compiled.append((name, re.compile(pattern)))
        except re.error as exc:
            raise ConfigError(f"`finetune.groups.{name}`: {pattern!r} is not a regular "
                              f"expression ({exc})", field="finetune.groups") from None
    groups = [LayerGroup(name) for name in patterns]
    unmatched = []
    for pname, p in unique_parameters(model):
        i = next((i for i, (_, rx) in enumerate(compiled) if rx.search(pname)), None)
        if i is None:
            unmatched.append(pname)
        else:
            groups[i].add(pname, p)
    names = [n for n, _ in unique_parameters(model)]
    if unmatched:
        raise ConfigError(
            f"`finetune.groups`: {len(unmatched)} parameters match no pattern, e.g. "
            f"{', '.join(unmatched[:4])}; add a pattern (the last may be '.*'). The model's "
            f"parameters: {_sample(names)}", field="finetune.groups")
    empty = [g.name for g in groups if not g.params]
    if empty:
        raise ConfigError(
            f"`finetune.groups`: {', '.join(repr(e) for e in empty)} match no parameter not "
            f"already taken by an earlier pattern. The model's parameters: {_sample(names)}",
            field="finetune.groups")
    return groups


def _sample(names: list[str], n: int = 8) -> str:
    if len(names) <= n:
        return ", ".join(names)
    return ", ".join(names[: n // 2]) + ", ..., " + ", ".join(names[-n // 2:])


def layer_groups(model: nn.Module, patterns: dict[str, str] | None = None) -> list[LayerGroup]:
    """The model's parameters in groups from the bottom (input side) to the top (output)."""
    if patterns:
        return _pattern_groups(model, patterns)
    found = find_blocks(model)
    if found is not None:
        return _block_groups(model, found[1])
    return _child_groups(model)


def describe_modules(model: nn.Module, limit: int = 12) -> str:
    """The model's top-level structure, for error messages."""
    found = find_blocks(model)
    parts = [f"{type(model).__name__}"]
    if found is not None:
        path, blocks = found
        parts.append(f"{len(blocks)} x {type(blocks[0]).__name__} at `{path}`")
    children = [f"{n} ({type(m).__name__})" for n, m in model.named_children()]
    parts.append("top-level modules: " + (", ".join(children[:limit]) or "none"))
    return "; ".join(parts)
