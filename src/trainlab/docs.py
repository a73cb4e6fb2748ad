"""Self-documentation read from the code: every registered component and its options (from the
specs).  The command reference (from the typer app) and the rewriting of the documentation's
generated blocks are :mod:`trainlab.cli.reference`'s: ``python -m trainlab.cli.reference
--update docs/reference/config.md docs/reference/commands.md``.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from trainlab.components import REGISTRIES
from trainlab.config.schema import LRFindSpec, TrainSpec

KINDS = ("data", "model", "optimizer", "schedule", "finetune", "train", "lr_find")
_SECTIONS: dict[str, type[BaseModel]] = {"train": TrainSpec, "lr_find": LRFindSpec}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _fields(spec: type[BaseModel]) -> list[dict[str, Any]]:
    out = []
    for name, field in spec.model_fields.items():
        if name == "name":
            continue
        if field.is_required():
            default: Any = "(required)"
        elif field.default_factory is not None:
            default = field.default_factory()  # type: ignore[call-arg]
        else:
            default = field.default
        if isinstance(default, BaseModel):
            default = default.model_dump()
        out.append({"name": name, "type": _type_name(field.annotation), "default": default,
                    "description": field.description or ""})
    return out


def describe(kinds: list[str]) -> list[dict[str, Any]]:
    """For each kind, each entry: name, one-line doc, and its fields (type, default, text)."""
    entries: list[dict[str, Any]] = []
    for kind in kinds:
        if kind in _SECTIONS:
            spec = _SECTIONS[kind]
            entries.append({"kind": kind, "name": f"({kind} options)",
                            "doc": spec.__doc__ or "", "fields": _fields(spec)})
            continue
        for entry in REGISTRIES[kind]:
            entries.append({"kind": kind, "name": entry.name, "doc": entry.doc,
                            "origin": entry.origin, "fields": _fields(entry.spec)})
    return entries


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def markdown(kinds: list[str] | None = None) -> str:
    """The config reference as Markdown (docs/reference/config.md embeds it; a test keeps them
    equal)."""
    lines: list[str] = []
    for entry in describe(list(kinds or KINDS)):
        title = (entry["kind"] if entry["kind"] in _SECTIONS
                 else f"{entry['kind']}.name: {entry['name']}")
        lines += [f"**`{title}`** — {entry['doc'].strip()}", ""]
        if not entry["fields"]:
            lines += ["(no options)", ""]
            continue
        lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for f in entry["fields"]:
            lines.append(f"| `{f['name']}` | {_cell(f['type'])} | `{f['default']}` | "
                         f"{_cell(f['description'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
