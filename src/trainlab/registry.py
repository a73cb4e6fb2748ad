"""One registry pattern for every pluggable component.

An entry registers itself where it is defined::

    @MODELS.register("mlp", spec=MLPSpec)
    def build_mlp(spec: MLPSpec, info: DataInfo) -> nn.Module: ...

The name lives only in that call.  ``get`` raises :class:`UnknownNameError` listing the valid
choices and the closest match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from trainlab.errors import UnknownNameError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    """A registered component: its name, the pydantic spec of its options, and its builder."""

    name: str
    spec: type[BaseModel]
    build: F
    doc: str


class Registry(Generic[F]):
    """Named builders of one kind of component (datasets, models, optimizers, ...)."""

    def __init__(self, kind: str, *, base: type[BaseModel] | None = None) -> None:
        self.kind = kind
        self.base = base  # every entry's spec subclasses it: what the typed config promises
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, *, spec: type[BaseModel]) -> Callable[[F], F]:
        """Decorator registering ``build`` under ``name`` with the options class ``spec``."""

        def decorate(build: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self.base is not None and not issubclass(spec, self.base):
                raise TypeError(f"{self.kind} {name!r}: its spec {spec.__name__} must subclass "
                                f"{self.base.__name__}")
            doc = (build.__doc__ or spec.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, spec, build, doc[0] if doc else "")
            return build

        return decorate

    def get(self, name: str, *, field: str | None = None) -> Entry[F]:
        """The entry called ``name``; an unknown name lists the choices and the closest one."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self._entries, field=field) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
