"""Dotted config keys as people read them (no schema, no torch: the commands that only read
the store use this)."""

from __future__ import annotations


def short_names(keys: list[str]) -> dict[str, str]:
    """Column labels: ``model.name`` -> ``model``, ``model.hidden_dim`` -> ``hidden_dim``;
    the full key where two would collide."""
    def short(k: str) -> str:
        section, _, rest = k.partition(".")
        return section if rest == "name" else rest.split(".")[-1]

    labels = [short(k) for k in keys]
    return {k: (lab if labels.count(lab) == 1 else k) for k, lab in zip(keys, labels)}
