"""Checkpoints written atomically with a checksum, so a kill mid-write never leaves a file
that loads as garbage."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch


def save_atomic(payload: dict[str, Any], path: Path) -> None:
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
    sums = path.with_name(path.name + ".sha256")
    sums_tmp = sums.with_name(sums.name + ".tmp")
    sums_tmp.write_text(digest)
    # Rename the checksum first: a checkpoint without a matching checksum is rejected.
    os.replace(sums_tmp, sums)
    os.replace(tmp, path)


def load_verified(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None (with a warning) if missing, truncated or corrupt."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    sums = path.with_name(path.name + ".sha256")
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
