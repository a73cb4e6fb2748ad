"""The user's own code, named in a config by a target: ``"path/to/file.py:Name"`` (relative to
the config file's folder) or ``"package.module:Name"``.

Loading a target and calling it are where a user's mistakes surface, so every failure here is
bad input (:class:`ConfigError`, exit 2) that names the field, the target and what would be
valid: a missing file, a name the file does not define (with the names it does), a syntax or
import error (file and line, no traceback), keyword arguments the callable does not take or a
required one missing (with its signature).

A target's identity is the hash of its source file and of the local modules that file imports
from beside it: editing ``nets.py`` (or ``blocks.py``, which it imports) makes new runs instead
of silently skipping them as done.  No torch here: the config resolves targets when it
validates a run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import linecache
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from trainlab.errors import ConfigError, closest

# Loaded user files, by resolved path and content hash (an edited file loads anew).
_MODULES: dict[tuple[str, str], ModuleType] = {}


@dataclass(frozen=True)
class Target:
    """A resolved target: the object, the source file it lives in and that file's hash."""

    text: str  # as the user wrote it
    obj: Any
    file: Path | None  # None for an object without a source file (a C extension)
    digest: str | None  # sha256 of the file's bytes, first 16 hex digits

    @property
    def name(self) -> str:
        return self.text.rpartition(":")[2]


def split_target(text: str, field: str) -> tuple[str, str]:
    """``"nets.py:MiniGPT"`` -> ("nets.py", "MiniGPT"); bad shapes are a ConfigError."""
    if not isinstance(text, str) or text.count(":") != 1 or not all(text.split(":")):
        raise ConfigError(f"`{field}`: {text!r} is not a target; write \"path/to/file.py:Name\" "
                          "(relative to the config file's folder) or \"package.module:Name\"",
                          field=field)
    where, name = text.split(":")
    return where.strip(), name.strip()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def local_imports(path: Path) -> list[Path]:
    """The user's own modules ``path`` imports from beside it (``from blocks import head``
    where blocks.py sits in the same folder), and theirs in turn, in a stable order: the code
    a run trains, beyond the file its target names.  Read from the source, not imported."""
    import ast

    folder, seen, todo = path.parent, {path}, [path]
    while todo:
        current = todo.pop()
        try:
            tree = ast.parse(current.read_text())
        except (OSError, SyntaxError, ValueError):
            continue  # a file that does not parse fails where it is loaded, with its line
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module]
        for name in names:
            top = name.split(".")[0]
            for candidate in (folder / f"{top}.py", folder / top / "__init__.py"):
                if candidate.is_file() and candidate not in seen:
                    seen.add(candidate)
                    todo.append(candidate)
    return sorted(seen - {path})


def code_digest(path: Path) -> str:
    """The hash of a user file and of the local modules it imports: a run's identity changes
    when any of them is edited."""
    digest = hashlib.sha256(path.read_bytes())
    for dep in local_imports(path):
        digest.update(f"\0{dep.relative_to(path.parent)}\0".encode())
        digest.update(dep.read_bytes())
    return digest.hexdigest()[:16]


def source_digest(text: str, root: str | Path | None, field: str) -> str | None:
    """The hash of the file ``text`` names, without importing it (None for a module that has
    no source file); a missing file or module is a ConfigError."""
    where, _ = split_target(text, field)
    if _is_file(where):
        return code_digest(_file_path(where, root, field))
    spec = _find_module(where, field)
    origin = getattr(spec, "origin", None)
    return file_digest(Path(origin)) if origin and Path(origin).is_file() else None


def load_target(text: str, root: str | Path | None, field: str) -> Target:
    """Import the file or module ``text`` names and return the named object."""
    where, name = split_target(text, field)
    if _is_file(where):
        path = _file_path(where, root, field)
        digest: str | None = file_digest(path)
        module = _load_file(path, file_digest(path), field)
        file: Path | None = path
    else:
        _find_module(where, field)
        module = _import_module(where, field)
        origin = getattr(module, "__file__", None)
        file = Path(origin) if origin else None
        digest = file_digest(file) if file is not None and file.is_file() else None
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            defined = _public_names(module)
            guess = closest(part, defined)
            hint = f" did you mean {guess!r}?" if guess else ""
            raise ConfigError(
                f"`{field}`: {where} defines no {name!r}.{hint} It defines: "
                f"{', '.join(defined) or 'nothing public'}", field=field)
        obj = getattr(obj, part)
    return Target(text, obj, file, digest)


