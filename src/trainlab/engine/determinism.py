"""``train.deterministic``: deterministic kernels while a run trains, the process's settings
restored after.

On CUDA some kernels are not deterministic by default: cuDNN's convolution and RNN algorithms
(benchmark mode picks by timing, and some use atomics), ``index_add``/``scatter_add`` and
the backward of scaled-dot-product attention accumulate with atomics, and cuBLAS splits
reductions by workspace.  Reruns and resumes then differ in the last bits, and the
difference grows over training.  Deterministic mode asks torch for deterministic kernels
(``warn_only``: an op that has none warns, naming itself, rather than failing the run),
turns cuDNN's benchmark off and its deterministic flag on, and sets
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when the environment does not set it.  cuBLAS reads that
variable when the process first uses it: for a process that already ran CUDA matmuls
(several runs in one worker, the peak-FLOPs measurement), set it before starting trainlab.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """Deterministic kernels inside the block when ``on``; nothing changes otherwise."""
    if not on:
        yield
        return
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.benchmark, cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if before[4] is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic = before[2], before[3]
        if before[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
