"""Reading sweep files: YAML, built-in examples, and ``--set key=value`` overrides."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainlab.config.grid import check_key, set_dotted
from trainlab.config.schema import LRFindSpec, SweepConfig, config_error, unknown_field
from trainlab.errors import ConfigError, closest


def example_names() -> list[str]:
    files = resources.files("trainlab.examples")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def example_text(name: str) -> str:
    names = example_names()
    if name not in names:
        guess = closest(name, names)
        hint = f" did you mean {guess!r}?" if guess else ""
        raise ConfigError(f"`--example`: unknown example {name!r}.{hint} Built-in examples: "
                          f"{', '.join(names)}.", field="--example")
    return resources.files("trainlab.examples").joinpath(f"{name}.yaml").read_text()


def example_root() -> Path:
    """The folder of the built-in examples: the own-code example's files are found there."""
    return Path(str(resources.files("trainlab.examples")))


def example_files(name: str) -> dict[str, str]:
    """The example's files by relative path: its YAML, and the user code beside it (the folder
    named after it, ``own_code/`` for ``own-code``), as a user copies them to edit."""
    text = example_text(name)
    files = {f"{name}.yaml": text}
    folder = example_root() / name.replace("-", "_")
    if folder.is_dir():
        for path in sorted(folder.rglob("*.py")):
            files[str(path.relative_to(example_root()))] = path.read_text()
    return files


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a sweep file must be a YAML mapping with name, data, "
                          f"model, ...; got {type(doc).__name__}")
    return doc


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``--set optimizer.lr=0.01``)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"`--set`: expected key=value (e.g. optimizer.lr=0.01); got {item!r}",
                          field="--set")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(doc: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """The sweep document with ``--set`` items applied.

    ``--set section.field=v`` pins the field for every run: it sets the base, removes a grid
    axis over that key and overrides it in explicit runs.  ``--set grid.KEY=[...]``,
    ``--set seeds=[...]``, ``--set lr_find.FIELD=v`` and ``--set name=...`` edit those parts
    directly.
    """
    doc = copy.deepcopy(doc)
    for item in items:
        key, value = parse_override(item)
        if key in ("name", "description", "seeds", "cross"):
            doc[key] = value
        elif key.startswith("lr_find."):
            field = key[len("lr_find."):]
            if field not in LRFindSpec.model_fields:
                raise unknown_field("lr_find", field, set(LRFindSpec.model_fields))
            if not isinstance(doc.get("lr_find"), dict):
                doc["lr_find"] = {}
            doc["lr_find"][field] = value
        elif key.startswith("search."):  # search.trials=5, search.prune.method=none
            node = doc.get("search")
            if not isinstance(node, dict):
                node = doc["search"] = {}
            field = key[len("search."):]
            if field.startswith("space."):  # the space's keys are themselves dotted
                if not isinstance(node.get("space"), dict):
                    node["space"] = {}
                node["space"][field[len("space."):]] = value
            else:
                set_dotted(node, field, value)
        elif key.startswith("grid."):
            grid_key = key[len("grid."):]
            check_key(grid_key, "`--set` grid key")
            doc.setdefault("grid", {})
            if not isinstance(doc["grid"], dict):
                doc["grid"] = {}
            doc["grid"][grid_key] = value if isinstance(value, list) else [value]
        else:
            check_key(key, "`--set` key")
            set_dotted(doc, key, value)
            if isinstance(doc.get("grid"), dict):
                doc["grid"].pop(key, None)
            for entry in doc.get("runs") or []:
                if isinstance(entry, dict):
                    entry.pop(key, None)
                    section, _, field = key.partition(".")
                    nested = entry.get(section)
                    if isinstance(nested, dict):
                        nested.pop(field, None)
    return doc


# The sweep's name names its report folder and files: it must fit a file name (255 bytes on
# most file systems) with room for what reports add to it.
MAX_NAME_BYTES = 100


def validate_sweep(doc: dict[str, Any], source: str) -> SweepConfig:
    name = doc.get("name")
    if isinstance(name, str) and len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ConfigError(
            f"{source}: `name`: the sweep's name is {len(name)} characters long "
            f"({name[:40]!r}...); at most {MAX_NAME_BYTES} bytes (UTF-8) are allowed, since "
            "it names the report's folder and files. Choose a shorter name.", field="name")
    try:
        return SweepConfig.model_validate(doc)
    except ValidationError as exc:
        err = config_error(exc)
        raise ConfigError(f"{source}: {err}", field=err.field) from None


def load_sweep(path: str | Path | None = None, *, example: str | None = None,
               overrides: list[str] | None = None) -> SweepConfig:
    """Read, override and validate a sweep file (or a built-in example)."""
    if example is not None:
        text, source = example_text(example), f"example {example!r}"
    elif path is not None:
        p = Path(path)
        if p.is_dir():
            inside = sorted(f.name for f in p.iterdir() if f.suffix in (".yaml", ".yml"))[:5]
            raise ConfigError(
                f"`CONFIG`: {str(path)!r} is a directory, not a sweep file; give the YAML file"
                + (f" (in it: {', '.join(inside)})" if inside else ""), field="CONFIG")
        if not p.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist", field="CONFIG")
        text, source = p.read_text(), str(path)
    else:
        raise ConfigError("give a CONFIG file or --example NAME (see `trainlab examples`)")
    doc = parse_yaml(text, source)
    if "name" not in doc and path is not None:
        doc["name"] = Path(path).stem
    doc = apply_overrides(doc, overrides or [])
    root = Path(path).parent if example is None and path is not None else example_root()
    return validate_sweep(doc, source).with_root(root)