def call_with(fn: Callable[..., Any], args: Mapping[str, Any], field: str,
              facts: Mapping[str, Any] | None = None, *, positional: tuple[Any, ...] = (),
              what: str = "") -> Any:
    """Call ``fn(*positional, **facts it names, **args)``; arguments it does not take, or a
    required one missing, are a ConfigError that shows its signature.  ``facts`` (the data's
    vocab_size, num_classes, ...) reach ``fn`` only where its signature names them, and never
    override ``args``."""
    bound = bind_arguments(fn, args, field, facts, positional=positional, what=what)
    try:
        return fn(*bound.args, **bound.kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # the user's code failed while building: bad input, said plainly
        raise ConfigError(f"`{field}`: {what or getattr(fn, '__qualname__', fn)} raised "
                          f"{where_raised(exc)}", field=field) from exc


def bind_arguments(fn: Callable[..., Any], args: Mapping[str, Any], field: str,
                   facts: Mapping[str, Any] | None = None, *, positional: tuple[Any, ...] = (),
                   what: str = "") -> inspect.BoundArguments:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: take args as given
        return _unchecked(positional, args)
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    shown = _plain(signature)
    kwargs = {k: v for k, v in (facts or {}).items() if k in params and k not in args}
    kwargs.update(args)
    unknown = [k for k in args if k not in params and not takes_any]
    label = what or getattr(fn, "__qualname__", repr(fn))
    if unknown:
        accepted = [p for p in params if params[p].kind not in (params[p].VAR_POSITIONAL,
                                                                params[p].VAR_KEYWORD)]
        guess = closest(unknown[0], accepted)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise ConfigError(f"`{field}`: {label}{shown} takes no argument "
                          f"{', '.join(map(repr, unknown))}{hint}", field=field)
    try:
        return signature.bind(*positional, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"`{field}`: {label}{shown} cannot be called with these "
                          f"arguments: {exc}", field=field) from None


def _plain(signature: inspect.Signature) -> inspect.Signature:
    """The signature without annotations: what a message needs (names and defaults)."""
    empty = inspect.Parameter.empty
    return signature.replace(
        parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
        return_annotation=empty)


def _unchecked(positional: tuple[Any, ...], args: Mapping[str, Any]) -> inspect.BoundArguments:
    sig = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                             inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
    return sig.bind(*positional, **args)


def config_sources(config: Any) -> list[dict[str, Any]]:
    """The user files a resolved run config names (``name: python`` sections, ``train.loss``):
    field, target, file and hash, for the run's record."""
    found = []
    named = [(f"{s}.target", getattr(getattr(config, s), "target", None))
             for s in ("data", "model", "optimizer", "schedule")]
    named.append(("train.loss", config.train.loss))
    for field, text in named:
        if not isinstance(text, str):
            continue
        where, _ = split_target(text, field)
        if _is_file(where):
            file: Path | None = _file_path(where, config.root, field)
        else:
            origin = getattr(_find_module(where, field), "origin", None)
            file = Path(origin) if origin and Path(origin).is_file() else None
        entry: dict[str, Any] = {"field": field, "target": text, "file": None,
                                 "sha256": None, "imports": []}
        if file is not None and _is_file(where):  # the user's file, and what it imports
            entry.update(file=str(file), sha256=code_digest(file),
                         imports=[str(d) for d in local_imports(file)])
        elif file is not None:  # an installed module's file
            entry.update(file=str(file), sha256=file_digest(file))
        found.append(entry)
    return found


def copy_sources(sources: list[dict[str, Any]], folder: Path) -> None:
    """A copy of each user file and of the local modules it imports beside the run's
    checkpoints (``<run_dir>/sources/<hash>/``), so the code a run trained stays with it after
    the files change.  Installed packages' files are
    not copied (their version is in the run's environment)."""
    for item in sources:
        file = item.get("file")
        # A file target only: a module's file (torch.optim) is the installed package's.
        if not file or not _is_file(item["target"].split(":")[0]):
            continue
        target = folder / item["sha256"]  # the file and the modules it imports, as trained
        target.mkdir(parents=True, exist_ok=True)
        for path in [file, *item.get("imports", [])]:
            shutil.copy2(path, target / Path(path).relative_to(Path(file).parent).as_posix()
                         .replace("/", "__"))


def user_frames(exc: BaseException) -> str:
    """The traceback of an exception raised in user code, as text (what a failed run stores)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# --- internals ---------------------------------------------------------------------------------


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _file_path(where: str, root: str | Path | None, field: str) -> Path:
    path = Path(where).expanduser()
    if not path.is_absolute():
        path = Path(root or ".") / path
    path = path.resolve()
    if not path.is_file():
        base = f" (relative to {Path(root or '.').resolve()}, the config file's folder)" \
            if not Path(where).is_absolute() else ""
        raise ConfigError(f"`{field}`: no file {where!r}{base}", field=field)
    return path


def _load_file(path: Path, digest: str, field: str) -> ModuleType:
    key = (str(path), digest)
    if key in _MODULES:
        return _MODULES[key]
    # A name of its own per file and content: two files called nets.py do not collide, and
    # pickling a user class by reference finds its module again in this process.
    name = f"trainlab_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"`{field}`: {path} cannot be imported as Python", field=field)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.parent)
    added = folder not in sys.path
    if added:  # its own imports of files beside it (from utils import ...) resolve
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise ConfigError(f"`{field}`: syntax error in {exc.filename}, line {exc.lineno}: "
                          f"{exc.msg}\n    {(exc.text or '').strip()}", field=field) from None
    except Exception as exc:  # an error running the user's module
        del sys.modules[name]
        raise ConfigError(f"`{field}`: importing {path} failed: {where_raised(exc, path)}",
                          field=field) from None
    _MODULES[key] = module
    return module


def _find_module(where: str, field: str) -> Any:
    try:
        spec = importlib.util.find_spec(where)
    except (ImportError, ValueError) as exc:
        spec, reason = None, str(exc)
    else:
        reason = ""
    if spec is None:
        raise ConfigError(f"`{field}`: no module {where!r} is installed"
                          + (f" ({reason})" if reason else "")
                          + "; a file target ends in .py (relative to the config file's folder)",
                          field=field)
    return spec


def _import_module(where: str, field: str) -> ModuleType:
    try:
        return importlib.import_module(where)
    except SyntaxError as exc:
        raise ConfigError(f"`{field}`: syntax error in {exc.filename}, line {exc.lineno}: "
                          f"{exc.msg}", field=field) from None
    except Exception as exc:
        raise ConfigError(f"`{field}`: importing {where} failed: {type(exc).__name__}: {exc}",
                          field=field) from None


def where_raised(exc: BaseException, path: Path | None = None) -> str:
    """``"NameError: ... (nets.py, line 12: x = y)"``: the exception and the deepest frame in
    ``path`` (else the deepest frame outside torch and trainlab: the user's line)."""
    line = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        file = Path(frame.filename)
        mine = file.resolve() == path if path is not None else not any(
            part in ("torch", "trainlab", "site-packages") for part in file.parts[-4:-1])
        if mine:
            text = frame.line or linecache.getline(frame.filename, frame.lineno or 0).strip()
            line = f" ({file.name}, line {frame.lineno}: {text})"
            break
    return f"{type(exc).__name__}: {exc}{line}"


def _public_names(module: ModuleType) -> list[str]:
    exported = getattr(module, "__all__", None)
    if exported is not None:  # a package says what it offers (torch.optim: Adam, SGD ...)
        return sorted(str(n) for n in exported)
    own = getattr(module, "__name__", "")
    names = []
    for key, value in vars(module).items():
        if key.startswith("_") or isinstance(value, ModuleType):
            continue
        # What the file itself defines, not what it imported (torch's nn, typing's Any ...).
        if getattr(value, "__module__", own) == own or not callable(value):
            names.append(key)
    return sorted(names)


__all__ = ["Target", "bind_arguments", "call_with", "code_digest", "config_sources",
           "copy_sources", "file_digest", "load_target", "local_imports", "source_digest",
           "split_target", "user_frames", "where_raised"]
