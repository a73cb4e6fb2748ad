"""The exceptions trainlab raises on purpose.

``TrainlabError`` is the root.  ``ConfigError`` (and its ``UnknownNameError``) mean bad input:
the CLI prints the message and exits with code 2.  ``RunError`` is a run that could not finish.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TrainlabError(Exception):
    """Base class of every error trainlab raises on purpose."""


class ConfigError(TrainlabError):
    """Bad input: a config, a command-line option or a store that cannot be used.

    The message names the field, the bad value and what would be valid.
    """

    def __init__(self, message: str, *, field: str | None = None,
                 parts: list[ConfigError] | None = None) -> None:
        super().__init__(message)
        self.field = field
        # Several errors of one run (bad values in two sections), each its own message.
        self.parts: list[ConfigError] = list(parts or [])

    def within(self, where: str) -> ConfigError:
        """The same error with a location such as "in sweep lm, run 3" appended."""
        err = type(self).__new__(type(self))
        err.__dict__.update(self.__dict__)
        err.args = (f"{self.args[0]} ({where})",)
        return err


class UnknownNameError(ConfigError):
    """A name that no registry entry has; the message lists the choices and the closest one."""

    def __init__(self, kind: str, name: object, choices: Iterable[str], *,
                 field: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.choices = sorted(choices)
        self.suggestion = closest(str(name), self.choices)
        where = f"`{field}`: " if field else ""
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else ""
        choices = ", ".join(self.choices)
        message = f"{where}unknown {kind} {name!r}{hint} Valid choices: {choices}."
        super().__init__(message, field=field)


class RunError(TrainlabError):
    """A run that could not go on (its data, model or optimizer failed to build, say)."""


class Diverged(RunError):
    """The loss became NaN or infinite."""


class DiskFull(RunError):
    """A run's file (a checkpoint) could not be written: its disk is full (or over quota).

    The run fails; the sweep stops after it, as it does when the store's database is full,
    since every later run would fail the same way (executors look for this class's name on
    the last line of the failed run's stored traceback: a pool worker's outcome is text)."""


def combine(found: list[tuple[ConfigError, int | None, str]], scope: str = "") -> ConfigError:
    """Every error of a file as one error: each distinct message once, with the runs it was
    found in (``(in sweep lm, runs 1, 3)``; one run also says what it set).

    ``found`` holds (error, run index or None, what the run sets); ``scope`` is where all of
    them are (``in sweep lm``).  The first error's field names the whole.
    """
    runs: dict[str, list[tuple[int, str]]] = {}
    first: dict[str, ConfigError] = {}
    found = [(part, index, detail) for exc, index, detail in found
             for part in (getattr(exc, "parts", None) or [exc])]
    for exc, index, detail in found:
        first.setdefault(str(exc), exc)
        places = runs.setdefault(str(exc), [])
        if index is not None and all(index != i for i, _ in places):
            places.append((index, detail))

    def where(places: list[tuple[int, str]]) -> str:
        head = f"{scope}, " if scope else ""
        if not places:
            return scope
        if len(places) == 1:
            index, detail = places[0]
            return f"{head}run {index}" + (f": {detail}" if detail else "")
        return f"{head}runs {', '.join(str(i) for i, _ in places)}"

    if len(first) == 1:
        message, exc = next(iter(first.items()))
        place = where(runs[message])
        return exc.within(place) if place else exc
    lines = [f"{len(first)} errors in this config:"]
    for message, places in runs.items():
        place = where(places)
        lines.append(f"- {message}" + (f" ({place})" if place else ""))
    return ConfigError("\n".join(lines), field=next(iter(first.values())).field)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
