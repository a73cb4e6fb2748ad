"""gathered() (engine/speed.py) takes rows with index_select where the data is contiguous: the
batches are the tensors plain indexing gives, values, shape and strides, whatever the layout."""

from __future__ import annotations

import pytest
import torch

from trainlab.engine.speed import gathered


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
@pytest.mark.parametrize("batch", [32, 600])  # chunked; one by one (over a quarter MiB each)
def test_batches_equal_plain_indexing(layout: str, batch: int) -> None:
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(1000, 3, 16, 16, generator=g)
    if layout == "transposed":
        inputs = inputs.transpose(2, 3)
    elif layout == "channels_last":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 5, (1000,), generator=g)
    batches = torch.randperm(1000, generator=g).split(batch)
    out = list(gathered(inputs, targets, batches))
    assert len(out) == len(batches)
    for (idx, x, y), want in zip(out, batches):
        plain_x, plain_y = inputs[want], targets[want]
        assert idx is want
        assert torch.equal(x, plain_x) and torch.equal(y, plain_y)
        assert x.shape == plain_x.shape and x.dtype == plain_x.dtype
        if batch == 600:  # one batch: exactly what indexing made, strides included
            assert x.stride() == plain_x.stride() and y.stride() == plain_y.stride()


def test_language_model_rows_and_int32_indices() -> None:
    inputs = torch.randint(0, 100, (50, 8))
    targets = torch.randint(0, 100, (50, 8))
    batches = [torch.tensor([3, 1, 4], dtype=torch.int32), torch.tensor([1, 5], dtype=torch.int32)]
    for (_, x, y), want in zip(gathered(inputs, targets, batches), batches):
        assert torch.equal(x, inputs[want.long()]) and torch.equal(y, targets[want.long()])
