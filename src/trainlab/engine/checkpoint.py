"""Checkpoints written atomically with a checksum, keeping the previous one as a fallback.

A kill at any moment leaves either the new checkpoint or the previous one loadable: the new
file is written under a temporary name and fsynced, the old one is moved aside to
``<name>.prev``, then the checksum and the file are renamed into place.  A checkpoint whose
bytes do not match its checksum (truncated, corrupted) is rejected with a warning.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch


def _sums(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _prev(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save_atomic(payload: dict[str, Any], path: Path, *, keep_previous: bool = False) -> None:
    """Write ``payload`` to ``path`` via a temporary file, fsync and rename."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
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
        payload: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu",
                                             weights_only=False)
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
