"""Checkpoints written atomically with a checksum, keeping the previous one as a fallback.

A kill at any moment leaves either the new checkpoint or the previous one loadable: the new
file is written under a temporary name and fsynced, the old one is moved aside to
``<name>.prev``, then the checksum and the file are renamed into place.  A checkpoint whose
bytes do not match its checksum (truncated, corrupted) is rejected with a warning.

Checkpoints load with ``torch.load(weights_only=True)``: they hold tensors and plain Python
values only.  NumPy arrays and scalars (NumPy's RNG state) are stored as tagged byte tensors
and turned back into NumPy objects on load, so the engine sees what it saved.  Checkpoints of
the earlier format, which pickled NumPy's RNG state as such, still load: for them exactly
NumPy's array and scalar constructors are allowed, still with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NUMPY = "__trainlab_numpy__"  # tags a NumPy array or scalar stored as its bytes
_NUMPY_KEYS = frozenset((_NUMPY, "dtype", "shape", "data"))
_NUMPY_KINDS = "biufcmMUS"  # dtypes whose ``dtype.str`` and bytes rebuild them exactly


def _sums(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _prev(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _map(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """``obj`` with ``leaf`` applied through dicts, lists and tuples; unchanged parts (a model's
    state dict of tensors) are the same objects, not copies."""
    new = leaf(obj)
    if new is not obj:
        return new
    kind = type(obj)
    if kind is dict or kind is OrderedDict:
        items = {k: _map(v, leaf) for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj
        out = kind(items)
        if kind is OrderedDict:
            out.__dict__.update(obj.__dict__)  # a state dict's _metadata
        return out
    if kind is list or kind is tuple:
        seq = [_map(v, leaf) for v in obj]
        return obj if all(a is b for a, b in zip(seq, obj)) else kind(seq)
    return obj


def _encode_numpy(obj: Any) -> Any:
    if not isinstance(obj, (np.ndarray, np.generic)) or obj.dtype.kind not in _NUMPY_KINDS:
        return obj
    arr = np.asarray(obj)
    data = torch.from_numpy(np.frombuffer(arr.tobytes(), dtype=np.uint8).copy())  # C order
    return {_NUMPY: "scalar" if isinstance(obj, np.generic) else "array",
            "dtype": arr.dtype.str, "shape": list(arr.shape), "data": data}


def _decode_numpy(obj: Any) -> Any:
    if not (type(obj) is dict and obj.keys() == _NUMPY_KEYS):
        return obj
    raw = obj["data"].numpy().tobytes()
    arr = np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    return arr[()] if obj[_NUMPY] == "scalar" else arr


def _legacy_numpy_globals(*, renamed: bool) -> list[Any]:
    """What the earlier format needs to rebuild NumPy's RNG state (and NumPy scalars): arrays
    and scalars of plain dtypes, nothing else.  ``renamed`` adds them under the module path of
    the other NumPy major version too (a file written under NumPy 1, read under NumPy 2), as
    ``(function, name)`` pairs, which torch accepts from 2.6 on."""
    try:
        multiarray: Any = importlib.import_module("numpy._core.multiarray")  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in (np.bool_, np.int32, np.int64, np.uint32,
                                            np.uint64, np.float32, np.float64)]
    if renamed:
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed += [(multiarray._reconstruct, f"{module}._reconstruct"),
                        (multiarray.scalar, f"{module}.scalar")]
    return allowed


@contextmanager
def _numpy_allowed(allowed: list[Any]) -> Iterator[None]:
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if scoped is None:  # pragma: no cover - torch 2.4
        torch.serialization.add_safe_globals(allowed)
        yield
        return
    with scoped(allowed):
        yield


def _load_payload(data: bytes) -> Any:
    """Unpickle with ``weights_only=True``; the earlier format with NumPy's constructors."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            with _numpy_allowed(_legacy_numpy_globals(renamed=True)):
                payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (AttributeError, TypeError):  # pragma: no cover - torch < 2.6: no pairs
            with _numpy_allowed(_legacy_numpy_globals(renamed=False)):
                payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return _map(payload, _decode_numpy)


def save_atomic(payload: dict[str, Any], path: Path, *, keep_previous: bool = False) -> None:
    """Write ``payload`` to ``path`` via a temporary file, fsync and rename."""
    buffer = io.BytesIO()
    torch.save(_map(payload, _encode_numpy), buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if keep_previous and path.is_file() and _sums(path).is_file():
        os.replace(_sums(path), _sums(_prev(path)))
        os.replace(path, _prev(path))
    sums_tmp = _sums(path).with_name(_sums(path).name + ".tmp")
    sums_tmp.write_text(digest)
    # The checksum goes first: a file without its matching checksum is never trusted.
    os.replace(sums_tmp, _sums(path))
    os.replace(tmp, path)


def load_verified(path: Path, *, quiet_if_missing: bool = True) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None (with a warning) if truncated or corrupt."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    sums = _sums(path)
    expected = sums.read_text().strip() if sums.is_file() else None
    if expected != hashlib.sha256(data).hexdigest():
        warnings.warn(f"checkpoint {path} is corrupt or incomplete (checksum mismatch); "
                      "ignoring it", RuntimeWarning, stacklevel=2)
        return None
    try:
        payload: dict[str, Any] = _load_payload(data)
        return payload
    except Exception as exc:  # a checksum-valid file that still fails to unpickle
        warnings.warn(f"checkpoint {path} could not be loaded ({exc}); ignoring it",
                      RuntimeWarning, stacklevel=2)
        return None


def load_latest(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The newest good checkpoint of ``path`` or its ``.prev``, and a note when it fell back."""
    current = load_verified(path)
    if current is not None:
        return current, None
    previous = load_verified(_prev(path))
    if previous is not None:
        return previous, (f"checkpoint {path.name} was missing or unusable; resumed from the "
                          f"previous one (epoch {previous.get('epoch')}, step "
                          f"{previous.get('step')})")
    if path.is_file():
        return None, f"checkpoint {path.name} was unusable; restarted the run from scratch"
    return None, None
