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
    origin: str = "trainlab"  # where it came from: trainlab, or the plugin package's name


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
            self._entries[name] = Entry(name, spec, build, doc[0] if doc else "",
                                        _origin(build))
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


# Set while a plugin's entry point loads: what it registers is credited to its package.
_LOADING: list[str] = []


def _origin(build: Callable[..., Any]) -> str:
    if _LOADING:
        return _LOADING[-1]
    module = getattr(build, "__module__", "") or ""
    return "trainlab" if module.split(".")[0] == "trainlab" else module


def load_plugins(group: str = "trainlab.components") -> list[str]:
    """Import every installed package's entry point in ``group`` (each registers its
    components where it defines them, as trainlab's own do); returns the warnings for plugins
    that failed to load (a broken plugin never stops trainlab)."""
    from importlib.metadata import entry_points

    warnings = []
    for point in entry_points(group=group):
        package = point.dist.name if point.dist is not None else point.value.split(":")[0]
        _LOADING.append(package)
        try:
            point.load()
        except Exception as exc:  # a plugin's own bug: reported, never raised
            warnings.append(f"plugin {package!r} ({point.value}) failed to load: "
                            f"{type(exc).__name__}: {exc}")
        finally:
            _LOADING.pop()
    return warnings
