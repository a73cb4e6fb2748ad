"""Spec base classes shared by every component kind.

A spec is frozen pydantic data; its ``name`` picks the registry entry whose builder does the
work.  Unknown fields are rejected so a typo never passes silently.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Options of one component; ``name`` selects it in its registry."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str

    def options(self) -> dict[str, Any]:
        """The options without the name, as plain JSON-able values."""
        return self.model_dump(mode="json", exclude={"name"})
